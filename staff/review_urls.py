from django.urls import path

from staff import views

app_name = "review"

urlpatterns = [
    path("", views.review_queue, name="queue"),
    path("bulk/", views.review_bulk, name="bulk"),
    path("<uuid:public_id>/", views.review_decide, name="decide"),
]
