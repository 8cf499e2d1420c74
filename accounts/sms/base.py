from dataclasses import dataclass, field

from django.conf import settings
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
