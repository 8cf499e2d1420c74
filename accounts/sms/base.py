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


# The setting that names the approved notice template, for providers that send templates
# only: without it they send codes but no notices (quota alerts).
NOTICE_TEMPLATE_SETTINGS = {
    "aliyun": "SMS_ALIYUN_NOTICE_TEMPLATE_CODE",
    "tencent": "SMS_TENCENT_NOTICE_TEMPLATE_ID",
}


def notices_enabled() -> bool:
    """Whether the configured backend can send a notice (free text, or a notice template)."""
    name = NOTICE_TEMPLATE_SETTINGS.get(settings.SMS_BACKEND)
    return name is None or bool(getattr(settings, name))


@dataclass
class SmsMessage:
    """A verification code (``code``) or a notice (``notice_text``, with ``notice_params`` in
    the order of the notice template's parameters, for the template providers)."""

    to: str
    code: str = ""
    notice_text: str = ""
    notice_params: dict[str, str] = field(default_factory=dict)
    sent_at: object = field(default_factory=timezone.now)

    @property
    def is_notice(self) -> bool:
        return bool(self.notice_text)

    @property
    def body(self) -> str:
        """The full text, for providers that send free text (console, Twilio)."""
        if self.is_notice:
            return self.notice_text
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
