import datetime as dt

import pytest
from asgiref.sync import async_to_sync
from django.db.models import F
from django.utils import timezone

from usage.models import DailyRollup, DailyUsage, Reservation, UsageRecord
from usage.quota import quota_day


def record_request(
    user,
    *,
    input_tokens=100,
    output_tokens=50,
    model="LongCat-Flash-Chat",
    key=None,
    key_name=None,
    status_code=200,
    stream=False,
    when=None,
    rollup=True,
    cached_input_tokens=0,
):
    """What the gateway leaves behind for one settled request: record, counter, rollup.

    The tests drive usage through the ledger models directly so that the dashboard and the
    reset can be tested without the gateway process.
    """
    when = when or timezone.now()
    day = quota_day(when)
    key = key or user.api_keys.first()
    key_name = key_name or key.name
    record = UsageRecord.objects.create(
        user=user,
        api_key=key,
        key_name=key_name,
        model=model,
        endpoint=UsageRecord.Endpoint.OPENAI_CHAT,
        stream=stream,
        input_tokens=input_tokens,
        output_tokens=output_tokens,
        cached_input_tokens=cached_input_tokens,
        status_code=status_code,
        latency_ms=120,
        day=day,
        created_at=when,
    )
    counter, _ = DailyUsage.objects.get_or_create(user=user, day=day)
    DailyUsage.objects.filter(pk=counter.pk).update(
        input_tokens=F("input_tokens") + input_tokens,
        output_tokens=F("output_tokens") + output_tokens,
        requests=F("requests") + 1,
    )
    if rollup:
        slot, _ = DailyRollup.objects.get_or_create(
            user=user, key_name=key_name, model=model, day=day, defaults={"api_key": key}
        )
        DailyRollup.objects.filter(pk=slot.pk).update(
            requests=F("requests") + 1,
            errors=F("errors") + (1 if status_code >= 400 else 0),
            input_tokens=F("input_tokens") + input_tokens,
            output_tokens=F("output_tokens") + output_tokens,
            cached_input_tokens=F("cached_input_tokens") + cached_input_tokens,
        )
    return record


def streamed_body(response) -> bytes:
    """The body of a streaming response whose content is an async iterator (the CSV export:
    it must stream under ASGI); Django's test client hands it over unread."""

    async def read():
        return b"".join([chunk async for chunk in response.streaming_content])

    return async_to_sync(read)()


def reserve(user, tokens, *, when=None):
    """A reservation as the gateway makes it: the row and the counter move together."""
    when = when or timezone.now()
    day = quota_day(when)
    counter, _ = DailyUsage.objects.get_or_create(user=user, day=day)
    DailyUsage.objects.filter(pk=counter.pk).update(reserved_tokens=F("reserved_tokens") + tokens)
    return Reservation.objects.create(user=user, day=day, tokens=tokens, created_at=when)


@pytest.fixture
def beijing_midnight():
    """00:00:00 on 2026-03-02 in Beijing, as an aware UTC datetime."""
    return dt.datetime(2026, 3, 1, 16, 0, 0, tzinfo=dt.UTC)
