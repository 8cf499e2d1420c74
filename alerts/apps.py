from django.apps import AppConfig


class AlertsConfig(AppConfig):
    default_auto_field = "django.db.models.BigAutoField"
    name = "alerts"
    verbose_name = "Quota alerts"

    def ready(self):
        from alerts import checks  # noqa: F401 - registers the system checks
