"""A key's own controls: the rules the gateway applies per request, with no I/O.

Every control is optional; a key without any behaves as if this module did not exist. The
stored values live on ``ApiKey`` (``allowed_models``, ``expires_at``, ``allowed_ips``,
``daily_token_cap``, ``max_concurrent_requests``) and travel with the cached key row
(``usage.ledger.KeyRow``), where ``KeyControls`` is compiled once per lookup: the per-request
check is a comparison of datetimes, a set lookup and a walk over a few parsed networks.

The daily token cap is not checked here: it is a counter, enforced by the reservation
statement (``usage.ledger``) in the same step as the account's quota.

Who calls what (the gateway):

- ``controls.refusal(now=..., client=...)`` after authentication, for every endpoint that
  needs a valid key (chat, messages, count_tokens, model listing);
- ``controls.model_refusal(name)`` once the requested model is known (its public name);
- ``controls.listed(names)`` to filter ``GET /v1/models``.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass

from django.core.exceptions import ValidationError
from django.utils.translation import gettext as _

# Enough for an office, a VPN and a few servers; a longer list is a firewall's job.
MAX_ALLOWED_IPS = 50
MAX_ALLOWED_MODELS = 50
MODEL_NAME_MAX_LENGTH = 128
# Far above any real day or fleet, far below the columns' ranges (bigint; PostgreSQL's
# integer is 2**31 - 1), so that the ledger's sums of cap and counters cannot overflow.
DAILY_TOKEN_CAP_MAX = 10**15
MAX_CONCURRENT_REQUESTS_MAX = 100_000


@dataclass(frozen=True, slots=True)
class Refusal:
    """Why the gateway must refuse a request: a stable ``code``, the HTTP ``status`` and a
    message for the client (English, like every gateway error)."""

    code: str
    status: int
    message: str


def key_expired(expires_at: dt.datetime) -> Refusal:
    return Refusal(
        "key_expired",
        401,
        f"This API key expired at {expires_at.astimezone(dt.UTC):%Y-%m-%d %H:%M:%S} UTC. "
        "Extend it or create a new key on the API Keys page.",
    )


def model_not_allowed(model: str) -> Refusal:
    return Refusal(
        "model_not_allowed",
        403,
        f"This API key may not use the model {model}. "
        "Change the key's allowed models on the API Keys page.",
    )


def ip_not_allowed(address: str) -> Refusal:
    return Refusal(
        "ip_not_allowed",
        403,
        f"This API key may not be used from the address {address}. "
        "Add it to the key's IP allow-list on the API Keys page.",
    )


Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class KeyControls:
    """The compiled controls of one key (build it once per cached key row)."""

    __slots__ = ("expires_at", "models", "networks")

    def __init__(
        self,
        *,
        expires_at: dt.datetime | None = None,
        allowed_models: Iterable[str] = (),
        allowed_ips: Iterable[str] = (),
    ):
        self.expires_at = expires_at
        # Empty means every model; a frozenset makes the per-request test one hash lookup.
        self.models = frozenset(allowed_models)
        # Stored values are normalised by ``allowed_ips_clean``; strict=False only forgives a
        # row written before validation tightened.
        self.networks: tuple[Network, ...] = tuple(
            ipaddress.ip_network(value, strict=False) for value in allowed_ips
        )

    def refusal(self, *, now: dt.datetime, client: str | None) -> Refusal | None:
        """Expiry first (a dead key says so whatever the address), then the IP allow-list."""
        if self.expires_at is not None and now >= self.expires_at:
            return key_expired(self.expires_at)
        if self.networks and not self.ip_allowed(client):
            return ip_not_allowed(client or "unknown")
        return None

    def ip_allowed(self, client: str | None) -> bool:
        if not self.networks:
            return True
        try:
            address = ipaddress.ip_address(client or "")
        except ValueError:
            return False  # "unknown" (no peer address) never matches a list
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            # A dual-stack socket reports IPv4 clients as ::ffff:a.b.c.d.
            address = address.ipv4_mapped
        return any(address in network for network in self.networks)

    def model_refusal(self, model: str) -> Refusal | None:
        if self.models and model not in self.models:
            return model_not_allowed(model)
        return None

    def listed(self, names: Iterable[str]) -> list[str]:
        """The model names ``GET /v1/models`` shows for this key, in the order given."""
        if not self.models:
            return list(names)
        return [name for name in names if name in self.models]


# --- validation, shared by the form, the REST API and the admin (through the service) ------


def _bounded_unique(values: Iterable[str], normalise, *, limit: int, too_many) -> list[str]:
    """``values`` stripped, blanks dropped, each through ``normalise`` (which raises
    ``ValidationError`` for a bad one), duplicates dropped, in order. Stops at the first entry
    past ``limit`` distinct ones with ``too_many``: the cost of a long list is bounded by the
    limit, not by the list."""
    cleaned: list[str] = []
    seen: set[str] = set()
    for raw in values:
        value = (raw or "").strip()
        if not value:
            continue
        text = normalise(value)
        if text in seen:
            continue
        if len(cleaned) == limit:
            raise too_many
        seen.add(text)
        cleaned.append(text)
    return cleaned


def _ip_or_network(value: str) -> str:
    try:
        if "/" not in value:
            return str(ipaddress.ip_address(value))
        network = ipaddress.ip_network(value, strict=True)
    except ValueError:
        message = _(
            "“%(value)s” is not an IP address or a CIDR range "
            "(for example 203.0.113.7, 203.0.113.0/24 or 2001:db8::/32)."
        ) % {"value": value[:60]}
        if "/" in value:
            try:
                ipaddress.ip_network(value, strict=False)
            except ValueError:
                pass
            else:
                message = _("“%(value)s” has host bits set; write the range as %(network)s.") % {
                    "value": value[:60],
                    "network": ipaddress.ip_network(value, strict=False),
                }
        raise ValidationError({"allowed_ips": message}) from None
    return str(network.network_address) if network.num_addresses == 1 else str(network)


def allowed_ips_clean(values: Iterable[str]) -> list[str]:
    """Normalised, deduplicated addresses and CIDR ranges (IPv4 and IPv6), or
    ``ValidationError`` naming the bad entry. A single address is stored as itself
    (``203.0.113.7``), a range as its network (``203.0.113.0/24``); at most
    ``MAX_ALLOWED_IPS``."""
    return _bounded_unique(
        values,
        _ip_or_network,
        limit=MAX_ALLOWED_IPS,
        too_many=ValidationError(
            {
                "allowed_ips": _("At most %(max)d addresses and ranges per key.")
                % {"max": MAX_ALLOWED_IPS}
            }
        ),
    )


def _model_name(value: str) -> str:
    if len(value) > MODEL_NAME_MAX_LENGTH or any(ch.isspace() for ch in value):
        raise ValidationError(
            {"allowed_models": _("“%(value)s” is not a model name.") % {"value": value[:60]}}
        )
    return value


def allowed_models_clean(values: Iterable[str]) -> list[str]:
    """Deduplicated public model names (checked for shape only: ``keys`` does not read the
    gateway's catalog, and a name no model has simply never matches); at most
    ``MAX_ALLOWED_MODELS``."""
    return _bounded_unique(
        values,
        _model_name,
        limit=MAX_ALLOWED_MODELS,
        too_many=ValidationError(
            {"allowed_models": _("At most %(max)d models per key.") % {"max": MAX_ALLOWED_MODELS}}
        ),
    )


def split_list(text: str) -> list[str]:
    """Entries of a text box: one per line, or separated by commas or spaces."""
    return [part for part in text.replace(",", " ").split() if part]
