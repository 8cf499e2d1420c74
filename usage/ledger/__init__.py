"""The hot-path write side of quota and usage: reserve, settle, and batched records.

Two implementations behind one small interface (``Ledger``), chosen by the database engine
(``ledger_for_database``): ``usage.ledger.postgres.PgLedger`` speaks to PostgreSQL directly
through asyncpg, one statement per operation (or per batch of them, under load: natural
batching, see ``usage.ledger.postgres._Batcher``); ``usage.ledger.orm.OrmLedger`` does the same
through the ORM in a thread (SQLite, the embedded default). The rules both follow are written
once, here and in ``usage.quota``: ``reservation_grant`` (how much a request may reserve) and
``effective_quota``; the PostgreSQL statement mirrors them in SQL and a test holds the two to
the same answers.

The invariant shared with the stale-reservation sweeper (``usage.ledger.upkeep``): a
``Reservation`` row exists exactly while its tokens are included in
``DailyUsage(user, day).reserved_tokens`` and, when its ``capped_key_id`` is set, in
``KeyDailyUsage(capped_key_id, day).reserved_tokens`` too. Settling deletes the row and
subtracts its tokens only when the delete found it, then adds the real usage, in one
statement (both counters). A reservation the sweeper released first is therefore still
charged once and never released twice.

A key's daily cap (``ApiKey.daily_token_cap``) is held by the same reservation as the
account's quota: the statement locks the key's counter, then the account's (always in that
order, as settling and the sweeper do), and grants what fits both (``reservation_grant``).
A key without a cap reserves with ``capped_key_id`` NULL and never touches a key counter.
The key's counter for a day is created by the first capped reservation of that day, seeded
from the day's rollups for the key (so a cap set in the afternoon counts the morning).

The key's other controls (allowed models, expiry, IP allow-list, concurrency) travel with
the cached ``KeyRow`` and are checked in the gateway (``keys.controls``). Every change of
them bumps ``ApiKey.controls_version``: ``reserve(controls_version=<the cached one>)``
refuses with ``Refused("controls")``, reserving nothing, when the stored version differs,
so a process never serves a request on controls older than the statement that admits it.

The sweeper releases only what is orphaned: a live request's process renews the
``lease_until`` of all its reservations in one statement per interval (``renew_leases``), and
a request ends (stream limit) and settles (bounded retries) well before its reservation is
old enough to be stale (``gateway.checks``). A settlement retried after a failure whose
outcome is unknown (``settle(..., retry=True)``) charges only if the row is still there: gone
means the first attempt committed, since no sweeper can have taken a live reservation. (A
first attempt whose caller left it in a batch still in flight is waited for, so that it cannot
commit after the retry.)

Usage records and rollups are not counters the quota depends on: they are written in batches
(``write_batch``) by ``gateway.serving.recorder``. The ``DailyUsage`` counter is never batched.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from dataclasses import dataclass, field

from django.conf import settings
from django.db import connection

from keys.controls import KeyControls


@dataclass(slots=True)
class KeyRow:
    key_id: int
    user_id: int
    key_name: str
    digest: str
    key_active: bool
    user_active: bool
    rate_limit_rpm: int | None
    rate_limit_tpm: int | None
    # The key's own controls (keys.controls); the defaults are a key without any.
    daily_token_cap: int | None = None
    allowed_models: tuple[str, ...] = ()
    expires_at: dt.datetime | None = None
    allowed_ips: tuple[str, ...] = ()
    max_concurrent_requests: int | None = None
    controls_version: int = 0
    # Compiled once per lookup, so that the cached row checks a request cheaply.
    controls: KeyControls = field(init=False, repr=False, compare=False)

    def __post_init__(self):
        self.controls = KeyControls(
            expires_at=self.expires_at,
            allowed_models=self.allowed_models,
            allowed_ips=self.allowed_ips,
        )


@dataclass(slots=True)
class Reserved:
    reservation_id: int
    user_id: int
    day: dt.date
    tokens: int
    input_tokens: int
    output_budget: int
    # The key whose daily-cap counter holds these tokens too; None for a key without a cap.
    capped_key_id: int | None = None
    # The account's quota for the day and the key's cap, as the reservation saw them: what a
    # settlement's new totals are compared with for quota alerts.
    quota: int = 0
    key_cap: int | None = None


@dataclass(slots=True)
class Settled:
    """A settlement's new totals: the account's tokens used today and, for a capped key, the
    key's. Returned by the settling statement itself (no further query), for quota alerts."""

    used: int
    key_used: int | None = None


