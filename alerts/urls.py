from django.urls import path

from alerts import views

app_name = "alerts"

urlpatterns = [
    path("", views.alert_settings, name="settings"),
    path("secret/", views.webhook_secret_regenerate, name="secret"),
    path("test/", views.webhook_test, name="test"),
]
