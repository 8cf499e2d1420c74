"""Natural batching in the PostgreSQL ledger (``usage.ledger.postgres._Batcher``): calls that
arrive while a statement is in flight go together in the next one, and each must get what it
would have got alone, in arrival order."""

import asyncio

import asyncpg
import pytest
from django.db import connection

from accounts.models import User
from accounts.services import account_create_with_key
from keys import services as key_services
from keys.crypto import key_digest
from keys.models import ApiKey
from usage.ledger import Refused, Reserved, Settled, refusal_for, reservation_grant
from usage.models import DailyUsage, KeyDailyUsage, Reservation
from usage.quota import quota_day

pytestmark = pytest.mark.skipif(
    connection.vendor != "postgresql", reason="batching is the PostgreSQL ledger's"
)


def _account(email, *, quota):
    user, secret = account_create_with_key(email=email)
    User.objects.filter(pk=user.pk).update(daily_quota=quota)
    return user, ApiKey.objects.get(user=user), secret


def _call(ledger, key, secret, input_tokens, max_output, **extra):
    return ledger.reserve(
        key_id=key.pk,
        digest=key_digest(secret),
        day=quota_day(),
        input_tokens=input_tokens,
        max_output_tokens=max_output,
        **extra,
    )


def _open_the_day(ledger, key, secret):
    """A first reservation, settled, so that the day's counter exists (its creation is a
    statement of its own, which would split the batches the tests build)."""
    reserved = ledger.run(_call(ledger, key, secret, 1, 1))
    ledger.run(ledger.settle(reserved=reserved, input_tokens=1, output_tokens=1))


async def _together(*calls):
    """Start every call in this order before any of them runs, as requests arriving while a
    statement is in flight do; the first goes alone, the others wait for it and go together."""
    tasks = [asyncio.ensure_future(call) for call in calls]
    return await asyncio.gather(*tasks, return_exceptions=True)


def _gated(ledger):
    """Hold each statement of ``ledger`` until the test releases the returned semaphore once
    for it; returns it and a function that lets statements through freely again."""
    permits = asyncio.Semaphore(0)
    query = ledger._query

    async def held(sql, args, *, many):
        await permits.acquire()
        return await query(sql, args, many=many)

    def ungate():
        ledger._query = query

    ledger._query = held
    return permits, ungate


def test_a_batch_of_one_account_grants_what_one_after_the_other_would(ledger):
    user, key, secret = _account("one@example.com", quota=10_000)
    _open_the_day(ledger, key, secret)
    # (input, max output): some fit whole, one is cut to what is left, one too big for what
    # remains is refused while a smaller one after it still fits.
    asks = [(100, 1_000)] * 6 + [(3_000, 2_000), (500, 400), (50, 20), (10, 5), (1, 1)]
    trips = ledger.round_trips
    outcomes = ledger.run(_together(*(_call(ledger, key, secret, i, o) for i, o in asks)))
    assert ledger.round_trips - trips == 2  # the first alone, the rest in one statement

    total = 2
    for (input_tokens, max_output), outcome in zip(asks, outcomes, strict=True):
        grant = reservation_grant(
            quota=10_000, total=total, input_tokens=input_tokens, max_output_tokens=max_output
        )
        if grant is None:
            assert outcome == refusal_for(quota=10_000, total=total, input_tokens=input_tokens)
            continue
        assert isinstance(outcome, Reserved)
        assert (outcome.tokens, outcome.output_budget) == (grant, grant - input_tokens)
        total += grant
    assert any(isinstance(outcome, Refused) for outcome in outcomes[:-1])
    counter = DailyUsage.objects.get(user=user, day=quota_day())
    assert counter.used_tokens + counter.reserved_tokens == total <= 10_000
    assert counter.reserved_tokens == sum(r.tokens for r in Reservation.objects.all())


def test_batches_in_flight_together_never_spend_past_the_quota(ledger):
    user, key, secret = _account("race@example.com", quota=50_000)
    _open_the_day(ledger, key, secret)

    async def client():
        held, refused = [], 0
        for _ in range(10):
            outcome = await _call(ledger, key, secret, 300, 700)
            if isinstance(outcome, Reserved):
                held.append(outcome)
            else:
                refused += 1
        settled = held[::2]
        for reserved in settled:
            await ledger.settle(reserved=reserved, input_tokens=300, output_tokens=200)
        return held, settled, refused

    trips = ledger.round_trips
    clients = ledger.run(_together(*(client() for _ in range(20))))
    held = [r for kept, _settled, _refused in clients for r in kept]
    settled = {r.reservation_id for _held, done, _refused in clients for r in done}
    assert ledger.round_trips - trips < len(held) + len(settled)  # fewer statements than calls
    assert sum(refused for _held, _settled, refused in clients) > 0  # the quota was reached
    counter = DailyUsage.objects.get(user=user, day=quota_day())
    assert counter.used_tokens + counter.reserved_tokens <= 50_000
    assert (counter.used_tokens, counter.requests) == (2 + 500 * len(settled), 1 + len(settled))
    assert len({r.reservation_id for r in held}) == len(held)
    left = {r.reservation_id: r.tokens for r in held if r.reservation_id not in settled}
    assert dict(Reservation.objects.values_list("pk", "tokens")) == left
    assert counter.reserved_tokens == sum(left.values())


