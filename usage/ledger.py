# ruff: noqa: S608 - SQL is built from model table names only; values are always bound
"""The hot-path write side of quota and usage: reserve, settle, and batched records.

Two implementations behind one small interface, chosen by the database engine:

* ``PgLedger`` speaks to PostgreSQL directly through asyncpg (measured here: about 0.09 ms
  CPU per statement, against 0.2 for psycopg's async connection and 0.26 through its pool). A
  connection is borrowed for one statement and given back, never held across an upstream
  call. Reserving is one statement (a CTE) that re-checks the key's digest and the key and
  account flags, reads the account's effective quota, locks today's counter row, caps the
  output budget to what remains and inserts the ``Reservation`` row. Settling is one
  statement.
* ``OrmLedger`` does the same through the ORM in a thread (SQLite, the embedded default).

The invariant shared with the stale-reservation sweeper (``usage.services``): a
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
(``write_batch``) by ``gateway.recorder``. The ``DailyUsage`` counter is never batched.
"""

from __future__ import annotations

import asyncio
import collections
import datetime as dt
import uuid
from collections.abc import Iterable
from dataclasses import dataclass

import asyncpg
from asgiref.sync import sync_to_async
from django.conf import settings
from django.db import connection, transaction
from django.db.models import F

from accounts.models import User
from keys.models import ApiKey
from usage.models import DailyRollup, DailyUsage, Reservation, UsageRecord


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


def _grant(*, quota: int, total: int, input_tokens: int, max_output_tokens: int) -> int | None:
    """Tokens to reserve, or None when not even one output token fits."""
    room = quota - total - input_tokens
    if room < 1:
        return None
    return input_tokens + min(max_output_tokens, room)


def _rollup_rows(records: Iterable[RecordRow]) -> list[tuple]:
    slots: dict[tuple, list] = {}
    for r in records:
        slot = (r.user_id, r.key_name, r.model, r.day)
        acc = slots.get(slot)
        if acc is None:
            acc = slots[slot] = [r.api_key_id, 0, 0, 0, 0]
        acc[0] = r.api_key_id or acc[0]
        acc[1] += 1
        acc[2] += 1 if r.status_code >= 400 else 0
        acc[3] += r.input_tokens
        acc[4] += r.output_tokens
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


# --- PostgreSQL -----------------------------------------------------------------------------
def _t(model) -> str:
    return model._meta.db_table


_FIND_KEY_SQL = f"""
SELECT k.id, k.user_id, k.name, k.digest, k.is_active, u.is_active,
       k.rate_limit_rpm, k.rate_limit_tpm
FROM {_t(ApiKey)} k JOIN {_t(User)} u ON u.id = k.user_id
WHERE k.prefix = $1
"""

# One statement: check the key and account, lock today's counter, cap, reserve, record the
# reservation. FOR UPDATE makes ``cur`` read the newest committed counter (after waiting for
# any concurrent reservation), so the grant is computed on what is really left.
# $1 default quota, $2 key id, $3 digest, $4 day, $5 input estimate, $6 max output, $7 lease (s).
_RESERVE_SQL = f"""
WITH auth AS (
    SELECT k.user_id, COALESCE(u.daily_quota, $1::bigint) AS quota
    FROM {_t(ApiKey)} k JOIN {_t(User)} u ON u.id = k.user_id
    WHERE k.id = $2 AND k.digest = $3 AND k.is_active AND u.is_active
), cur AS (
    SELECT du.id, du.input_tokens + du.output_tokens + du.reserved_tokens AS total, auth.quota
    FROM {_t(DailyUsage)} du JOIN auth ON du.user_id = auth.user_id
    WHERE du.day = $4
    FOR UPDATE OF du
), granted AS (
    SELECT id, $5::bigint + LEAST($6::bigint, quota - total - $5::bigint) AS tokens
    FROM cur WHERE quota - total - $5::bigint >= 1
), upd AS (
    UPDATE {_t(DailyUsage)} du
    SET reserved_tokens = du.reserved_tokens + g.tokens, updated_at = now()
    FROM granted g WHERE du.id = g.id
    RETURNING g.tokens
), res AS (
    INSERT INTO {_t(Reservation)} (user_id, day, tokens, created_at, lease_until)
    SELECT auth.user_id, $4, upd.tokens, now(), now() + make_interval(secs => $7::float8)
    FROM upd CROSS JOIN auth
    RETURNING id, tokens
)
SELECT auth.user_id, auth.quota, (SELECT total FROM cur), (SELECT id FROM res),
       (SELECT tokens FROM res)
FROM auth
"""

