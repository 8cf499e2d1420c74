"""A proof-of-work challenge in front of every form that sends a code (hashcash-style).

Self-hosted and offline: no third-party CAPTCHA (none works reliably both in mainland China
and elsewhere), no inline script (the strict CSP), nothing to call out to. The server signs a
random challenge; the browser (static/js/challenge.js) finds a ``solution`` such that
SHA-256(``challenge:solution``) starts with ``CODE_CHALLENGE_BITS`` zero bits, about
2**bits hashes; the server checks it with one hash, refuses stale or reused challenges, and
only then sends a code. It costs a person a moment once, and a pumping bot the same for
every message. ``CODE_CHALLENGE_BITS=0`` (the default) switches it off.
"""

import hashlib
import secrets

from django import forms
from django.conf import settings
from django.core import signing
from django.utils.translation import gettext_lazy as _

from accounts import codes

_SALT = "accounts.challenge"


def challenge_enabled() -> bool:
    return settings.CODE_CHALLENGE_BITS > 0


def challenge_issue() -> str:
    """A fresh signed challenge: ``<bits>.<nonce>`` plus timestamp and signature."""
    value = f"{settings.CODE_CHALLENGE_BITS}.{secrets.token_hex(12)}"
    return signing.TimestampSigner(salt=_SALT).sign(value)


def leading_zero_bits(digest: bytes) -> int:
    bits = 0
    for byte in digest:
        if byte == 0:
            bits += 8
            continue
        return bits + 8 - byte.bit_length()
    return bits


def challenge_verify(*, challenge: str, solution: str) -> bool:
    """True once per challenge: signed by us, recent, still hard enough, and solved."""
    try:
        value = signing.TimestampSigner(salt=_SALT).unsign(
            challenge, max_age=settings.CODE_CHALLENGE_MAX_AGE_SECONDS
        )
        bits = int(value.split(".", 1)[0])
    except (signing.BadSignature, ValueError):
        return False
    # A challenge issued before the operator raised the difficulty is not good enough.
    if bits < settings.CODE_CHALLENGE_BITS or not solution or len(solution) > 32:
        return False
    digest = hashlib.sha256(f"{challenge}:{solution}".encode()).digest()
    if leading_zero_bits(digest) < bits:
        return False
    # One solution, one code: a solved challenge cannot be replayed.
    return codes.use_counter_consume(
        key=hashlib.sha256(f"challenge:{challenge}".encode()).hexdigest(),
        limit=1,
        ttl_seconds=settings.CODE_CHALLENGE_MAX_AGE_SECONDS + 60,
    )


CHALLENGE_ERROR = _(
    "Your browser did not finish the security check. Make sure JavaScript is on, then try again."
)


class ChallengeFormMixin(forms.Form):
    """Adds the challenge's hidden fields; ``challenge_check()`` verifies them in ``clean``."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if challenge_enabled():
            self.fields["challenge"] = forms.CharField(
                required=False, widget=forms.HiddenInput(attrs={"data-challenge": "1"})
            )
            self.fields["solution"] = forms.CharField(
                required=False, max_length=32, widget=forms.HiddenInput
            )
            # A fresh challenge every time the form is shown, also after an error.
            self.initial["challenge"] = challenge_issue()
            if self.is_bound:
                self.data = self.data.copy()
                self._submitted_challenge = (
                    self.data.get("challenge", ""),
                    self.data.get("solution", ""),
                )
                self.data["challenge"] = self.initial["challenge"]
                self.data["solution"] = ""

    def challenge_check(self) -> bool:
        """Verify (and use up) the submitted solution; adds the form error when it fails."""
        if not challenge_enabled():
            return True
        challenge, solution = getattr(self, "_submitted_challenge", ("", ""))
        if challenge_verify(challenge=challenge, solution=solution):
            return True
        self.add_error(None, CHALLENGE_ERROR)
        return False


def challenge_passed(data) -> bool:
    """For views without a form (the "send a new code" button)."""
    if not challenge_enabled():
        return True
    return challenge_verify(challenge=data.get("challenge", ""), solution=data.get("solution", ""))
