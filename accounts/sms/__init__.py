"""Text messages carrying verification codes, behind one small interface.

``SMS_BACKEND`` picks the backend: ``console`` (the default: prints the message and keeps
it in ``outbox`` for tests, like Django's ``mail.outbox``), ``aliyun``, ``tencent`` or
``twilio`` (each through its official SDK, configured by the ``SMS_*`` settings), or a
dotted path to any ``SmsBackend`` subclass.

Two kinds of message: verification codes and notices (quota alerts). The Chinese providers
deliver pre-approved templates only: one with a single ``code`` parameter for codes, and a
notice template (``SMS_ALIYUN_NOTICE_TEMPLATE_CODE``, ``SMS_TENCENT_NOTICE_TEMPLATE_ID``) whose
parameters are the notice's ``notice_params``, in order; without one they send no notices.
"""

from accounts.sms.base import (
    SmsBackend,
    SmsDeliveryError,
    SmsMessage,
    get_backend,
    notices_enabled,
    outbox,
)

__all__ = [
    "SmsBackend",
    "SmsDeliveryError",
    "SmsMessage",
    "get_backend",
    "notices_enabled",
    "outbox",
    "send_code",
    "send_notice",
]


def send_code(*, phone: str, code: str) -> SmsMessage:
    """Send ``code`` to ``phone`` (E.164) with the configured backend."""
    message = SmsMessage(to=phone, code=code)
    get_backend().send(message)
    return message


def send_notice(*, phone: str, text: str, params: dict[str, str]) -> SmsMessage:
    """Send a notice to ``phone``: ``text`` where the provider takes free text, the notice
    template with ``params`` where it takes templates (check ``notices_enabled`` first)."""
    message = SmsMessage(to=phone, notice_text=text, notice_params=params)
    get_backend().send(message)
    return message