_ENSURE_DAY_SQL = f"""
INSERT INTO {_t(DailyUsage)}
    (user_id, day, input_tokens, output_tokens, reserved_tokens, requests, updated_at)
VALUES ($1, $2, 0, 0, 0, 0, now())
ON CONFLICT (user_id, day) DO NOTHING
"""

# $1 reservation id, $2 input, $3 output, $4 user id, $5 day.
_SETTLE_SQL = f"""
WITH del AS (DELETE FROM {_t(Reservation)} WHERE id = $1 RETURNING tokens)
UPDATE {_t(DailyUsage)}
SET reserved_tokens = reserved_tokens - COALESCE((SELECT tokens FROM del), 0),
    input_tokens = input_tokens + $2,
    output_tokens = output_tokens + $3,
    requests = requests + 1,
    updated_at = now()
WHERE user_id = $4 AND day = $5
"""

# A retry after a failure that may have committed: charge only while the row is still there.
_SETTLE_RETRY_SQL = f"""
WITH del AS (DELETE FROM {_t(Reservation)} WHERE id = $1 RETURNING tokens)
UPDATE {_t(DailyUsage)}
SET reserved_tokens = reserved_tokens - (SELECT tokens FROM del),
    input_tokens = input_tokens + $2,
    output_tokens = output_tokens + $3,
    requests = requests + 1,
    updated_at = now()
WHERE user_id = $4 AND day = $5 AND EXISTS (SELECT 1 FROM del)
"""

_RENEW_LEASES_SQL = f"""
UPDATE {_t(Reservation)} SET lease_until = now() + make_interval(secs => $2::float8)
WHERE id = ANY($1::bigint[])
"""

_INSERT_RECORD_SQL = f"""
INSERT INTO {_t(UsageRecord)} (public_id, user_id, api_key_id, key_name, model, endpoint, stream,
    input_tokens, output_tokens, estimated, status_code, error_code, latency_ms, first_token_ms,
    day, created_at)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16)
"""

_UPSERT_ROLLUP_SQL = f"""
INSERT INTO {_t(DailyRollup)} AS r (user_id, key_name, model, day, api_key_id, requests, errors,
    input_tokens, output_tokens)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
ON CONFLICT (user_id, key_name, model, day) DO UPDATE SET
    api_key_id = COALESCE(EXCLUDED.api_key_id, r.api_key_id),
    requests = r.requests + EXCLUDED.requests,
    errors = r.errors + EXCLUDED.errors,
    input_tokens = r.input_tokens + EXCLUDED.input_tokens,
    output_tokens = r.output_tokens + EXCLUDED.output_tokens
"""

_TOUCH_KEY_SQL = f"""
UPDATE {_t(ApiKey)} SET last_used_at = $1
WHERE id = $2 AND (last_used_at IS NULL OR last_used_at < $1)
"""


def pg_connect_args() -> dict:
    """asyncpg connection arguments for Django's default database (the test one under pytest)."""
    db = connection.settings_dict
    args = {"database": db["NAME"]}
    for ours, theirs in (("USER", "user"), ("PASSWORD", "password"), ("HOST", "host")):
        if db.get(ours):
            args[theirs] = db[ours]
    if db.get("PORT"):
        args["port"] = int(db["PORT"])
    options = db.get("OPTIONS") or {}
    if "connect_timeout" in options:
        args["timeout"] = float(options["connect_timeout"])
    if options.get("sslmode") in ("require", "verify-ca", "verify-full"):
        args["ssl"] = options["sslmode"]
    return args


