import sys

from accounts.sms.base import SmsBackend, SmsMessage, outbox


class ConsoleBackend(SmsBackend):
    """Development and tests: print the message to stdout and keep it in ``outbox``.

    It writes to stdout (like Django's console email backend), not to the logging system,
    so codes do not end up in log files; a system check warns if it is used in production.
    """

    name = "console"

    def send(self, message: SmsMessage) -> None:
        outbox.append(message)
        sys.stdout.write(f"[SMS to {message.to}] {message.body}\n")
        sys.stdout.flush()
