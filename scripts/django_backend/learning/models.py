"""The slice of a learning platform that chat-service relies on."""

from django.contrib.auth.models import AbstractUser
from django.db import models


class User(AbstractUser):
    """A platform user; mentors teach lessons, everyone else is a student."""

    is_mentor = models.BooleanField(default=False)


class Course(models.Model):
    title = models.CharField(max_length=200)

    def __str__(self) -> str:
        return self.title


class Lesson(models.Model):
    course = models.ForeignKey(Course, on_delete=models.CASCADE, related_name="lessons")
    title = models.CharField(max_length=200)
    teacher = models.ForeignKey(User, on_delete=models.PROTECT, related_name="taught_lessons")

    def __str__(self) -> str:
        return self.title


class Enrolment(models.Model):
    """A student's place in a course; it opens every lesson of that course."""

    course = models.ForeignKey(Course, on_delete=models.CASCADE, related_name="enrolments")
    student = models.ForeignKey(User, on_delete=models.CASCADE, related_name="enrolments")

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["course", "student"], name="one_enrolment_per_course")
        ]
