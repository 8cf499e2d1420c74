from django.apps import AppConfig


class GatewayConfig(AppConfig):
    name = "gateway"

    def ready(self):
        from gateway import checks  # noqa: F401  (registers the system checks)
