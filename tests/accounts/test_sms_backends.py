"""Each SMS backend against a local fake of its provider's API: no network."""

import json
import logging

import pytest
from django.core.exceptions import ImproperlyConfigured

from accounts import sms
from accounts.sms import aliyun as aliyun_module
from accounts.sms import tencent as tencent_module
from accounts.sms import twilio as twilio_module
from accounts.sms.aliyun import aliyun_phone_number
from accounts.sms.base import SDK_EXTRAS
from tests.accounts.fake_sms import FakeProvider, start_fake

SDK_MODULES = {"aliyun": aliyun_module, "tencent": tencent_module, "twilio": twilio_module}


def require_sdk(backend: str) -> None:
    """Skip, saying why, where the provider's SDK (an optional extra) is not installed.

    requirements-dev.lock installs every extra, so CI always runs these tests."""
    if not SDK_MODULES[backend].SDK_INSTALLED:
        module, extra = SDK_EXTRAS[backend]
        pytest.skip(
            f"{module} is not installed (the '{extra}' extra; requirements-dev.lock has it)"
        )


@pytest.fixture
def fake():
    provider = FakeProvider()
    server = start_fake(provider)
    try:
        yield provider
    finally:
        server.shutdown()
        server.server_close()


def test_it_keeps_console_messages_in_the_outbox(settings, sms_outbox, capsys):
    settings.SMS_BACKEND = "console"
    sms.send_code(phone="+8613800138000", code="123456")

    assert [(m.to, m.code) for m in sms_outbox] == [("+8613800138000", "123456")]
    assert "123456" in capsys.readouterr().out


def test_it_loads_a_backend_by_dotted_path(settings, sms_outbox):
    settings.SMS_BACKEND = "accounts.sms.console.ConsoleBackend"
    sms.send_code(phone="+8613800138000", code="654321")
    assert sms_outbox[-1].code == "654321"


# --- Alibaba Cloud ------------------------------------------------------------------------
@pytest.fixture
def aliyun(settings, fake):
    require_sdk("aliyun")
    settings.SMS_BACKEND = "aliyun"
    settings.SMS_ALIYUN_ACCESS_KEY_ID = "test-ak"
    settings.SMS_ALIYUN_ACCESS_KEY_SECRET = "test-secret"
    settings.SMS_ALIYUN_SIGN_NAME = "Portal"
    settings.SMS_ALIYUN_TEMPLATE_CODE = "SMS_000001"
    settings.SMS_ALIYUN_ENDPOINT = fake.url
    fake.reply = {"Code": "OK", "Message": "OK", "BizId": "b-1", "RequestId": "r-1"}
    return fake


def test_it_sends_through_aliyun(aliyun):
    sms.send_code(phone="+8613800138000", code="123456")

    [request] = aliyun.requests
    assert request.method == "POST"
    assert request.headers["x-acs-action"] == "SendSms"
    assert request.headers["x-acs-version"] == "2017-05-25"
    assert request.query["PhoneNumbers"] == "13800138000"
    assert request.query["SignName"] == "Portal"
    assert request.query["TemplateCode"] == "SMS_000001"
    assert json.loads(request.query["TemplateParam"]) == {"code": "123456"}
    assert "Credential=test-ak," in request.headers["authorization"]  # signed, not in clear
    assert "test-secret" not in str(request.headers) + str(request.query)


def test_it_reports_an_aliyun_refusal_without_the_code(aliyun, caplog):
    aliyun.reply = {"Code": "isv.BUSINESS_LIMIT_CONTROL", "Message": "limit", "RequestId": "r"}
    with caplog.at_level(logging.INFO), pytest.raises(sms.SmsDeliveryError) as caught:
        sms.send_code(phone="+8613800138000", code="123456")
    assert "BUSINESS_LIMIT_CONTROL" in str(caught.value)
    assert "123456" not in str(caught.value) + caplog.text
    assert "13800138000" not in caplog.text  # numbers are masked in logs


def test_it_reports_an_aliyun_http_error(aliyun):
    aliyun.status = 500
    aliyun.reply = {"Code": "InternalError", "Message": "boom"}
    with pytest.raises(sms.SmsDeliveryError) as caught:
        sms.send_code(phone="+8613800138000", code="123456")
    assert "123456" not in str(caught.value)


