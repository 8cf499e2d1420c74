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
from usage.ledger.postgres import _Batcher
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


def _failing_once(ledger, failure):
    """Make the first batched statement of ``ledger`` fail with ``failure`` before it runs;
    returns the list of statements sent, each noted as ``many`` (a batch) or not (alone)."""
    sent = []
    query = ledger._query

    async def failing(sql, args, *, many):
        sent.append(many)
        if many and sent.count(True) == 1:
            raise failure
        return await query(sql, args, many=many)

    ledger._query = failing
    return sent


def test_a_settle_that_left_its_failed_batch_and_retried_is_not_charged_twice(ledger):
    """A settle caller times out while its batch is in flight, and the pipeline retries it
    alone (retry=True). The batch then fails on another row's error: its fallback must not
    run the call that left (with the unconditional _SETTLE_SQL), and the retry, which waits
    for the batch to be over, charges it once."""
    user, key, secret = _account("twice@example.com", quota=10**9)
    _open_the_day(ledger, key, secret)
    first = ledger.run(_call(ledger, key, secret, 10, 10))
    mine = ledger.run(_call(ledger, key, secret, 10, 10))
    other = ledger.run(_call(ledger, key, secret, 10, 10))
    before = DailyUsage.objects.get(user=user, day=quota_day())

    async def scenario():
        permits, ungate = _gated(ledger)
        alone = asyncio.ensure_future(
            ledger.settle(reserved=first, input_tokens=1, output_tokens=1)
        )
        gone = asyncio.ensure_future(ledger.settle(reserved=mine, input_tokens=5, output_tokens=5))
        # Numbers the database refuses: the batch fails as a whole and falls back.
        bad = asyncio.ensure_future(
            ledger.settle(reserved=other, input_tokens=2**63 - 1, output_tokens=2**63 - 1)
        )
        await asyncio.sleep(0)
        permits.release()  # the lone settle
        await alone
        await asyncio.sleep(0)  # the batch (mine, other) is now waiting for its permit
        gone.cancel()  # its caller's timeout fired while the batch was in flight
        await asyncio.sleep(0)
        # What _settle_until_done does next: retry alone, charging only if still reserved.
        retry = asyncio.ensure_future(
            ledger.settle(reserved=mine, input_tokens=5, output_tokens=5, retry=True)
        )
        await asyncio.sleep(0)
        permits.release()  # the batch: fails, falls back to one statement per call
        await asyncio.sleep(0.2)
        ungate()
        for _ in range(3):
            permits.release()
        await retry
        with pytest.raises(asyncpg.NumericValueOutOfRangeError):
            await bad
        await asyncio.sleep(0.2)

    ledger.run(scenario())
    counter = DailyUsage.objects.get(user=user, day=quota_day())
    assert not Reservation.objects.filter(pk=mine.reservation_id).exists()
    # first charged 2, mine charged 10 once: requests +2.
    assert counter.used_tokens - before.used_tokens == 2 + 10
    assert counter.requests - before.requests == 2
    assert counter.reserved_tokens == other.tokens


def test_a_retry_does_not_run_before_the_batch_its_caller_left(ledger):
    """The batch a settle caller left has not reached the database yet (it waits for a
    connection) when the caller's retry is sent: the retry must wait for it, or the batch's
    unconditional charge would come on top of the retry's."""
    user, key, secret = _account("overtaken@example.com", quota=10**9)
    _open_the_day(ledger, key, secret)
    first, mine, other = (ledger.run(_call(ledger, key, secret, 10, 10)) for _ in range(3))
    before = DailyUsage.objects.get(user=user, day=quota_day())

    async def scenario():
        # Only the batched statements wait (for a connection, as it were).
        permits = asyncio.Semaphore(0)
        query = ledger._query

        async def held(sql, args, *, many):
            if many:
                await permits.acquire()
            return await query(sql, args, many=many)

        ledger._query = held
        settles = [
            asyncio.ensure_future(ledger.settle(reserved=r, input_tokens=n, output_tokens=n))
            for r, n in ((first, 1), (mine, 5), (other, 3))
        ]
        await settles[0]
        await asyncio.sleep(0)  # the batch (mine, other) is waiting
        settles[1].cancel()
        await asyncio.sleep(0)
        retry = asyncio.ensure_future(
            ledger.settle(reserved=mine, input_tokens=5, output_tokens=5, retry=True)
        )
        await asyncio.sleep(0.2)  # time enough for a retry that does not wait to be done
        permits.release()
        await retry
        await settles[2]

    ledger.run(scenario())
    counter = DailyUsage.objects.get(user=user, day=quota_day())
    assert counter.used_tokens - before.used_tokens == 2 + 10 + 6
    assert counter.requests - before.requests == 3
    assert (counter.reserved_tokens, Reservation.objects.count()) == (0, 0)