class _Connections:
    """A minimal set of asyncpg connections: a free list and a queue of waiters.

    asyncpg's own pool resets every connection it takes back (a query per release); a
    statement here borrows a connection for one round trip, so a plain free list does.
    """

    def __init__(self, *, max_size: int):
        self.max_size = max_size
        self._free: list = []
        self._size = 0
        self._waiters: collections.deque[asyncio.Future] = collections.deque()
        self._args = pg_connect_args()

    async def acquire(self):
        while True:
            if self._free:
                conn = self._free.pop()
                if not conn.is_closed():
                    return conn
                # Lost while idle (the database restarted or the network cut it): drop it
                # rather than fail the request that drew it.
                self._size -= 1
                conn.terminate()
                continue
            if self._size < self.max_size:
                self._size += 1
                try:
                    return await asyncpg.connect(**self._args, statement_cache_size=256)
                except BaseException:
                    self._size -= 1
                    self._make_room()
                    raise
            waiter = asyncio.get_running_loop().create_future()
            self._waiters.append(waiter)
            try:
                conn = await waiter
            except asyncio.CancelledError:
                if waiter.done() and not waiter.cancelled() and waiter.result() is not None:
                    self.release(waiter.result())
                raise
            if conn is not None:
                return conn
            # A connection was dropped: there is room to open one now; go round again.

    def _make_room(self) -> None:
        # Wakes the waiters with None ("open one yourself"). Cancelling their futures instead
        # raised CancelledError in requests nobody had cancelled: a dropped connection for the
        # client instead of an answer.
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)

    def release(self, conn, *, broken: bool = False) -> None:
        if broken or conn.is_closed():
            self._size -= 1
            conn.terminate()
            self._make_room()
            return
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(conn)
                return
        self._free.append(conn)

    async def close(self) -> None:
        free, self._free = self._free, []
        for conn in free:
            await conn.close()
        self._size -= len(free)