def test_it_sends_a_notice_through_aliyuns_notice_template(aliyun, settings):
    settings.SMS_ALIYUN_NOTICE_TEMPLATE_CODE = "SMS_000002"
    assert sms.notices_enabled()
    sms.send_notice(phone="+8613800138000", text="80% used", params={"percent": "80", "limit": "5"})

    [request] = aliyun.requests
    assert request.query["TemplateCode"] == "SMS_000002"
    assert json.loads(request.query["TemplateParam"]) == {"percent": "80", "limit": "5"}


def test_aliyun_sends_no_notices_without_a_notice_template(settings):
    settings.SMS_BACKEND = "aliyun"
    settings.SMS_ALIYUN_NOTICE_TEMPLATE_CODE = ""
    assert not sms.notices_enabled()


def test_it_formats_numbers_the_aliyun_way():
    assert aliyun_phone_number("+8613800138000") == "13800138000"
    assert aliyun_phone_number("+85261234567") == "85261234567"


# --- Tencent Cloud ------------------------------------------------------------------------
@pytest.fixture
def tencent(settings, fake):
    require_sdk("tencent")
    settings.SMS_BACKEND = "tencent"
    settings.SMS_TENCENT_SECRET_ID = "test-id"
    settings.SMS_TENCENT_SECRET_KEY = "test-key"
    settings.SMS_TENCENT_SDK_APP_ID = "1400000000"
    settings.SMS_TENCENT_SIGN_NAME = "Portal"
    settings.SMS_TENCENT_TEMPLATE_ID = "100001"
    settings.SMS_TENCENT_ENDPOINT = fake.url
    fake.reply = {
        "Response": {
            "SendStatusSet": [
                {
                    "SerialNo": "s-1",
                    "PhoneNumber": "+8613800138000",
                    "Fee": 1,
                    "SessionContext": "",
                    "Code": "Ok",
                    "Message": "send success",
                    "IsoCode": "CN",
                }
            ],
            "RequestId": "r-1",
        }
    }
    return fake


def test_it_sends_through_tencent(tencent):
    sms.send_code(phone="+8613800138000", code="123456")

    [request] = tencent.requests
    assert request.headers["x-tc-action"] == "SendSms"
    assert "test-id" in request.headers["authorization"]
    assert request.json == {
        "PhoneNumberSet": ["+8613800138000"],
        "SmsSdkAppId": "1400000000",
        "SignName": "Portal",
        "TemplateId": "100001",
        "TemplateParamSet": ["123456"],
    }


def test_it_sends_a_notice_through_tencents_notice_template(tencent, settings):
    settings.SMS_TENCENT_NOTICE_TEMPLATE_ID = "100002"
    assert sms.notices_enabled()
    sms.send_notice(phone="+8613800138000", text="80% used", params={"percent": "80", "limit": "5"})

    [request] = tencent.requests
    assert request.json["TemplateId"] == "100002"
    assert request.json["TemplateParamSet"] == ["80", "5"]


def test_tencent_sends_no_notices_without_a_notice_template(settings):
    settings.SMS_BACKEND = "tencent"
    settings.SMS_TENCENT_NOTICE_TEMPLATE_ID = ""
    assert not sms.notices_enabled()


def test_free_text_backends_send_the_notice_text(settings, sms_outbox):
    settings.SMS_BACKEND = "console"
    assert sms.notices_enabled()
    sms.send_notice(phone="+8613800138000", text="80% of your quota used", params={})
    assert sms_outbox[-1].body == "80% of your quota used"


def test_it_reports_a_tencent_refusal(tencent):
    tencent.reply["Response"]["SendStatusSet"][0]["Code"] = "LimitExceeded.PhoneNumberDailyLimit"
    with pytest.raises(sms.SmsDeliveryError) as caught:
        sms.send_code(phone="+8613800138000", code="123456")
    assert "PhoneNumberDailyLimit" in str(caught.value)


def test_it_reports_a_tencent_api_error(tencent):
    tencent.reply = {
        "Response": {
            "Error": {"Code": "AuthFailure.SignatureFailure", "Message": "bad"},
            "RequestId": "r",
        }
    }
    with pytest.raises(sms.SmsDeliveryError) as caught:
        sms.send_code(phone="+8613800138000", code="123456")
    assert "AuthFailure" in str(caught.value)
    assert "123456" not in str(caught.value)


