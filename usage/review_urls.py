from django.urls import path

from usage import views

app_name = "review"

urlpatterns = [
    path("", views.review_queue, name="queue"),
    path("<uuid:public_id>/", views.review_decide, name="decide"),
]