def test_each_caller_gets_its_own_row_back(ledger):
    alice, alice_key, alice_secret = _account("alice@example.com", quota=10**9)
    bob, bob_key, bob_secret = _account("bob@example.com", quota=10**9)
    _open_the_day(ledger, alice_key, alice_secret)
    _open_the_day(ledger, bob_key, bob_secret)
    key_services.api_key_set_controls(api_key=bob_key, allowed_models=["m"])  # a new version
    calls = [
        _call(ledger, alice_key, alice_secret, 10, 1),
        _call(ledger, alice_key, alice_secret, 20, 2),
        _call(ledger, bob_key, bob_secret, 30, 3),
        _call(ledger, alice_key, "wrong secret", 40, 4),
        _call(ledger, bob_key, bob_secret, 50, 5, controls_version=0),
        _call(ledger, alice_key, alice_secret, 60, 6),
    ]
    first, second, third, wrong, stale, last = ledger.run(_together(*calls))
    assert (wrong, stale) == (Refused("auth"), Refused("controls"))
    for reserved, user, tokens in ((first, alice, 11), (second, alice, 22), (third, bob, 33)):
        assert (reserved.user_id, reserved.tokens) == (user.pk, tokens)
        row = Reservation.objects.get(pk=reserved.reservation_id)
        assert (row.user_id, row.tokens) == (user.pk, tokens)
    assert (last.user_id, last.tokens) == (alice.pk, 66)

    # Settled together: each sees the account's total right after its own charge.
    settled = ledger.run(
        _together(
            *(
                ledger.settle(reserved=r, input_tokens=r.input_tokens, output_tokens=1)
                for r in (first, second, third, last)
            )
        )
    )
    assert settled == [Settled(2 + 11), Settled(2 + 11 + 21), Settled(2 + 31), Settled(2 + 93)]
    assert not Reservation.objects.exists()
    for user, used, requests in ((alice, 95, 4), (bob, 33, 2)):
        counter = DailyUsage.objects.get(user=user, day=quota_day())
        assert (counter.used_tokens, counter.reserved_tokens, counter.requests) == (
            used,
            0,
            requests,
        )


def test_a_failing_call_fails_alone(ledger):
    user, key, secret = _account("bad@example.com", quota=10**9)
    _open_the_day(ledger, key, secret)
    # Numbers that overflow the statement's arithmetic: the database refuses it.
    too_big, too_small = 2**63 - 1, -(2**63)
    outcomes = ledger.run(
        _together(
            _call(ledger, key, secret, 10, 10),
            _call(ledger, key, secret, 20, 20),
            _call(ledger, key, secret, too_small, 1),
            _call(ledger, key, secret, 30, 30),
        )
    )
    assert isinstance(outcomes[2], asyncpg.NumericValueOutOfRangeError)
    kept = [outcomes[0], outcomes[1], outcomes[3]]
    assert [r.tokens for r in kept] == [20, 40, 60]

    settled = ledger.run(
        _together(
            *(
                ledger.settle(reserved=r, input_tokens=n, output_tokens=n)
                for r, n in zip(kept[:2] + kept[1:], [1, 2, too_big, 3], strict=True)
            )
        )
    )
    assert isinstance(settled[2], asyncpg.NumericValueOutOfRangeError)
    assert [s.used for s in (settled[0], settled[1], settled[3])] == [4, 8, 14]
    counter = DailyUsage.objects.get(user=user, day=quota_day())
    assert (counter.used_tokens, counter.reserved_tokens, counter.requests) == (14, 0, 4)
    assert not Reservation.objects.exists()


def test_a_caller_that_leaves_keeps_no_reservation(ledger):
    user, key, secret = _account("leaves@example.com", quota=10**9)
    _open_the_day(ledger, key, secret)

    async def scenario():
        permits, ungate = _gated(ledger)
        trips = ledger.round_trips
        alone = asyncio.ensure_future(_call(ledger, key, secret, 1, 1))
        queued = [asyncio.ensure_future(_call(ledger, key, secret, n, n)) for n in (2, 3, 4)]
        await asyncio.sleep(0)
        # Gone while waiting for the statement in flight: never sent.
        queued[0].cancel()
        permits.release()
        await alone
        # The two others now go together; one of them is gone while their statement runs.
        queued[1].cancel()
        await asyncio.sleep(0)
        ungate()
        permits.release()
        kept = await queued[2]
        with pytest.raises(asyncio.CancelledError):
            await queued[1]
        # Its reservation is given back at once (a statement of its own), not left to the
        # sweeper.
        for _ in range(100):
            if ledger.round_trips - trips == 3:
                break
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.05)
        return alone.result(), kept, ledger.round_trips - trips

    alone, kept, trips = ledger.run(scenario())
    assert trips == 3  # alone, the two together, the release
    assert {r.pk for r in Reservation.objects.all()} == {
        alone.reservation_id,
        kept.reservation_id,
    }
    counter = DailyUsage.objects.get(user=user, day=quota_day())
    assert counter.reserved_tokens == alone.tokens + kept.tokens == 2 + 8
    assert counter.requests == 1


