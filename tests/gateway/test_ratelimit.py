import asyncio
import contextlib
import uuid

import pytest
import time_machine

from gateway.serving.errors import GatewayError
from gateway.serving.ratelimit import RateLimiter
from keys.models import ApiKey

# 30 s into a minute, so that the window's reset is known.
MID_MINUTE = 1_800_000_030.0


@pytest.fixture(params=["local", "redis"])
def limiter(request, settings):
    if request.param == "redis" and not settings.REDIS_URL:
        pytest.skip("REDIS_URL is not set")
    limiter = (
        RateLimiter()
        if request.param == "local"
        else RateLimiter(redis_url=settings.REDIS_URL, prefix=f"test:{uuid.uuid4().hex}")
    )
    runner = asyncio.Runner()
    runner.run(limiter.open())
    limiter.run = runner.run
    yield limiter
    runner.run(limiter.close())
    runner.close()


def _check(limiter, *, rpm=3, tpm=1000, tokens=10, key_id=1):
    return limiter.run(limiter.check(key_id=key_id, rpm=rpm, tpm=tpm, tokens=tokens))


@time_machine.travel(MID_MINUTE, tick=False)
def test_it_refuses_the_request_beyond_the_rpm(limiter):
    states = [_check(limiter) for _ in range(3)]
    assert [s.remaining_requests for s in states] == [2, 1, 0]
    with pytest.raises(GatewayError) as refused:
        _check(limiter)
    error = refused.value
    assert (error.status, error.code, error.retry_after) == (429, "rate_limit_exceeded", 30)
    headers = dict(error.response_headers())
    assert headers[b"retry-after"] == b"30"
    assert headers[b"retry-after-ms"] == b"30000"
    assert headers[b"x-ratelimit-remaining-requests"] == b"0"
    # Another key has its own window.
    assert _check(limiter, key_id=2).remaining_requests == 2


@time_machine.travel(MID_MINUTE, tick=False)
def test_it_refuses_the_request_beyond_the_tpm(limiter):
    _check(limiter, rpm=100, tpm=100, tokens=60)
    with pytest.raises(GatewayError) as refused:
        _check(limiter, rpm=100, tpm=100, tokens=60)
    assert refused.value.code == "rate_limit_exceeded"
    assert "tokens" in refused.value.message


@time_machine.travel(MID_MINUTE, tick=False)
def test_it_applies_the_platform_limits_where_a_key_has_no_override(limiter, settings):
    settings.RATE_LIMIT_RPM, settings.RATE_LIMIT_TPM = 60, 5000
    state = _check(limiter, rpm=None, tpm=None)
    assert (state.limit_requests, state.limit_tokens) == (60, 5000)
    assert _check(limiter, rpm=5, tpm=None, key_id=2).limit_requests == 5


@time_machine.travel(MID_MINUTE, tick=False)
def test_it_counts_settled_output_tokens_at_the_next_check(limiter):
    _check(limiter, rpm=100, tpm=100, tokens=10)
    limiter.add_output(1, 85)
    with pytest.raises(GatewayError):
        _check(limiter, rpm=100, tpm=100, tokens=10)


@time_machine.travel(MID_MINUTE, tick=False)
def test_it_admits_one_large_request_into_an_empty_window(limiter):
    assert _check(limiter, rpm=100, tpm=100, tokens=500).remaining_tokens == 0


def test_it_starts_a_new_window_each_minute(limiter):
    with time_machine.travel(MID_MINUTE, tick=False):
        _check(limiter, rpm=1)
        with pytest.raises(GatewayError):
            _check(limiter, rpm=1)
    with time_machine.travel(MID_MINUTE + 31, tick=False):
        assert _check(limiter, rpm=1).remaining_requests == 0


def test_it_fails_open_when_redis_is_down(caplog):
    limiter = RateLimiter(redis_url="redis://127.0.0.1:1/0", prefix="test:down")
    runner = asyncio.Runner()
    try:
        runner.run(limiter.open())
        for _ in range(5):
            state = runner.run(limiter.check(key_id=1, rpm=1, tpm=10, tokens=5))
            assert state.remaining_requests == 1
        assert caplog.text.count("Redis unavailable") == 1
    finally:
        runner.run(limiter.close())
        runner.close()


