from django.urls import path

from keys import views

app_name = "keys"

urlpatterns = [
    path("", views.key_list, name="list"),
    path("<uuid:public_id>/", views.key_detail, name="detail"),
    path("<uuid:public_id>/rename/", views.key_rename, name="rename"),
    path("<uuid:public_id>/status/", views.key_status, name="status"),
    path("<uuid:public_id>/regenerate/", views.key_regenerate, name="regenerate"),
    path("<uuid:public_id>/delete/", views.key_delete, name="delete"),
    path("<uuid:public_id>/reveal/", views.key_reveal, name="reveal"),
]
