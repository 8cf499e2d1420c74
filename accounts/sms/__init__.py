"""Text messages carrying verification codes, behind one small interface.

``SMS_BACKEND`` picks the backend: ``console`` (the default: prints the message and keeps
it in ``outbox`` for tests, like Django's ``mail.outbox``), ``aliyun``, ``tencent`` or
``twilio`` (each through its official SDK, configured by the ``SMS_*`` settings), or a
dotted path to any ``SmsBackend`` subclass.

Only codes are ever sent: the Chinese providers deliver pre-approved templates, and one
template with a single ``code`` parameter is all this portal needs.
"""

from accounts.sms.base import SmsBackend, SmsDeliveryError, SmsMessage, get_backend, outbox

__all__ = ["SmsBackend", "SmsDeliveryError", "SmsMessage", "get_backend", "outbox", "send_code"]


def send_code(*, phone: str, code: str) -> SmsMessage:
    """Send ``code`` to ``phone`` (E.164) with the configured backend."""
    message = SmsMessage(to=phone, code=code)
    get_backend().send(message)
    return message
