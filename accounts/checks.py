import importlib.util

from django.conf import settings
from django.core.checks import Error, Warning, register

from accounts.sms.base import SDK_EXTRAS, sdk_missing

_REQUIRED = {
    "aliyun": [
        "SMS_ALIYUN_ACCESS_KEY_ID",
        "SMS_ALIYUN_ACCESS_KEY_SECRET",
        "SMS_ALIYUN_SIGN_NAME",
        "SMS_ALIYUN_TEMPLATE_CODE",
    ],
    "tencent": [
        "SMS_TENCENT_SECRET_ID",
        "SMS_TENCENT_SECRET_KEY",
        "SMS_TENCENT_SDK_APP_ID",
        "SMS_TENCENT_SIGN_NAME",
        "SMS_TENCENT_TEMPLATE_ID",
    ],
    "twilio": ["SMS_TWILIO_ACCOUNT_SID", "SMS_TWILIO_AUTH_TOKEN", "SMS_TWILIO_FROM"],
}


@register()
def sms_settings_check(app_configs, **kwargs):
    backend = settings.SMS_BACKEND
    messages = []
    missing = [name for name in _REQUIRED.get(backend, []) if not getattr(settings, name, "")]
    if missing:
        messages.append(
            Error(
                f"SMS_BACKEND={backend} needs {', '.join(missing)}.",
                hint="Set them in the environment (see .env.example).",
                id="accounts.E001",
            )
        )
    if backend in SDK_EXTRAS and not _sdk_installed(SDK_EXTRAS[backend][0]):
        messages.append(
            Error(
                str(sdk_missing(backend).args[0]),
                hint=f"Install the '{SDK_EXTRAS[backend][1]}' extra, or pick another SMS_BACKEND.",
                id="accounts.E002",
            )
        )
    if backend == "console" and getattr(settings, "PRODUCTION", False):
        messages.append(
            Warning(
                "SMS_BACKEND=console prints sign-in codes to the server's output.",
                hint="Pick aliyun, tencent or twilio for real text messages.",
                id="accounts.W001",
            )
        )
    return messages


def _sdk_installed(module: str) -> bool:
    # find_spec, not import: the check must not load a whole SDK into every process.
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:  # the parent package (tencentcloud) is missing
        return False
