import datetime as dt

import pytest

from gateway.models import UpstreamEndpoint
from keys.models import ApiKey
from tests.gateway.harness import free_port
from usage.models import DailyRollup, DailyUsage, Reservation, UsageRecord

STREAM = {
    "model": "LongCat-Flash-Chat",
    "messages": [{"role": "user", "content": "Hello!"}],
    "max_tokens": 10,
    "stream": True,
}


def _counter(user):
    return DailyUsage.objects.get(user=user)


def test_it_writes_one_record_per_request_and_the_rollups(gw, alice_key):
    user, key = alice_key
    gw.chat(key)
    gw.chat(key, STREAM)
    gw.chat(key, {"model": "LongCat-Flash-Chat"})  # 400 after auth: recorded, not charged
    gw.chat(None)  # 401: nobody to record it for
    gw.flush()
    records = list(UsageRecord.objects.order_by("created_at"))
    assert [(r.status_code, r.stream, r.input_tokens, r.output_tokens) for r in records] == [
        (200, False, 6, 10),
        (200, True, 6, 10),
        (400, False, 0, 0),
    ]
    first = records[0]
    assert first.key_name == "default"
    assert first.api_key_id == ApiKey.objects.get(user=user).pk
    assert first.endpoint == "openai.chat"
    assert first.model == "LongCat-Flash-Chat"
    assert first.first_token_ms is not None
    assert records[2].error_code == "missing_required_parameter"
    rollups = {
        r.model: (r.requests, r.errors, r.input_tokens, r.output_tokens)
        for r in DailyRollup.objects.all()
    }
    # The request without a model is an error of its own slot.
    assert rollups == {"LongCat-Flash-Chat": (2, 0, 12, 20), "": (1, 1, 0, 0)}
    counter = _counter(user)
    assert counter.input_tokens + counter.output_tokens == sum(
        r.input_tokens + r.output_tokens for r in records
    )
    assert ApiKey.objects.get(user=user).last_used_at is not None


def test_it_writes_every_record_on_shutdown(gw, alice_key):
    for _ in range(5):
        gw.chat(alice_key[1])
    gw.run(gw.app.shutdown())
    assert UsageRecord.objects.count() == 5


def test_it_answers_502_and_charges_nothing_when_the_upstream_fails(gw, alice_key):
    user, key = alice_key
    result = gw.chat(key, headers={"x-demo-fault": "error500"})
    assert result.status == 502
    assert result.json()["error"]["code"] == "upstream_error"
    counter = _counter(user)
    assert (counter.input_tokens, counter.output_tokens, counter.reserved_tokens) == (0, 0, 0)
    gw.flush()
    assert UsageRecord.objects.get().status_code == 502


def test_it_answers_503_with_retry_after_when_the_upstream_is_overloaded(gw, alice_key):
    user, key = alice_key
    result = gw.chat(key, headers={"x-demo-fault": "overloaded"})
    assert result.status == 503
    assert result.json()["error"]["code"] == "upstream_overloaded"
    assert result.headers["retry-after"] == "5"
    assert "x-should-retry" not in result.headers  # worth retrying, unlike a bad key
    assert _counter(user).reserved_tokens == 0
    gw.flush()
    assert UsageRecord.objects.get().error_code == "upstream_overloaded"


def test_it_passes_an_upstream_refusal_on(gw, alice_key):
    result = gw.chat(alice_key[1], headers={"x-demo-fault": "error400"})
    assert result.status == 400
    assert "told to refuse" in result.json()["error"]["message"]


def test_it_answers_504_when_the_upstream_hangs(gw, alice_key, settings):
    settings.UPSTREAM_READ_TIMEOUT_SECONDS = 0.3
    result = gw.chat(alice_key[1], headers={"x-demo-fault": "hang"})
    assert result.status == 504
    assert result.json()["error"]["code"] == "upstream_timeout"
    assert not Reservation.objects.exists()


def test_it_answers_502_when_the_upstream_is_unreachable(gw, alice_key):
    UpstreamEndpoint.objects.update(
        kind="openai_compatible", base_url=f"http://127.0.0.1:{free_port()}/v1"
    )
    result = gw.chat(alice_key[1])
    assert result.status == 502
    assert not Reservation.objects.exists()


@pytest.mark.parametrize("stream", [False, True])
def test_it_charges_an_estimate_when_the_upstream_reports_no_usage(gw, alice_key, stream):
    user, key = alice_key
    payload = {**STREAM, "stream": stream}
    assert gw.chat(key, payload, headers={"x-demo-fault": "nousage"}).status == 200
    counter = _counter(user)
    assert counter.input_tokens == 3 + 4 + 3  # the gateway's estimate of the prompt
    assert counter.output_tokens > 0
    gw.flush()
    assert UsageRecord.objects.get().estimated is True


def test_it_ends_a_cut_stream_with_an_error_and_charges_what_was_delivered(gw, alice_key):
    user, key = alice_key
    result = gw.chat(key, STREAM, headers={"x-demo-fault": "cut"})
    assert result.status == 200  # the stream had started
    events = result.events()
    assert "[DONE]" not in events
    assert events[-1]["error"]["code"] == "upstream_error"
    delivered = "".join(
        e["choices"][0]["delta"].get("content", "") for e in events[:-1] if e.get("choices")
    )
    assert delivered == "This is the demo model"
    counter = _counter(user)
    assert counter.output_tokens > 0
    assert counter.reserved_tokens == 0
    gw.flush()
    record = UsageRecord.objects.get()
    assert (record.status_code, record.estimated) == (502, True)