class PgLedger(Ledger):
    def __init__(self, *, max_size: int = 10):
        self.max_size = max_size
        self.connections: _Connections | None = None
        self.round_trips = 0

    async def open(self) -> None:
        self.connections = _Connections(max_size=self.max_size)
        # Fail at start-up, not on the first request, when the database is unreachable.
        self.connections.release(await self.connections.acquire())

    async def close(self) -> None:
        if self.connections is not None:
            await self.connections.close()
            self.connections = None

    async def _fetchrow(self, sql: str, *args):
        self.round_trips += 1
        conn = await self.connections.acquire()
        try:
            row = await conn.fetchrow(sql, *args)
        except asyncpg.PostgresError:
            self.connections.release(conn)  # the statement failed; the connection is fine
            raise
        except BaseException:
            # Cancelled mid-statement or disconnected: the connection's state is unknown.
            self.connections.release(conn, broken=True)
            raise
        self.connections.release(conn)
        return row

    async def ping(self) -> None:
        await self._fetchrow("SELECT 1")

    async def find_key(self, prefix: str) -> KeyRow | None:
        row = await self._fetchrow(_FIND_KEY_SQL, prefix)
        return KeyRow(*row) if row else None

    async def reserve(
        self, *, key_id: int, digest: str, day: dt.date, input_tokens: int, max_output_tokens: int
    ) -> Reserved | Refused:
        args = (
            settings.DAILY_FREE_QUOTA,
            key_id,
            digest,
            day,
            input_tokens,
            max_output_tokens,
            float(settings.GATEWAY_RESERVATION_LEASE_SECONDS),
        )
        for _attempt in range(2):
            row = await self._fetchrow(_RESERVE_SQL, *args)
            if row is None:
                return Refused("auth")
            user_id, quota, total, reservation_id, tokens = row
            if total is None:
                # First request of the day for this account: create the counter, then retry.
                await self._fetchrow(_ENSURE_DAY_SQL, user_id, day)
                continue
            if reservation_id is None:
                return Refused("quota", quota=quota, used=total)
            return Reserved(
                reservation_id, user_id, day, tokens, input_tokens, tokens - input_tokens
            )
        raise RuntimeError("the daily counter row could not be created")

    async def settle(
        self, *, reserved: Reserved, input_tokens: int, output_tokens: int, retry: bool = False
    ) -> None:
        await self._fetchrow(
            _SETTLE_RETRY_SQL if retry else _SETTLE_SQL,
            reserved.reservation_id,
            input_tokens,
            output_tokens,
            reserved.user_id,
            reserved.day,
        )

    async def renew_leases(self, reservation_ids: list[int], seconds: float) -> None:
        if reservation_ids:
            await self._fetchrow(_RENEW_LEASES_SQL, reservation_ids, float(seconds))

    async def write_batch(
        self, records: list[RecordRow], last_used: dict[int, dt.datetime]
    ) -> None:
        if not records and not last_used:
            return
        self.round_trips += 1
        conn = await self.connections.acquire()
        broken = False
        try:
            async with conn.transaction():
                if records:
                    await conn.executemany(
                        _INSERT_RECORD_SQL,
                        [
                            (
                                uuid.uuid4(),
                                r.user_id,
                                r.api_key_id,
                                r.key_name,
                                r.model,
                                r.endpoint,
                                r.stream,
                                r.input_tokens,
                                r.output_tokens,
                                r.estimated,
                                r.status_code,
                                r.error_code,
                                r.latency_ms,
                                r.first_token_ms,
                                r.day,
                                r.created_at,
                            )
                            for r in records
                        ],
                    )
                    # Sorted so that concurrent writers lock rollup rows in the same order.
                    await conn.executemany(_UPSERT_ROLLUP_SQL, sorted(_rollup_rows(records)))
                if last_used:
                    await conn.executemany(
                        _TOUCH_KEY_SQL,
                        [(when, key_id) for key_id, when in sorted(last_used.items())],
                    )
        except asyncpg.PostgresError:
            raise
        except BaseException:
            broken = True
            raise
        finally:
            self.connections.release(conn, broken=broken)


# --- the ORM (SQLite) ---------------------------------------------------------------------
class _Counter:
    def __init__(self, ledger):
        self.ledger = ledger

    def __call__(self, execute, sql, params, many, context):
        self.ledger.round_trips += 1
        return execute(sql, params, many, context)