def test_a_batch_on_capped_keys_grants_what_one_after_the_other_would(ledger):
    user, first_key, first_secret = _account("caps@example.com", quota=7_000)
    second_key, second_secret = key_services.api_key_create(
        user=user, name="second", key_controls={"daily_token_cap": 5_000}
    )
    key_services.api_key_set_controls(api_key=first_key, daily_token_cap=3_000)
    first_key.refresh_from_db()
    keys = {
        first_key.pk: (first_key, first_secret, 3_000),
        second_key.pk: (second_key, second_secret, 5_000),
    }
    _open_the_day(ledger, first_key, first_secret)
    _open_the_day(ledger, second_key, second_secret)
    # The first key's cap runs out (a row cut to it, then a refusal by the key while the
    # account still has room), then the account's quota (a row cut to it, then refusals).
    one, two = first_key.pk, second_key.pk
    asks = [(one, 500, 1_000), (one, 500, 1_000), (two, 100, 2_000), (one, 500, 1_000)]
    asks += [(two, 100, 2_000), (two, 100, 2_000), (one, 10, 10), (two, 10, 5)]
    trips = ledger.round_trips
    outcomes = ledger.run(
        _together(*(_call(ledger, keys[k][0], keys[k][1], i, o) for k, i, o in asks))
    )
    assert ledger.round_trips - trips == 2

    total, key_totals = 4, {first_key.pk: 2, second_key.pk: 2}
    for (key_id, input_tokens, max_output), outcome in zip(asks, outcomes, strict=True):
        rules = {
            "quota": 7_000,
            "total": total,
            "input_tokens": input_tokens,
            "cap": keys[key_id][2],
            "key_total": key_totals[key_id],
        }
        grant = reservation_grant(**rules, max_output_tokens=max_output)
        if grant is None:
            assert outcome == refusal_for(**rules)
            continue
        assert (outcome.tokens, outcome.capped_key_id, outcome.key_cap) == (
            grant,
            key_id,
            keys[key_id][2],
        )
        total += grant
        key_totals[key_id] += grant
    assert [o.reason for o in outcomes if isinstance(o, Refused)] == ["key_quota"] + ["quota"] * 3
    for key_id, (_key, _secret, cap) in keys.items():
        counter = KeyDailyUsage.objects.get(api_key_id=key_id, day=quota_day())
        assert counter.used_tokens + counter.reserved_tokens == key_totals[key_id] <= cap
    counter = DailyUsage.objects.get(user=user, day=quota_day())
    assert counter.used_tokens + counter.reserved_tokens == total == 7_000

    held = [o for o in outcomes if isinstance(o, Reserved)]
    settled = ledger.run(
        _together(*(ledger.settle(reserved=r, input_tokens=1, output_tokens=1) for r in held))
    )
    used, key_used = 4, dict.fromkeys(keys, 2)
    for reserved, outcome in zip(held, settled, strict=True):
        used += 2
        key_used[reserved.capped_key_id] += 2
        assert outcome == Settled(used, key_used[reserved.capped_key_id])
    assert not Reservation.objects.exists()
    for key_id, spent in key_used.items():
        counter = KeyDailyUsage.objects.get(api_key_id=key_id, day=quota_day())
        assert (counter.used_tokens, counter.reserved_tokens) == (spent, 0)


def test_a_key_that_lost_its_cap_is_granted_from_a_capped_batch(ledger):
    user, key, secret = _account("uncapped@example.com", quota=10**9)
    key_services.api_key_set_controls(api_key=key, daily_token_cap=10_000)
    _open_the_day(ledger, key, secret)  # this process now reserves the key as a capped one
    key_services.api_key_set_controls(api_key=key, daily_token_cap=None)
    outcomes = ledger.run(_together(*(_call(ledger, key, secret, 10, n) for n in (1, 2, 3))))
    # The first went alone; the two queued behind it went as a capped batch, which grants a
    # key without a cap nothing, and then again as a lean one.
    assert [(r.tokens, r.capped_key_id, r.key_cap) for r in outcomes] == [
        (11, None, None),
        (12, None, None),
        (13, None, None),
    ]
    assert dict(Reservation.objects.values_list("pk", "capped_key_id")) == {
        r.reservation_id: None for r in outcomes
    }
    assert DailyUsage.objects.get(user=user, day=quota_day()).reserved_tokens == 36
    assert KeyDailyUsage.objects.get(api_key=key, day=quota_day()).reserved_tokens == 0
