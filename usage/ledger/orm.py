"""The ledger through the ORM (SQLite, the embedded default): the same operations as
``usage.ledger.postgres``, each in one transaction in a worker thread."""

from __future__ import annotations

import datetime as dt

from asgiref.sync import sync_to_async
from django.conf import settings
from django.db import connection, transaction
from django.db.models import F, Sum

from keys.models import ApiKey
from usage.ledger import (
    KeyRow,
    Ledger,
    RecordRow,
    Refused,
    Reserved,
    Settled,
    refusal_for,
    reservation_grant,
    rollup_rows,
)
from usage.models import DailyRollup, DailyUsage, KeyDailyUsage, Reservation, UsageRecord
from usage.quota import effective_quota


def _key_counter_for_update(key_id: int, day: dt.date) -> KeyDailyUsage:
    """The key's cap counter for ``day``, locked; created on the day's first capped
    reservation with what the key already spent that day (its rollups: a cap set mid-day)."""
    counter = KeyDailyUsage.objects.select_for_update().filter(api_key_id=key_id, day=day).first()
    if counter is not None:
        return counter
    spent = DailyRollup.objects.filter(api_key_id=key_id, day=day).aggregate(
        total=Sum(F("input_tokens") + F("output_tokens"))
    )["total"]
    counter, _created = KeyDailyUsage.objects.select_for_update().get_or_create(
        api_key_id=key_id, day=day, defaults={"used_tokens": spent or 0}
    )
    return counter


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
                    "daily_token_cap",
                    "allowed_models",
                    "expires_at",
                    "allowed_ips",
                    "max_concurrent_requests",
                    "controls_version",
                )
                .first()
            )
        if row is None:
            return None
        *head, models, expires_at, ips, concurrency, version = row
        return KeyRow(
            *head, tuple(models or ()), expires_at, tuple(ips or ()), concurrency, version
        )

    @sync_to_async
    def reserve(
        self,
        *,
        key_id: int,
        digest: str,
        day: dt.date,
        input_tokens: int,
        max_output_tokens: int,
        controls_version: int | None = None,
    ) -> Reserved | Refused:
        with self._counted(), transaction.atomic():
            owner = (
                ApiKey.objects.filter(
                    id=key_id, digest=digest, is_active=True, user__is_active=True
                )
                .values_list("user_id", "user__daily_quota", "daily_token_cap", "controls_version")
                .first()
            )
            if owner is None:
                return Refused("auth")
            user_id, daily_quota, cap, version = owner
            if controls_version is not None and version != controls_version:
                return Refused("controls")
            quota = effective_quota(daily_quota)
            # The key's counter first, then the account's: the order every writer locks them in.
            key_counter = None
            if cap is not None:
                key_counter = _key_counter_for_update(key_id, day)
            counter, _created = DailyUsage.objects.select_for_update().get_or_create(
                user_id=user_id, day=day
            )
            total = counter.input_tokens + counter.output_tokens + counter.reserved_tokens
            key_total = key_counter.used_tokens + key_counter.reserved_tokens if key_counter else 0
            tokens = reservation_grant(
                quota=quota,
                total=total,
                input_tokens=input_tokens,
                max_output_tokens=max_output_tokens,
                cap=cap,
                key_total=key_total,
            )
            if tokens is None:
                return refusal_for(
                    quota=quota,
                    total=total,
                    input_tokens=input_tokens,
                    cap=cap,
                    key_total=key_total,
                )
            if key_counter is not None:
                KeyDailyUsage.objects.filter(pk=key_counter.pk).update(
                    reserved_tokens=F("reserved_tokens") + tokens
                )
            DailyUsage.objects.filter(pk=counter.pk).update(
                reserved_tokens=F("reserved_tokens") + tokens
            )
            now = dt.datetime.now(dt.UTC)
            capped_key_id = key_id if cap is not None else None
            reservation = Reservation.objects.create(
                user_id=user_id,
                day=day,
                tokens=tokens,
                created_at=now,
                lease_until=now + dt.timedelta(seconds=settings.GATEWAY_RESERVATION_LEASE_SECONDS),
                capped_key_id=capped_key_id,
            )
        return Reserved(
            reservation.pk,
            user_id,
            day,
            tokens,
            input_tokens,
            tokens - input_tokens,
            capped_key_id,
            quota,
            cap,
        )

    @sync_to_async
    def settle(
        self, *, reserved: Reserved, input_tokens: int, output_tokens: int, retry: bool = False
    ) -> Settled | None:
        with self._counted(), transaction.atomic():
            deleted, _ = Reservation.objects.filter(pk=reserved.reservation_id).delete()
            if retry and not deleted:
                return None  # the attempt that failed had committed (see ``usage.ledger``)
            release = reserved.tokens if deleted else 0
            if reserved.capped_key_id is not None:
                KeyDailyUsage.objects.filter(
                    api_key_id=reserved.capped_key_id, day=reserved.day
                ).update(
                    reserved_tokens=F("reserved_tokens") - release,
                    used_tokens=F("used_tokens") + input_tokens + output_tokens,
                )
            DailyUsage.objects.filter(user_id=reserved.user_id, day=reserved.day).update(
                reserved_tokens=F("reserved_tokens") - release,
                input_tokens=F("input_tokens") + input_tokens,
                output_tokens=F("output_tokens") + output_tokens,
                requests=F("requests") + 1,
            )
            # Read back in the same transaction: the totals this settlement produced.
            used = (
                DailyUsage.objects.filter(user_id=reserved.user_id, day=reserved.day)
                .annotate(used=F("input_tokens") + F("output_tokens"))
                .values_list("used", flat=True)
                .first()
            )
            key_used = None
            if reserved.capped_key_id is not None:
                key_used = (
                    KeyDailyUsage.objects.filter(
                        api_key_id=reserved.capped_key_id, day=reserved.day
                    )
                    .values_list("used_tokens", flat=True)
                    .first()
                )
        return None if used is None else Settled(used, key_used)

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
                        playground=r.playground,
                        cached_input_tokens=r.cached_input_tokens,
                        upstream_endpoint_id=r.upstream_endpoint_id,
                    )
                    for r in records
                ]
            )
            for user_id, key_name, model, day, key_id, n, errors, inp, out, cached in sorted(
                rollup_rows(records)
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
                    cached_input_tokens=F("cached_input_tokens") + cached,
                )
            for key_id, when in last_used.items():
                ApiKey.objects.filter(pk=key_id).exclude(last_used_at__gte=when).update(
                    last_used_at=when
                )
