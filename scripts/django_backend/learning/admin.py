from django.contrib import admin
from django.contrib.auth.admin import UserAdmin

from .models import Course, Enrolment, Lesson, User


@admin.register(User)
class PlatformUserAdmin(UserAdmin):
    list_display = ("username", "is_mentor", "is_staff")
    fieldsets = UserAdmin.fieldsets + (("Platform", {"fields": ("is_mentor",)}),)


admin.site.register(Course)
admin.site.register(Lesson)
admin.site.register(Enrolment)
