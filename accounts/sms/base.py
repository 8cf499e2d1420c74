from dataclasses import dataclass, field

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.utils import timezone
from django.utils.module_loading import import_string
from django.utils.translation import gettext

# Messages the console backend "sent", newest last. Tests read and clear it.
outbox: list["SmsMessage"] = []

BACKEND_ALIASES = {
    "console": "accounts.sms.console.ConsoleBackend",
    "aliyun": "accounts.sms.aliyun.AliyunBackend",
    "tencent": "accounts.sms.tencent.TencentBackend",
    "twilio": "accounts.sms.twilio.TwilioBackend",
}


# The provider SDKs are optional extras of the package (pyproject ``[project.optional-
# dependencies]``): backend name -> (a module the SDK installs, the extra that installs it).
SDK_EXTRAS = {
    "aliyun": ("alibabacloud_dysmsapi20170525", "sms-aliyun"),
    "tencent": ("tencentcloud.sms", "sms-tencent"),
    "twilio": ("twilio", "sms-twilio"),
}


def sdk_missing(backend: str) -> ImproperlyConfigured:
    """The error a backend raises when its provider's SDK is not installed."""
    module, extra = SDK_EXTRAS[backend]
    return ImproperlyConfigured(
        f"SMS_BACKEND={backend} needs the {module} SDK, which is not installed: install the "
        f"'{extra}' extra (pip install --require-hashes -r requirements.lock "
        f"-r requirements-{extra}.lock, or build the image with --build-arg "
        f"SMS_EXTRAS={extra}; README, 'Dependencies')."
    )


class SmsDeliveryError(Exception):
    """The provider refused or failed to take the message. Never carries the code."""


@dataclass
class SmsMessage:
    to: str
    code: str
    sent_at: object = field(default_factory=timezone.now)

    @property
    def body(self) -> str:
        """The full text, for providers that send free text (console, Twilio)."""
        minutes = max(1, settings.ACCOUNT_LOGIN_BY_CODE_TIMEOUT // 60)
        return gettext(
            "%(platform)s verification code: %(code)s. It expires in %(minutes)d minutes. "
            "Do not share it with anyone."
        ) % {"platform": settings.PLATFORM_NAME, "code": self.code, "minutes": minutes}


class SmsBackend:
    """Deliver one message or raise ``SmsDeliveryError``."""

    name = "base"

    def send(self, message: SmsMessage) -> None:
        raise NotImplementedError


def get_backend() -> SmsBackend:
    path = BACKEND_ALIASES.get(settings.SMS_BACKEND, settings.SMS_BACKEND)
    return import_string(path)()
