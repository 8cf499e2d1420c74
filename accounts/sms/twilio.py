"""Twilio Programmable Messaging through its official SDK.

Settings: ``SMS_TWILIO_ACCOUNT_SID``, ``SMS_TWILIO_AUTH_TOKEN`` and ``SMS_TWILIO_FROM`` (a
sender number in E.164, or a Messaging Service SID starting with ``MG``); optionally
``SMS_TWILIO_API_BASE_URL``.
"""

import logging

from django.conf import settings

from accounts.identifiers import phone_mask
from accounts.sms.base import SmsBackend, SmsDeliveryError, SmsMessage, sdk_missing

try:  # the optional 'sms-twilio' extra
    from twilio.base.exceptions import TwilioException
    from twilio.http.http_client import TwilioHttpClient
    from twilio.rest import Client
except ImportError:
    SDK_INSTALLED = False
else:
    SDK_INSTALLED = True

logger = logging.getLogger(__name__)


class TwilioBackend(SmsBackend):
    name = "twilio"

    def __init__(self):
        if not SDK_INSTALLED:
            raise sdk_missing(self.name)
        self.client = Client(
            settings.SMS_TWILIO_ACCOUNT_SID,
            settings.SMS_TWILIO_AUTH_TOKEN,
            http_client=TwilioHttpClient(timeout=settings.SMS_TIMEOUT_SECONDS),
        )
        if settings.SMS_TWILIO_API_BASE_URL:
            self.client.api.base_url = settings.SMS_TWILIO_API_BASE_URL.rstrip("/")

    def send(self, message: SmsMessage) -> None:
        sender = settings.SMS_TWILIO_FROM
        sender_kwargs = (
            {"messaging_service_sid": sender} if sender.startswith("MG") else {"from_": sender}
        )
        try:
            self.client.messages.create(to=message.to, body=message.body, **sender_kwargs)
        except TwilioException as exc:
            code = getattr(exc, "code", None) or getattr(exc, "status", None)
            logger.warning("Twilio SMS to %s refused: %s", phone_mask(message.to), code)
            raise SmsDeliveryError(f"twilio: {code}") from None
        except Exception as exc:
            raise SmsDeliveryError(f"twilio: {type(exc).__name__}") from None
