"""The hot-path write side of quota and usage: reserve, settle, and batched records.

Two implementations behind one small interface (``Ledger``), chosen by the database engine
(``ledger_for_database``): ``usage.ledger.postgres.PgLedger`` speaks to PostgreSQL directly
through asyncpg, one statement per operation; ``usage.ledger.orm.OrmLedger`` does the same
through the ORM in a thread (SQLite, the embedded default). The rules both follow are written
once, here and in ``usage.quota``: ``reservation_grant`` (how much a request may reserve) and
``effective_quota``; the PostgreSQL statement mirrors them in SQL and a test holds the two to
the same answers.

The invariant shared with the stale-reservation sweeper (``usage.ledger.upkeep``): a
``Reservation`` row exists exactly while its tokens are included in
``DailyUsage(user, day).reserved_tokens``. Settling deletes the row and subtracts its tokens
only when the delete found it, then adds the real usage, in one statement. A reservation the
sweeper released first is therefore still charged once and never released twice.

The sweeper releases only what is orphaned: a live request's process renews the
``lease_until`` of all its reservations in one statement per interval (``renew_leases``), and
a request ends (stream limit) and settles (bounded retries) well before its reservation is
old enough to be stale (``gateway.checks``). A settlement retried after a failure whose
outcome is unknown (``settle(..., retry=True)``) charges only if the row is still there: gone
means the first attempt committed, since no sweeper can have taken a live reservation.

Usage records and rollups are not counters the quota depends on: they are written in batches
(``write_batch``) by ``gateway.serving.recorder``. The ``DailyUsage`` counter is never batched.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from dataclasses import dataclass

from django.conf import settings
from django.db import connection


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


@dataclass(slots=True)
class Reserved:
    reservation_id: int
    user_id: int
    day: dt.date
    tokens: int
    input_tokens: int
    output_budget: int


@dataclass(slots=True)
class Refused:
    # "auth": the key or account changed since it was cached; "quota": nothing left today.
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


def reservation_grant(
    *, quota: int, total: int, input_tokens: int, max_output_tokens: int
) -> int | None:
    """Tokens to reserve for a request (its input plus as much of ``max_output_tokens`` as
    fits), or None when not even one output token fits. Mirrored by ``_RESERVE_SQL``."""
    room = quota - total - input_tokens
    if room < 1:
        return None
    return input_tokens + min(max_output_tokens, room)


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
        self, *, key_id: int, digest: str, day: dt.date, input_tokens: int, max_output_tokens: int
    ) -> Reserved | Refused:
        raise NotImplementedError

    async def settle(
        self, *, reserved: Reserved, input_tokens: int, output_tokens: int, retry: bool = False
    ) -> None:
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
