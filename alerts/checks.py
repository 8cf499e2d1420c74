from django.conf import settings
from django.core import checks

from accounts.sms import notices_enabled


@checks.register(checks.Tags.compatibility)
def alert_settings_check(app_configs, **kwargs):
    errors = []
    if not 0 < settings.ALERT_WEBHOOK_TIMEOUT_SECONDS <= 30:
        errors.append(
            checks.Error(
                "ALERT_WEBHOOK_TIMEOUT_SECONDS must be above 0 and at most 30: a webhook may "
                "not hold a worker for long.",
                id="alerts.E001",
            )
        )
    if not 1 <= settings.ALERT_WEBHOOK_MAX_ATTEMPTS <= 10:
        errors.append(
            checks.Error("ALERT_WEBHOOK_MAX_ATTEMPTS must be between 1 and 10.", id="alerts.E002")
        )
    if settings.QUOTA_APPLICATION_DIGEST_AFTER_HOURS < 1:
        errors.append(
            checks.Error(
                "QUOTA_APPLICATION_DIGEST_AFTER_HOURS must be at least 1.", id="alerts.E003"
            )
        )
    return errors


@checks.register(checks.Tags.compatibility)
def alert_sms_template_check(app_configs, **kwargs):
    if notices_enabled():
        return []
    return [
        checks.Warning(
            f"SMS_BACKEND={settings.SMS_BACKEND} has no notice template set: quota alerts go "
            "by email and webhook only.",
            hint="Set SMS_ALIYUN_NOTICE_TEMPLATE_CODE or SMS_TENCENT_NOTICE_TEMPLATE_ID to an "
            "approved template (see .env.example).",
            id="alerts.W001",
        )
    ]
