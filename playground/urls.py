from django.urls import path

from playground import views

app_name = "playground"

urlpatterns = [
    path("", views.playground_page, name="page"),
    path("keys/<uuid:public_id>/usage/", views.playground_usage, name="usage"),
]
