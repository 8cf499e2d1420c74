from django.apps import AppConfig
from django.utils.translation import gettext_lazy as _


class AuditConfig(AppConfig):
    """The security log. Imports no other app of the project: every app may record into it."""

    name = "audit"
    verbose_name = _("Audit")
