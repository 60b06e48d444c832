"""Who may see a lesson: its teacher and the students enrolled in its course."""

from .models import Lesson, User


def student_ids(lesson: Lesson) -> list[int]:
    return sorted(
        lesson.course.enrolments.filter(student__is_mentor=False).values_list(
            "student_id", flat=True
        )
    )


def can_access(user: User, lesson: Lesson) -> bool:
    if user.is_mentor:
        return lesson.teacher_id == user.pk
    return lesson.course.enrolments.filter(student=user).exists()


def lessons_for(user: User):
    """The lessons a user can chat in, teacher and course loaded."""
    lessons = Lesson.objects.select_related("course", "teacher").order_by("id")
    if user.is_mentor:
        return lessons.filter(teacher=user)
    return lessons.filter(course__enrolments__student=user)
