"""Writes on the security log. Every app records through ``security_event_record``.

This app imports no other app of the project (``tests/test_architecture.py``): accounts,
keys and usage depend on it, never the other way round. The account is given as a user object
or an id; anything shaped like ``settings.AUTH_USER_MODEL`` will do.
"""

import ipaddress

from audit.middleware import current_request
from audit.models import SecurityEvent

USER_AGENT_MAX_LENGTH = SecurityEvent._meta.get_field("user_agent").max_length


def security_event_record(
    *,
    action: str,
    user=None,
    user_id: int | None = None,
    actor=None,
    request=None,
    detail: dict | None = None,
) -> SecurityEvent:
    """Write one entry of the security log. Call it from the service performing ``action``.

    ``request`` defaults to the one being served (``audit.middleware``): it gives the
    client address (as uvicorn derived it from ``FORWARDED_ALLOW_IPS``, never a raw header)
    and the user agent. ``actor`` defaults to the request's signed-in account, so an action a
    staff member takes in the admin names them. Give the account as ``user`` or, where only
    its id is at hand, ``user_id``. Outside a request (a command, a task) both
    are empty unless given. ``detail`` must not hold secrets.
    """
    request = request if request is not None else current_request()
    if actor is None and request is not None:
        signed_in = getattr(request, "user", None)
        if signed_in is not None and signed_in.is_authenticated:
            actor = signed_in
    meta = getattr(request, "META", {}) if request is not None else {}
    return SecurityEvent.objects.create(
        user_id=user.pk if user is not None else user_id,
        actor=actor,
        action=action,
        ip_address=_ip_or_none(meta.get("REMOTE_ADDR")),
        user_agent=(meta.get("HTTP_USER_AGENT") or "")[:USER_AGENT_MAX_LENGTH],
        detail=detail or {},
    )


def _ip_or_none(value: str | None) -> str | None:
    # A unix-socket peer or a test client may give something that is not an address.
    try:
        return str(ipaddress.ip_address(value or ""))
    except ValueError:
        return None


def security_events_prune(*, before) -> int:
    """Delete security-log entries older than ``before``. Returns how many went."""
    deleted, _by_model = SecurityEvent.objects.filter(created_at__lt=before).delete()
    return deleted