@dataclass(slots=True)
class Refused:
    # "auth": the key or account changed since it was cached; "quota": the account has
    # nothing left today (quota/used are the account's); "key_quota": the key's daily cap is
    # spent (quota/used are the key's cap and total); "controls": the key's controls changed
    # since they were cached (look the key up again, check, and reserve again).
    reason: str
    quota: int = 0
    used: int = 0


@dataclass(slots=True)
class RecordRow:
    user_id: int
    api_key_id: int | None
    key_name: str
    model: str
    endpoint: str
    stream: bool
    input_tokens: int
    output_tokens: int
    estimated: bool
    status_code: int
    error_code: str
    latency_ms: int
    first_token_ms: int | None
    day: dt.date
    created_at: dt.datetime
    playground: bool = False
    # The part of the input read from the upstream's prompt cache (see UsageRecord).
    cached_input_tokens: int = 0
    # The upstream endpoint that served it (see UsageRecord).
    upstream_endpoint_id: int | None = None


def reservation_grant(
    *,
    quota: int,
    total: int,
    input_tokens: int,
    max_output_tokens: int,
    cap: int | None = None,
    key_total: int = 0,
) -> int | None:
    """Tokens to reserve for a request (its input plus as much of ``max_output_tokens`` as
    fits the account's quota and, for a capped key, the key's cap), or None when not even one
    output token fits. Mirrored by ``_RESERVE_SQL``."""
    room = quota - total - input_tokens
    if cap is not None:
        room = min(room, cap - key_total - input_tokens)
    if room < 1:
        return None
    return input_tokens + min(max_output_tokens, room)


def refusal_for(
    *, quota: int, total: int, input_tokens: int, cap: int | None = None, key_total: int = 0
) -> Refused:
    """Which limit refused a request ``reservation_grant`` gave nothing: the account's when
    its quota has no room (a bigger key cap would not help), else the key's cap."""
    if cap is None or quota - total - input_tokens < 1:
        return Refused("quota", quota=quota, used=total)
    return Refused("key_quota", quota=cap, used=key_total)


def rollup_rows(records: Iterable[RecordRow]) -> list[tuple]:
    """(user, key name, model, day, key id, requests, errors, input, output, cached input) per
    rollup slot."""
    slots: dict[tuple, list] = {}
    for r in records:
        slot = (r.user_id, r.key_name, r.model, r.day)
        acc = slots.get(slot)
        if acc is None:
            acc = slots[slot] = [r.api_key_id, 0, 0, 0, 0, 0]
        acc[0] = r.api_key_id or acc[0]
        acc[1] += 1
        acc[2] += 1 if r.status_code >= 400 else 0
        acc[3] += r.input_tokens
        acc[4] += r.output_tokens
        acc[5] += r.cached_input_tokens
    return [(*slot, *acc) for slot, acc in slots.items()]


class Ledger:
    """The interface. ``round_trips`` counts database statements, for tests and benchmarks."""

    round_trips = 0

    async def open(self) -> None:
        pass

    async def close(self) -> None:
        pass

    async def ping(self) -> None:
        """One trivial statement through the connections requests use (for /healthz)."""
        raise NotImplementedError

    async def find_key(self, prefix: str) -> KeyRow | None:
        raise NotImplementedError

    async def reserve(
        self,
        *,
        key_id: int,
        digest: str,
        day: dt.date,
        input_tokens: int,
        max_output_tokens: int,
        controls_version: int | None = None,
    ) -> Reserved | Refused:
        """Hold tokens for one request. ``controls_version``: the cached key row's; when the
        stored one differs, ``Refused("controls")`` and nothing is held (None: no check)."""
        raise NotImplementedError

    async def settle(
        self, *, reserved: Reserved, input_tokens: int, output_tokens: int, retry: bool = False
    ) -> Settled | None:
        """Charge the usage and release the reservation; the new totals, or None when a retry
        found the first attempt had committed (nothing charged this time)."""
        raise NotImplementedError

    async def renew_leases(self, reservation_ids: list[int], seconds: float) -> None:
        raise NotImplementedError

    async def write_batch(
        self, records: list[RecordRow], last_used: dict[int, dt.datetime]
    ) -> None:
        raise NotImplementedError


def ledger_for_database() -> Ledger:
    """The fast path on PostgreSQL, the ORM elsewhere."""
    if connection.vendor == "postgresql":
        from usage.ledger.postgres import PgLedger

        return PgLedger(max_size=settings.GATEWAY_DB_POOL_SIZE)
    from usage.ledger.orm import OrmLedger

    return OrmLedger()
