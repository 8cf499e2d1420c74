from django.urls import path

from usage import views

app_name = "usage"

urlpatterns = [
    path("", views.usage_page, name="page"),
    path("live/", views.usage_live, name="live"),
    path("export/", views.usage_export, name="export"),
    path("apply/", views.quota_apply, name="apply"),
]
