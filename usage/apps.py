from django.apps import AppConfig
from django.utils.translation import gettext_lazy as _


class UsageConfig(AppConfig):
    name = "usage"
    verbose_name = _("Usage and quotas")

    def ready(self):
        from keys.signals import daily_cap_set
        from usage import (
            checks,  # noqa: F401  (registers the system checks)
            services,
        )

        daily_cap_set.connect(services.on_key_daily_cap_set, dispatch_uid="usage.key_cap_catch_up")
