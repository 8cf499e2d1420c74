from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.cache import cache
from django.shortcuts import redirect, render
from django.urls import reverse
from django.utils import timezone
from django.utils.translation import gettext as _
from django.views.decorators.http import require_http_methods, require_POST

from alerts import selectors, services
from alerts.forms import AlertSettingsForm
from alerts.webhooks import WebhookFailed, WebhookRefused, webhook_post

TEST_WEBHOOK_INTERVAL_SECONDS = 10


def webhook_test_cache_key(user) -> str:
    return f"alerts:webhook-test:{user.pk}"


def _usage_anchor() -> str:
    return reverse("usage:page") + "#alerts"


@login_required
@require_http_methods(["GET", "POST"])
def alert_settings(request):
    """The alert settings (also shown on the Usage page, which posts here)."""
    row = selectors.alert_settings_of(user=request.user)
    if request.method == "POST":
        form = AlertSettingsForm(request.POST)
        if form.is_valid():
            services.alert_settings_update(user=request.user, **form.cleaned_data)
            messages.success(request, _("Alert settings saved."))
            return redirect(_usage_anchor())
        status = 400
    else:
        form = AlertSettingsForm.for_settings(row)
        status = 200
    context = {"form": form, "settings_row": row, "webhook_secret": services.webhook_secret_of(row)}
    return render(request, "alerts/settings.html", context, status=status)


@login_required
@require_POST
def webhook_secret_regenerate(request):
    services.alert_webhook_secret_regenerate(user=request.user)
    messages.success(request, _("A new signing secret was made; the old one no longer signs."))
    return redirect(_usage_anchor())


@login_required
@require_POST
def webhook_test(request):
    """Send one signed test message to the saved webhook, now, and say how it went."""
    row = selectors.alert_settings_of(user=request.user)
    secret = services.webhook_secret_of(row)
    if row.webhook_url and secret is None:
        messages.error(
            request, _("The signing secret can no longer be read. Make a new secret first.")
        )
        return redirect(_usage_anchor())
    if not row.webhook_url or not secret:
        messages.error(request, _("Save a webhook URL first."))
        return redirect(_usage_anchor())
    if not cache.add(webhook_test_cache_key(request.user), 1, TEST_WEBHOOK_INTERVAL_SECONDS):
        messages.error(request, _("Wait a few seconds before sending another test."))
        return redirect(_usage_anchor())
    payload = {"type": "quota.test", "sent_at": timezone.now().isoformat()}
    try:
        status = webhook_post(url=row.webhook_url, secret=secret, payload=payload)
    except WebhookRefused:
        messages.error(
            request,
            _(
                "That URL may not be called: it is not a public address, or its port is not "
                "a number from 1 to 65535."
            ),
        )
    except WebhookFailed as exc:
        messages.error(request, _("The test failed: %(reason)s.") % {"reason": exc})
    else:
        messages.success(request, _("The webhook answered %(status)d.") % {"status": status})
    return redirect(_usage_anchor())