def test_reservations_made_by_a_fallback_are_released_when_every_caller_leaves(ledger):
    """A batch of reservations fails (one bad row) and falls back to one statement per call,
    in the batch task. A caller leaves while its own statement of the fallback is in flight,
    then the last one leaves and the task is cancelled: the reservation the fallback committed
    for the first is released at once, not left to the sweeper."""
    user, key, secret = _account("fallback@example.com", quota=10**9)
    _open_the_day(ledger, key, secret)

    async def scenario():
        permits, ungate = _gated(ledger)
        alone = asyncio.ensure_future(_call(ledger, key, secret, 1, 1))
        good = asyncio.ensure_future(_call(ledger, key, secret, 10, 10))
        bad = asyncio.ensure_future(_call(ledger, key, secret, -(2**63), 1))
        await asyncio.sleep(0)
        permits.release()  # the lone call
        kept = await alone
        permits.release()  # the batch: fails as a whole
        await asyncio.sleep(0.2)
        good.cancel()  # its caller leaves while the fallback's statement for it waits
        await asyncio.sleep(0)
        permits.release()  # that statement: committed
        await asyncio.sleep(0.2)
        bad.cancel()  # the last caller leaves while the fallback waits on its statement
        await asyncio.sleep(0)
        ungate()
        permits.release()
        permits.release()
        await asyncio.sleep(0.3)
        return kept

    kept = ledger.run(scenario())
    assert {r.pk for r in Reservation.objects.all()} == {kept.reservation_id}
    counter = DailyUsage.objects.get(user=user, day=quota_day())
    assert counter.reserved_tokens == kept.tokens


def test_a_deadlocked_batch_goes_again_whole(ledger):
    user, key, secret = _account("deadlock@example.com", quota=10**9)
    _open_the_day(ledger, key, secret)
    sent = _failing_once(ledger, asyncpg.DeadlockDetectedError("deadlock detected"))
    outcomes = ledger.run(_together(*(_call(ledger, key, secret, n, n) for n in (1, 2, 3, 4))))
    # The first alone, the batch twice (not one statement per call after the deadlock).
    assert sent == [False, True, True]
    assert [r.tokens for r in outcomes] == [2, 4, 6, 8]
    counter = DailyUsage.objects.get(user=user, day=quota_day())
    assert counter.reserved_tokens == 20 == sum(r.tokens for r in Reservation.objects.all())


def test_a_batch_that_times_out_fails_for_every_caller(ledger):
    _user, key, secret = _account("timeout@example.com", quota=10**9)
    _open_the_day(ledger, key, secret)
    sent = _failing_once(
        ledger, asyncpg.QueryCanceledError("canceling statement due to statement timeout")
    )
    outcomes = ledger.run(_together(*(_call(ledger, key, secret, n, n) for n in (1, 2, 3))))
    # Not a row's error: the calls are not run again alone, each caller gets the error.
    assert sent == [False, True]
    assert isinstance(outcomes[0], Reserved)
    assert all(isinstance(o, asyncpg.QueryCanceledError) for o in outcomes[1:])
    assert {r.pk for r in Reservation.objects.all()} == {outcomes[0].reservation_id}


@pytest.mark.parametrize("capped", [False, True])
def test_a_reservation_twice_in_one_settle_batch_is_released_once(ledger, capped):
    """As one after the other: the first settlement releases the reservation, the second
    finds it gone and only charges."""
    user, key, secret = _account(f"twice-in-a-batch-{capped}@example.com", quota=10**9)
    if capped:
        key_services.api_key_set_controls(api_key=key, daily_token_cap=10**9)
    _open_the_day(ledger, key, secret)
    held, first, twice = (ledger.run(_call(ledger, key, secret, n, n)) for n in (50, 1, 2))
    before = DailyUsage.objects.get(user=user, day=quota_day())
    settled = ledger.run(
        _together(
            ledger.settle(reserved=first, input_tokens=1, output_tokens=1),
            ledger.settle(reserved=twice, input_tokens=2, output_tokens=2),
            ledger.settle(reserved=twice, input_tokens=3, output_tokens=3),
        )
    )
    used = before.used_tokens
    assert [s.used for s in settled] == [used + 2, used + 6, used + 12]
    counter = DailyUsage.objects.get(user=user, day=quota_day())
    assert (counter.used_tokens, counter.requests) == (used + 12, before.requests + 3)
    assert counter.reserved_tokens == held.tokens
    assert {r.pk for r in Reservation.objects.all()} == {held.reservation_id}
    if capped:
        key_counter = KeyDailyUsage.objects.get(api_key=key, day=quota_day())
        assert key_counter.reserved_tokens == held.tokens
        assert [s.key_used for s in settled] == [key_counter.used_tokens - n for n in (10, 6, 0)]


def test_a_batch_cancelled_before_it_starts_does_not_stop_the_batcher():
    """The lone statement returns in the same loop turn as the one queued caller's timeout
    fires: the batch task made for it is cancelled before its first step. Later calls must
    still run."""

    async def scenario():
        lone_answer = asyncio.get_running_loop().create_future()

        async def one(n):
            return await lone_answer if n == 1 else n

        async def many(calls):
            return [n for (n,) in calls]

        batcher = _Batcher(one, many)
        lone = asyncio.ensure_future(batcher.call(1))
        await asyncio.sleep(0)
        queued = asyncio.ensure_future(batcher.call(2))
        await asyncio.sleep(0)
        lone_answer.set_result(1)
        queued.cancel()
        await lone
        await asyncio.sleep(0.01)
        return await asyncio.wait_for(batcher.call(3), 1)

    assert asyncio.run(scenario()) == 3