# --- through the gateway -------------------------------------------------------------------
def test_it_answers_the_documented_429_body_and_headers(one_rate_window, gw, alice_key):
    user, key = alice_key
    ApiKey.objects.filter(user=user).update(rate_limit_rpm=2)
    for _ in range(2):
        ok = gw.chat(key)
        assert ok.status == 200
        assert ok.headers["x-ratelimit-limit-requests"] == "2"
    result = gw.chat(key)
    assert result.status == 429
    body = result.json()
    assert set(body) == {"error"}
    assert set(body["error"]) == {"code", "message", "type", "retry_after"}
    assert body["error"]["code"] == "rate_limit_exceeded"
    assert body["error"]["type"] == "rate_limit_error"
    assert 1 <= body["error"]["retry_after"] <= 60
    assert result.headers["retry-after"] == str(body["error"]["retry_after"])
    assert 0 < int(result.headers["retry-after-ms"]) <= 60_000
    assert result.headers["x-ratelimit-remaining-requests"] == "0"
    assert "x-should-retry" not in result.headers  # retrying later is the right thing


def test_it_sends_rate_limit_headers_on_success_and_streams(gw, alice_key):
    _user, key = alice_key
    for stream in (False, True):
        payload = {
            "model": "LongCat-Flash-Chat",
            "messages": [{"role": "user", "content": "Hello!"}],
            "max_tokens": 3,
            "stream": stream,
        }
        result = gw.chat(key, payload)
        for name in (
            "x-ratelimit-limit-requests",
            "x-ratelimit-remaining-requests",
            "x-ratelimit-reset-requests",
            "x-ratelimit-limit-tokens",
            "x-ratelimit-remaining-tokens",
            "x-ratelimit-reset-tokens",
        ):
            assert name in result.headers


def test_it_uses_the_per_key_token_override(gw, alice_key):
    user, key = alice_key
    ApiKey.objects.filter(user=user).update(rate_limit_tpm=12)
    assert gw.chat(key).headers["x-ratelimit-limit-tokens"] == "12"
    result = gw.chat(key)  # the window now holds 8 input + 10 output tokens
    assert result.status == 429


@pytest.fixture
def resp_client(settings):
    from gateway.serving.redis_wire import RespClient

    if not settings.REDIS_URL:
        pytest.skip("REDIS_URL is not set")
    runner = asyncio.Runner()
    client = RespClient(settings.REDIS_URL)
    client.run = runner.run
    yield client
    runner.run(client.close())
    runner.close()


def test_it_matches_concurrent_redis_replies_to_their_callers(resp_client):
    prefix = f"test:{uuid.uuid4().hex}"

    async def many():
        return await asyncio.gather(
            *(resp_client.call("INCRBY", f"{prefix}:{n}", n) for n in range(200))
        )

    assert resp_client.run(many()) == list(range(200))
    resp_client.run(resp_client.call("DEL", *(f"{prefix}:{n}" for n in range(200))))


def test_it_loads_a_script_redis_does_not_know(resp_client):
    from gateway.serving.redis_wire import Script

    # A source never seen before: the first EVALSHA gets NOSCRIPT (as after a Redis restart).
    script = Script(resp_client, f"-- {uuid.uuid4().hex}\nreturn {{1, tonumber(ARGV[1]) + 1}}")
    assert resp_client.run(script([], [41])) == [1, 42]
    assert resp_client.run(script([], [1])) == [1, 2]


def test_it_reads_the_redis_url():
    from gateway.serving.redis_wire import RespClient

    client = RespClient("redis://:s%40cret@redis.internal:6380/3")
    assert (client.host, client.port, client.password, client.db) == (
        "redis.internal",
        6380,
        "s@cret",
        3,
    )


