"""A key's effective rate limits: the one rule the portal, the admin and the gateway share.

A key's own limit when it has one, else the platform's (``RATE_LIMIT_RPM`` /
``RATE_LIMIT_TPM``): blank means the platform default. A limit of 0 is refused where limits
are set (the model's validators and check constraint): a key that may make no request is a
disabled key, and it has its own switch.
"""

from django.conf import settings


def effective_rate_limits(rpm: int | None, tpm: int | None) -> tuple[int, int]:
    """(requests per minute, tokens per minute) for a key whose own limits are ``rpm``/``tpm``."""
    return (
        rpm if rpm is not None else settings.RATE_LIMIT_RPM,
        tpm if tpm is not None else settings.RATE_LIMIT_TPM,
    )
