from django.apps import AppConfig
from django.utils.translation import gettext_lazy as _


class UsageConfig(AppConfig):
    name = "usage"
    verbose_name = _("Usage and quotas")

    def ready(self):
        from usage import checks  # noqa: F401  (registers the system checks)
