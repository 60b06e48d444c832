from django.urls import path

from . import views

urlpatterns = [
    # The seed's exact paths (CONTRACT §2); chat-service appends them to DJANGO_BASE_URL.
    path("api/content/chat-service/users/<int:user_id>/", views.ChatServiceUserView.as_view()),
    path("api/content/chat-service/lesson/<int:lesson_id>/detail/", views.ChatServiceLessonView.as_view()),
    path("api/demo/me/", views.MeView.as_view()),
    path("", views.chat_page, name="chat"),
]