class RecordingRedis:
    """A RESP server that records the commands it gets, in order, answering AUTH late (so a
    caller can arrive while a new connection is still setting itself up); after a refused
    AUTH, it refuses every command, as Redis does; ``refuse_select`` refuses the database
    number, as Redis does for one past its ``databases``."""

    def __init__(self, *, refuse_auth=False, refuse_select=False):
        self.commands: list[list[bytes]] = []
        self.refuse_auth = refuse_auth
        self.refuse_select = refuse_select

    async def handle(self, reader, writer):
        import asyncio

        authenticated = False
        while True:
            try:
                header = await reader.readuntil(b"\r\n")
            except (asyncio.IncompleteReadError, ConnectionError):
                return
            args = []
            for _ in range(int(header[1:-2])):
                size = int((await reader.readuntil(b"\r\n"))[1:-2])
                args.append((await reader.readexactly(size + 2))[:-2])
            self.commands.append(args)
            if args[0] == b"AUTH":
                await asyncio.sleep(0.05)
                if self.refuse_auth:
                    writer.write(b"-WRONGPASS invalid username-password pair\r\n")
                    continue
                authenticated = True
            if not authenticated:
                writer.write(b"-NOAUTH Authentication required.\r\n")
                continue
            if args[0] == b"SELECT" and self.refuse_select:
                writer.write(b"-ERR DB index is out of range\r\n")
                continue
            writer.write(b":1\r\n" if args[0] == b"INCR" else b"+OK\r\n")


@contextlib.asynccontextmanager
async def fake_redis(handle, *, authenticated=True, db=3, timeout=0.5):
    """A client of a RESP server served by ``handle`` on a free port (with the password
    "secret" when ``authenticated``), both closed after."""
    from gateway.serving.redis_wire import RespClient

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    auth = ":secret@" if authenticated else ""
    client = RespClient(f"redis://{auth}127.0.0.1:{port}/{db}", timeout=timeout)
    try:
        yield client
    finally:
        await client.close()
        server.close()


@pytest.mark.parametrize("refused", ["", "auth", "select"])
def test_a_command_never_runs_before_auth_and_select_of_a_new_connection_succeed(refused):
    import asyncio

    from gateway.serving.redis_wire import RedisError

    fake = RecordingRedis(refuse_auth=refused == "auth", refuse_select=refused == "select")

    async def scenario():
        async with fake_redis(fake.handle) as client:
            first = asyncio.create_task(client.call("INCR", "a"))
            while client._connection is None:  # connected; AUTH's reply is still on its way
                await asyncio.sleep(0.001)
            second = asyncio.create_task(client.call("INCR", "b"))
            return await asyncio.gather(first, second, return_exceptions=True)

    results = asyncio.run(scenario())
    names = [command[0] for command in fake.commands]
    # AUTH and SELECT went first, together; every other command came after both, and none at
    # all when either was refused (it would have run unauthenticated, or on database 0).
    assert names[:2] == [b"AUTH", b"SELECT"] and fake.commands[1] == [b"SELECT", b"3"]
    if refused:
        assert all(isinstance(result, RedisError) for result in results), results
        assert names == [b"AUTH", b"SELECT"]
    else:
        assert results == [1, 1]
        assert names == [b"AUTH", b"SELECT", b"INCR", b"INCR"]


def test_a_caller_that_gives_up_does_not_abort_the_connection_the_others_wait_for():
    fake = RecordingRedis()

    async def scenario():
        async with fake_redis(fake.handle) as client:
            leaving = asyncio.create_task(client.call("INCR", "a"))
            staying = asyncio.create_task(client.call("INCR", "b"))
            while client._connection is None:  # connected; AUTH's reply is 50 ms away
                await asyncio.sleep(0.001)
            leaving.cancel()  # its client left, as the gateway cancels a request
            # The set-up goes on for the other caller, and the next one needs no new one.
            return await staying, await client.call("INCR", "c")

    assert asyncio.run(scenario()) == (1, 1)
    assert [command[0] for command in fake.commands] == [b"AUTH", b"SELECT", b"INCR", b"INCR"]


