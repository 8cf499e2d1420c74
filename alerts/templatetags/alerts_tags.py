from django import template

from alerts import selectors, services
from alerts.forms import AlertSettingsForm
from usage.quota import quota_day

register = template.Library()


@register.inclusion_tag("alerts/_banner.html")
def alerts_banner(user):
    """The thresholds the account crossed today (quota day, Beijing time), highest first."""
    return {"alerts": selectors.alerts_of_day(user=user, day=quota_day())}


@register.inclusion_tag("alerts/_panel.html", takes_context=True)
def alerts_panel(context, user):
    row = selectors.alert_settings_of(user=user)
    return {
        "form": AlertSettingsForm.for_settings(row),
        "settings_row": row,
        "webhook_secret": services.webhook_secret_of(row),
        "csrf_token": context.get("csrf_token"),
    }
