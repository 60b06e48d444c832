"""Creates the demo data (one mentor, two students, one lesson) and prints how to use it.

Idempotent: running it again resets the demo passwords and keeps the ids.
"""

import json
from urllib.parse import urlencode, urlsplit, urlunsplit

from django.conf import settings
from django.core.management.base import BaseCommand
from django.db import transaction
from rest_framework_simplejwt.tokens import AccessToken

from learning.models import Course, Enrolment, Lesson, User

MENTOR = ("mentor", "mentor-pass")
STUDENTS = (("alice", "alice-pass"), ("bob", "bob-pass"))


def ws_base(chat_service_url: str) -> str:
    parts = urlsplit(chat_service_url)
    scheme = "wss" if parts.scheme == "https" else "ws"
    return urlunsplit((scheme, parts.netloc, parts.path.rstrip("/") + "/ws", "", ""))


class Command(BaseCommand):
    help = "Create the chat demo: a mentor, two students, one lesson; print tokens and ws:// URLs."

    def add_arguments(self, parser):
        parser.add_argument("--json", action="store_true", help="print one JSON object (for scripts)")
        parser.add_argument(
            "--chat-service-url",
            default=settings.CHAT_SERVICE_URL,
            help="chat-service base URL used in the printed ws:// URLs",
        )

    @transaction.atomic
    def handle(self, *args, **options):
        mentor = self._user(*MENTOR, is_mentor=True)
        students = [self._user(name, password, is_mentor=False) for name, password in STUDENTS]
        course, _ = Course.objects.get_or_create(title="Rust for Django developers")
        lesson, _ = Lesson.objects.get_or_create(
            course=course, title="Ownership and borrowing", defaults={"teacher": mentor}
        )
        if lesson.teacher_id != mentor.pk:
            lesson.teacher = mentor
            lesson.save(update_fields=["teacher"])
        for student in students:
            Enrolment.objects.get_or_create(course=course, student=student)

        base = ws_base(options["chat_service_url"])
        users = {}
        for (user, password) in [(mentor, MENTOR[1])] + [
            (s, p) for s, (_, p) in zip(students, STUDENTS)
        ]:
            token = str(AccessToken.for_user(user))
            query = {"token": token, "user_id": user.pk, "lesson_id": lesson.pk}
            if user.is_mentor:
                urls = {
                    s.username: f"{base}?{urlencode({**query, 'student_id': s.pk})}" for s in students
                }
            else:
                urls = {user.username: f"{base}?{urlencode(query)}"}
            users[user.username] = {
                "id": user.pk,
                "password": password,
                "is_mentor": user.is_mentor,
                "token": token,
                "ws_urls": urls,
            }
        demo = {"lesson_id": lesson.pk, "course_id": course.pk, "users": users}

        if options["json"]:
            self.stdout.write(json.dumps(demo))
            return
        self.stdout.write(f"Demo lesson {lesson.pk} ({lesson.title!r}), course {course.pk}")
        for name, info in users.items():
            role = "mentor" if info["is_mentor"] else "student"
            self.stdout.write(f"\n{name} ({role}, id {info['id']}), password {info['password']}")
            self.stdout.write(f"  token: {info['token']}")
            for peer, url in info["ws_urls"].items():
                label = f"with {peer}" if info["is_mentor"] else "chat"
                self.stdout.write(f"  ws {label}: {url}")

    def _user(self, username: str, password: str, *, is_mentor: bool) -> User:
        user, _ = User.objects.get_or_create(username=username)
        user.is_mentor = is_mentor
        user.set_password(password)
        user.save()
        return user