def test_closing_the_client_during_a_set_up_fails_the_waiting_calls_as_errors():
    from gateway.serving.redis_wire import RedisError

    fake = RecordingRedis()

    async def scenario():
        async with fake_redis(fake.handle) as client:
            waiting = asyncio.create_task(client.call("INCR", "a"))
            while client._connection is None:  # connected; AUTH's reply is 50 ms away
                await asyncio.sleep(0.001)
            await client.close()
            # An error the limiters handle (they admit the request), not a cancellation of
            # the request that was waiting.
            return await asyncio.gather(waiting, return_exceptions=True)

    (outcome,) = asyncio.run(scenario())
    assert isinstance(outcome, RedisError), outcome
    assert b"INCR" not in [command[0] for command in fake.commands]


def test_a_redis_that_turns_the_connection_away_fails_the_call_at_once_with_its_reason():
    import time

    from gateway.serving.redis_wire import RedisError

    async def turn_away(_reader, writer):
        writer.write(b"-ERR max number of clients reached\r\n")
        await writer.drain()
        writer.close()

    async def scenario():
        started = time.monotonic()
        async with fake_redis(turn_away, authenticated=False, db=0, timeout=2.0) as client:
            with pytest.raises(RedisError) as refused:
                await client.call("PING")
            return str(refused.value), time.monotonic() - started

    reason, elapsed = asyncio.run(scenario())
    # Redis's own words, not "did not answer in time" after the 2-second wait.
    assert "max number of clients" in reason
    assert elapsed < 1.0


def test_calls_to_a_redis_that_stops_answering_fail_in_time():
    import asyncio
    import time

    from gateway.serving.redis_wire import RedisError

    answered = []

    async def handle(reader, writer):
        # Answers the first command, then reads and never answers.
        while True:
            try:
                header = await reader.readuntil(b"\r\n")
            except (asyncio.IncompleteReadError, ConnectionError):
                return
            for _ in range(int(header[1:-2])):
                size = int((await reader.readuntil(b"\r\n"))[1:-2])
                await reader.readexactly(size + 2)
            if not answered:
                answered.append(True)
                writer.write(b":1\r\n")

    async def scenario():
        async with fake_redis(handle, authenticated=False, db=0, timeout=0.2) as client:
            assert await client.call("INCR", "a") == 1
            started = time.monotonic()
            first = asyncio.create_task(client.call("INCR", "b"))
            await asyncio.sleep(0.1)
            second = asyncio.create_task(client.call("INCR", "c"))
            async with asyncio.timeout(2):  # a missed deadline fails the test, not hangs it
                results = await asyncio.gather(first, second, return_exceptions=True)
            return results, time.monotonic() - started

    results, elapsed = asyncio.run(scenario())
    # Both fail when the older one is due (the connection is dropped, replies could no longer
    # be matched to their callers), not later.
    assert all(isinstance(r, RedisError) and "in time" in str(r) for r in results), results
    assert 0.15 < elapsed < 1.0


class CountingTransport:
    """A transport that counts its writes and passes everything on."""

    def __init__(self, transport):
        self.transport = transport
        self.writes = 0

    def write(self, data):
        self.writes += 1
        self.transport.write(data)

    def __getattr__(self, name):
        return getattr(self.transport, name)


def test_commands_sent_while_others_await_replies_go_in_one_write(resp_client):
    prefix = f"test:{uuid.uuid4().hex}"

    async def many():
        await resp_client.call("PING")  # connected
        connection = resp_client._ready
        counting = connection.transport = CountingTransport(connection.transport)
        replies = await asyncio.gather(
            *(resp_client.call("INCRBY", f"{prefix}:{n}", n) for n in range(50))
        )
        return replies, counting.writes

    replies, writes = resp_client.run(many())
    assert replies == list(range(50))
    # The first is written at once (nothing else awaited a reply), the other 49 together.
    assert writes == 2
    resp_client.run(resp_client.call("DEL", *(f"{prefix}:{n}" for n in range(50))))
