import pytest

from alerts.checks import alert_settings_check, alert_sms_template_check


@pytest.mark.parametrize(
    ("name", "value", "error"),
    [
        ("ALERT_WEBHOOK_TIMEOUT_SECONDS", 0, "alerts.E001"),
        ("ALERT_WEBHOOK_TIMEOUT_SECONDS", 120, "alerts.E001"),
        ("ALERT_WEBHOOK_MAX_ATTEMPTS", 0, "alerts.E002"),
        ("QUOTA_APPLICATION_DIGEST_AFTER_HOURS", 0, "alerts.E003"),
    ],
)
def test_it_refuses_bad_settings(settings, name, value, error):
    assert alert_settings_check(None) == []
    setattr(settings, name, value)
    assert [e.id for e in alert_settings_check(None)] == [error]


def test_it_warns_when_a_template_provider_has_no_notice_template(settings):
    settings.SMS_BACKEND = "tencent"
    settings.SMS_TENCENT_NOTICE_TEMPLATE_ID = ""
    assert [w.id for w in alert_sms_template_check(None)] == ["alerts.W001"]
    settings.SMS_TENCENT_NOTICE_TEMPLATE_ID = "100002"
    assert alert_sms_template_check(None) == []