# --- Twilio -------------------------------------------------------------------------------
@pytest.fixture
def twilio(settings, fake):
    require_sdk("twilio")
    settings.SMS_BACKEND = "twilio"
    settings.SMS_TWILIO_ACCOUNT_SID = "AC00000000000000000000000000000000"
    settings.SMS_TWILIO_AUTH_TOKEN = "test-token"
    settings.SMS_TWILIO_FROM = "+15005550006"
    settings.SMS_TWILIO_API_BASE_URL = fake.url
    fake.status = 201
    fake.reply = {"sid": "SM1", "status": "queued", "to": "+447911123456", "body": "x"}
    return fake


def test_it_sends_through_twilio(twilio, settings):
    sms.send_code(phone="+447911123456", code="123456")

    [request] = twilio.requests
    assert request.path == f"/2010-04-01/Accounts/{settings.SMS_TWILIO_ACCOUNT_SID}/Messages.json"
    assert request.headers["authorization"].startswith("Basic ")
    assert request.form["To"] == "+447911123456"
    assert request.form["From"] == "+15005550006"
    assert "123456" in request.form["Body"]
    assert settings.PLATFORM_NAME in request.form["Body"]


def test_it_uses_a_twilio_messaging_service(twilio, settings):
    settings.SMS_TWILIO_FROM = "MG00000000000000000000000000000000"
    sms.send_code(phone="+447911123456", code="123456")
    assert twilio.requests[0].form["MessagingServiceSid"] == settings.SMS_TWILIO_FROM


def test_it_reports_a_twilio_refusal(twilio):
    twilio.status = 400
    twilio.reply = {"code": 21211, "message": "Invalid 'To' Phone Number", "status": 400}
    with pytest.raises(sms.SmsDeliveryError) as caught:
        sms.send_code(phone="+447911123456", code="123456")
    assert "21211" in str(caught.value)
    assert "123456" not in str(caught.value)


# --- the sign-in flow survives a provider failure ----------------------------------------
@pytest.mark.django_db
def test_it_keeps_the_sign_in_page_when_the_provider_fails(client, bob, aliyun, caplog):
    aliyun.reply = {"Code": "isv.MOBILE_NUMBER_ILLEGAL", "Message": "bad", "RequestId": "r"}
    with caplog.at_level(logging.INFO):
        response = client.post("/accounts/login/", {"region": "CN", "login": "13800138000"})
    assert response.status_code == 302
    assert "MOBILE_NUMBER_ILLEGAL" in caplog.text
    assert "13800138000" not in caplog.text


def test_it_requires_provider_settings(settings):
    from accounts.checks import sms_settings_check

    settings.SMS_BACKEND = "twilio"
    settings.SMS_TWILIO_ACCOUNT_SID = ""
    [error] = [m for m in sms_settings_check(None) if m.id == "accounts.E001"]
    assert "SMS_TWILIO_ACCOUNT_SID" in error.msg


def test_it_warns_about_console_codes_in_production(settings):
    from accounts.checks import sms_settings_check

    settings.SMS_BACKEND = "console"
    settings.PRODUCTION = True
    assert [m.id for m in sms_settings_check(None)] == ["accounts.W001"]
    settings.PRODUCTION = False
    assert sms_settings_check(None) == []


@pytest.mark.parametrize("backend", sorted(SDK_EXTRAS))
def test_a_backend_without_its_sdk_names_the_extra_to_install(backend, settings, monkeypatch):
    monkeypatch.setattr(SDK_MODULES[backend], "SDK_INSTALLED", False)
    settings.SMS_BACKEND = backend
    with pytest.raises(ImproperlyConfigured, match=f"install the 'sms-{backend}' extra"):
        sms.get_backend()


@pytest.mark.parametrize("backend", sorted(SDK_EXTRAS))
def test_the_checks_report_a_configured_backend_without_its_sdk(backend, settings, monkeypatch):
    from accounts import checks

    real_find_spec = checks.importlib.util.find_spec
    module = SDK_EXTRAS[backend][0]

    def find_spec(name, *args):
        return None if name == module else real_find_spec(name, *args)

    monkeypatch.setattr(checks.importlib.util, "find_spec", find_spec)
    settings.SMS_BACKEND = backend
    [error] = [m for m in checks.sms_settings_check(None) if m.id == "accounts.E002"]
    assert f"sms-{backend}" in error.msg


@pytest.mark.parametrize("backend", sorted(SDK_EXTRAS))
def test_the_checks_accept_a_backend_whose_sdk_is_installed(backend, settings):
    require_sdk(backend)
    settings.SMS_BACKEND = backend
    from accounts.checks import sms_settings_check

    assert "accounts.E002" not in [m.id for m in sms_settings_check(None)]