class OrmLedger(Ledger):
    """The same operations through the ORM; each runs in one transaction in a worker thread."""

    def __init__(self):
        self.round_trips = 0

    def _counted(self):
        return connection.execute_wrapper(_Counter(self))

    @sync_to_async
    def ping(self) -> None:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")

    @sync_to_async
    def find_key(self, prefix: str) -> KeyRow | None:
        with self._counted():
            row = (
                ApiKey.objects.filter(prefix=prefix)
                .values_list(
                    "id",
                    "user_id",
                    "name",
                    "digest",
                    "is_active",
                    "user__is_active",
                    "rate_limit_rpm",
                    "rate_limit_tpm",
                )
                .first()
            )
        return KeyRow(*row) if row else None

    @sync_to_async
    def reserve(
        self, *, key_id: int, digest: str, day: dt.date, input_tokens: int, max_output_tokens: int
    ) -> Reserved | Refused:
        with self._counted(), transaction.atomic():
            owner = (
                ApiKey.objects.filter(
                    id=key_id, digest=digest, is_active=True, user__is_active=True
                )
                .values_list("user_id", "user__daily_quota")
                .first()
            )
            if owner is None:
                return Refused("auth")
            user_id, override = owner
            quota = override if override is not None else settings.DAILY_FREE_QUOTA
            counter, _created = DailyUsage.objects.select_for_update().get_or_create(
                user_id=user_id, day=day
            )
            total = counter.input_tokens + counter.output_tokens + counter.reserved_tokens
            tokens = _grant(
                quota=quota,
                total=total,
                input_tokens=input_tokens,
                max_output_tokens=max_output_tokens,
            )
            if tokens is None:
                return Refused("quota", quota=quota, used=total)
            DailyUsage.objects.filter(pk=counter.pk).update(
                reserved_tokens=F("reserved_tokens") + tokens
            )
            now = dt.datetime.now(dt.UTC)
            reservation = Reservation.objects.create(
                user_id=user_id,
                day=day,
                tokens=tokens,
                created_at=now,
                lease_until=now + dt.timedelta(seconds=settings.GATEWAY_RESERVATION_LEASE_SECONDS),
            )
        return Reserved(reservation.pk, user_id, day, tokens, input_tokens, tokens - input_tokens)

    @sync_to_async
    def settle(
        self, *, reserved: Reserved, input_tokens: int, output_tokens: int, retry: bool = False
    ) -> None:
        with self._counted(), transaction.atomic():
            deleted, _ = Reservation.objects.filter(pk=reserved.reservation_id).delete()
            if retry and not deleted:
                return  # the attempt that failed had committed (see the module docstring)
            release = reserved.tokens if deleted else 0
            DailyUsage.objects.filter(user_id=reserved.user_id, day=reserved.day).update(
                reserved_tokens=F("reserved_tokens") - release,
                input_tokens=F("input_tokens") + input_tokens,
                output_tokens=F("output_tokens") + output_tokens,
                requests=F("requests") + 1,
            )

    @sync_to_async
    def renew_leases(self, reservation_ids: list[int], seconds: float) -> None:
        if not reservation_ids:
            return
        until = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=seconds)
        with self._counted():
            Reservation.objects.filter(pk__in=reservation_ids).update(lease_until=until)

    @sync_to_async
    def write_batch(self, records: list[RecordRow], last_used: dict[int, dt.datetime]) -> None:
        if not records and not last_used:
            return
        with self._counted(), transaction.atomic():
            UsageRecord.objects.bulk_create(
                [
                    UsageRecord(
                        user_id=r.user_id,
                        api_key_id=r.api_key_id,
                        key_name=r.key_name,
                        model=r.model,
                        endpoint=r.endpoint,
                        stream=r.stream,
                        input_tokens=r.input_tokens,
                        output_tokens=r.output_tokens,
                        estimated=r.estimated,
                        status_code=r.status_code,
                        error_code=r.error_code,
                        latency_ms=r.latency_ms,
                        first_token_ms=r.first_token_ms,
                        day=r.day,
                        created_at=r.created_at,
                    )
                    for r in records
                ]
            )
            for user_id, key_name, model, day, key_id, n, errors, inp, out in sorted(
                _rollup_rows(records)
            ):
                rollup, _ = DailyRollup.objects.get_or_create(
                    user_id=user_id,
                    key_name=key_name,
                    model=model,
                    day=day,
                    defaults={"api_key_id": key_id},
                )
                DailyRollup.objects.filter(pk=rollup.pk).update(
                    api_key_id=key_id or rollup.api_key_id,
                    requests=F("requests") + n,
                    errors=F("errors") + errors,
                    input_tokens=F("input_tokens") + inp,
                    output_tokens=F("output_tokens") + out,
                )
            for key_id, when in last_used.items():
                ApiKey.objects.filter(pk=key_id).exclude(last_used_at__gte=when).update(
                    last_used_at=when
                )


def ledger_for_database() -> Ledger:
    """The fast path on PostgreSQL, the ORM elsewhere."""
    if connection.vendor == "postgresql":
        return PgLedger(max_size=settings.GATEWAY_DB_POOL_SIZE)
    return OrmLedger()
