"""The two endpoints chat-service calls (CONTRACT §2), the demo page and its helper."""

from django.conf import settings
from django.shortcuts import render
from rest_framework import status
from rest_framework.response import Response
from rest_framework.views import APIView

from . import access
from .models import Lesson, User


class ChatServiceUserView(APIView):
    """200 only for the token's own user: chat-service checks identity with it."""

    def get(self, request, user_id: int):
        if request.user.pk != user_id:
            return Response({"detail": "token belongs to another user"}, status=status.HTTP_403_FORBIDDEN)
        return Response({"id": request.user.pk, "is_mentor": request.user.is_mentor})


class ChatServiceLessonView(APIView):
    """200 only when the token's user may use the lesson; 404 hides the rest."""

    def get(self, request, lesson_id: int):
        lesson = Lesson.objects.select_related("course").filter(pk=lesson_id).first()
        if lesson is None or not access.can_access(request.user, lesson):
            return Response({"detail": "lesson not found"}, status=status.HTTP_404_NOT_FOUND)
        return Response(
            {
                "id": lesson.pk,
                "course_id": lesson.course_id,
                "teacher_id": lesson.teacher_id,
                "student_ids": access.student_ids(lesson),
            }
        )


class MeView(APIView):
    """What the demo page needs after login: who I am, my lessons and their students."""

    def get(self, request):
        user = request.user
        lessons = []
        for lesson in access.lessons_for(user):
            if user.is_mentor:
                students = User.objects.filter(pk__in=access.student_ids(lesson)).order_by("id")
            else:
                students = [user]
            lessons.append(
                {
                    "id": lesson.pk,
                    "title": lesson.title,
                    "course": lesson.course.title,
                    "teacher": {"id": lesson.teacher_id, "username": lesson.teacher.username},
                    "students": [{"id": s.pk, "username": s.username} for s in students],
                }
            )
        return Response(
            {"id": user.pk, "username": user.username, "is_mentor": user.is_mentor, "lessons": lessons}
        )


def chat_page(request):
    """The one-page web client; it logs in with SimpleJWT itself, so no session here."""
    return render(request, "learning/chat.html", {"chat_service_url": settings.CHAT_SERVICE_URL})