def test_it_cancels_the_upstream_and_charges_delivered_tokens_when_the_client_leaves(gw, alice_key):
    user, key = alice_key
    result = gw.chat(
        key,
        {**STREAM, "max_tokens": 40},
        headers={"x-demo-delay-ms": "30"},
        disconnect_after_chunks=4,
    )
    assert result.status == 200
    counter = _counter(user)
    assert counter.reserved_tokens == 0
    assert 0 < counter.output_tokens < 40
    assert not Reservation.objects.exists()
    gw.flush()
    record = UsageRecord.objects.get()
    assert (record.status_code, record.error_code) == (499, "client_disconnected")
    assert record.output_tokens == counter.output_tokens


def test_it_needs_few_database_round_trips_per_request(gw, alice_key, settings):
    _user, key = alice_key
    gw.chat(key)  # warms the key cache and creates today's counter
    gw.flush()
    ledger, recorder = gw.gateway.ledger, gw.gateway.recorder
    trips, batches = ledger.round_trips, recorder.batches
    for _ in range(10):
        assert gw.chat(key).status == 200
        assert gw.chat(key, STREAM).status == 200
    gw.flush()
    batches = recorder.batches - batches
    per_request = (ledger.round_trips - trips - batches) / 20
    # Records are batched: far fewer writes than requests (the writer also flushes on a timer).
    assert 1 <= batches < 20
    if settings.DATABASES["default"]["ENGINE"].endswith("postgresql"):
        # Reserve (one statement that also re-checks the key) and settle (one statement).
        assert per_request == 2
    else:
        # The ORM path: a short transaction for each of reserve and settle.
        assert per_request <= 10


def test_it_counts_usage_in_the_day_the_request_was_reserved(gw, alice_key):
    gw.chat(alice_key[1])
    gw.flush()
    record = UsageRecord.objects.get()
    assert record.day == DailyUsage.objects.get().day
    assert isinstance(record.day, dt.date)


def test_it_keeps_writing_records_when_an_account_or_key_is_deleted(gw, alice_key, bob_key):
    from keys.services import api_key_create

    alice, alice_secret = alice_key
    bob, bob_secret = bob_key
    spare, spare_secret = api_key_create(user=alice, name="spare")
    gw.run(gw.app._started())
    gw.run(gw.gateway.recorder.stop())  # no timer: nothing is written until flush() below
    assert gw.chat(alice_secret).status == 200
    assert gw.chat(spare_secret).status == 200
    assert gw.chat(bob_secret).status == 200
    spare.delete()
    bob.delete()
    gw.flush()
    records = UsageRecord.objects.filter(user=alice)
    assert records.count() == 2
    assert sorted(records.values_list("key_name", "api_key")) == [
        ("default", ApiKey.objects.get(user=alice).pk),
        ("spare", None),
    ]
    assert gw.gateway.recorder._rows == []


# --- last used --------------------------------------------------------------------------
def _record(user, key_id, when):
    from usage.ledger import RecordRow

    return RecordRow(
        user_id=user.pk,
        api_key_id=key_id,
        key_name="default",
        model="LongCat-Flash-Chat",
        endpoint="openai.chat",
        stream=False,
        input_tokens=1,
        output_tokens=1,
        estimated=False,
        status_code=200,
        error_code="",
        latency_ms=1,
        first_token_ms=1,
        day=when.date(),
        created_at=when,
    )


def test_it_touches_last_used_once_per_interval_per_key(ledger, alice_key, monkeypatch):
    from gateway.serving import recorder as recorder_module

    user, _secret = alice_key
    key_id = ApiKey.objects.get(user=user).pk
    start = dt.datetime(2026, 11, 23, 8, 0, tzinfo=dt.UTC)
    clock = [1000.0]
    monkeypatch.setattr(recorder_module.time, "monotonic", lambda: clock[0])
    recorder = recorder_module.Recorder(ledger)

    for second in range(50):
        recorder.add(_record(user, key_id, start + dt.timedelta(seconds=second)))
    ledger.run(recorder.flush())
    # Fifty requests, one touch: the first one's time is what the batch wrote.
    assert ApiKey.objects.get(pk=key_id).last_used_at == start
    assert UsageRecord.objects.filter(api_key_id=key_id).count() == 50

    clock[0] += recorder_module.TOUCH_EVERY_SECONDS
    later = start + dt.timedelta(seconds=61)
    recorder.add(_record(user, key_id, later))
    ledger.run(recorder.flush())
    assert ApiKey.objects.get(pk=key_id).last_used_at == later


def test_it_never_moves_last_used_back(ledger, alice_key):
    # Another process may have written a newer time since this batch was gathered.
    user, _secret = alice_key
    key_id = ApiKey.objects.get(user=user).pk
    now = dt.datetime(2026, 11, 23, 8, 0, tzinfo=dt.UTC)
    ApiKey.objects.filter(pk=key_id).update(last_used_at=now)

    ledger.run(ledger.write_batch([], {key_id: now - dt.timedelta(seconds=10)}))
    assert ApiKey.objects.get(pk=key_id).last_used_at == now

    ledger.run(ledger.write_batch([], {key_id: now + dt.timedelta(seconds=10)}))
    assert ApiKey.objects.get(pk=key_id).last_used_at == now + dt.timedelta(seconds=10)


def test_it_marks_the_playground_s_requests_on_their_records(gw, alice_key):
    _user, key = alice_key
    gw.chat(key, headers={"x-playground": "1"})
    gw.chat(key, STREAM, headers={"x-playground": "1"})
    gw.chat(key, path="/anthropic/v1/messages", headers={"x-playground": "1"})
    gw.chat(key)
    gw.flush()
    marks = list(UsageRecord.objects.order_by("created_at").values_list("playground", flat=True))
    assert marks == [True, True, True, False]
