"""A model served by several upstream endpoints: weights, failover before the first byte, no
retry after it, ejection and return, and books that stay exact whichever endpoint served."""

import asyncio
import json
import logging
import re
import threading
import time

import pytest

from tests.gateway.harness import DemoUpstreamThread, asgi_call, free_port
from usage.models import DailyUsage, Reservation, UsageRecord

MODEL = "LongCat-Flash-Chat"
STREAM = {
    "model": MODEL,
    "messages": [{"role": "user", "content": "Hello!"}],
    "max_tokens": 10,
    "stream": True,
}


class FakeServer:
    """An OpenAI-compatible upstream whose behaviour a test switches: ``ok`` (answers, usage
    3 + 5), ``fail`` (HTTP ``status`` before any byte, its model list too) or ``cut`` (a
    stream that stops after two chunks without [DONE]), each once ``gate`` is open (a test
    closes it to hold requests in flight as long as it needs). Counts the requests it got
    and keeps their prompts in arrival order (``seen``), and counts the model lists it was
    asked for (``probes``)."""

    def __init__(self, name: str):
        self.name = name
        self.mode = "ok"
        self.status = 500
        self.gate = threading.Event()
        self.gate.set()
        self.requests = 0
        self.seen: list[str] = []
        self.probes = 0
        self.thread = DemoUpstreamThread(app_factory=self._app).start()
        self.url = self.thread.url

    def _app(self):
        from aiohttp import web

        async def chat(request):
            body = await request.json()
            self.requests += 1
            self.seen.append(body["messages"][-1]["content"])
            if not self.gate.is_set():
                await asyncio.get_running_loop().run_in_executor(None, self.gate.wait, 30)
            if self.mode == "fail":
                return web.json_response({"error": {"message": "busy"}}, status=self.status)
            usage = {"prompt_tokens": 3, "completion_tokens": 5, "total_tokens": 8}
            if not body.get("stream"):
                return web.json_response(
                    {
                        "id": "x",
                        "object": "chat.completion",
                        "model": body["model"],
                        "choices": [
                            {
                                "index": 0,
                                "message": {"role": "assistant", "content": self.name},
                                "finish_reason": "stop",
                            }
                        ],
                        "usage": usage,
                    }
                )
            response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
            await response.prepare(request)
            for word in ("one ", "two "):
                chunk = {
                    "id": "x",
                    "object": "chat.completion.chunk",
                    "model": body["model"],
                    "choices": [{"index": 0, "delta": {"content": word}, "finish_reason": None}],
                }
                await response.write(f"data: {json.dumps(chunk)}\n\n".encode())
            if self.mode == "cut":
                await asyncio.sleep(0.05)
                request.transport.close()  # the server dies mid-stream
                return response
            done = {"id": "x", "choices": [], "usage": usage}
            await response.write(f"data: {json.dumps(done)}\n\ndata: [DONE]\n\n".encode())
            await response.write_eof()
            return response

        async def models(request):
            self.probes += 1
            if self.mode == "fail":
                return web.json_response({"error": {"message": "down"}}, status=self.status)
            return web.json_response({"object": "list", "data": []})

        app = web.Application()
        app.router.add_post("/v1/chat/completions", chat)
        app.router.add_get("/v1/models", models)
        return app

    def stop(self):
        self.gate.set()
        self.thread.stop()


@pytest.fixture
def servers():
    started = [FakeServer("A"), FakeServer("B")]
    try:
        yield started
    finally:
        for server in started:
            server.stop()


@pytest.fixture
def pool(demo_model, gateway_settings):
    """Replaces the model's endpoints: ``pool(url, ...)`` with (url, priority, weight) each."""
    gateway_settings.GATEWAY_UPSTREAM_EJECT_SECONDS = 0.3
    gateway_settings.GATEWAY_UPSTREAM_EJECT_MAX_SECONDS = 1.0

    def make(*endpoints):
        demo_model.endpoints.all().delete()
        return [
            demo_model.endpoints.create(base_url=url, priority=priority, weight=weight)
            for url, priority, weight in endpoints
        ]

    return make


def _books_exact(user, results):
    """One charge per request (whatever was tried), nothing left reserved, records = counter."""
    counter = DailyUsage.objects.get(user=user)
    records = list(UsageRecord.objects.filter(user=user))
    assert not Reservation.objects.exists()
    assert counter.reserved_tokens == 0
    assert counter.requests == len(results) == len(records)
    assert counter.input_tokens == sum(r.input_tokens for r in records)
    assert counter.output_tokens == sum(r.output_tokens for r in records)


def test_weights_share_a_tier_exactly_and_a_worse_tier_stays_idle(gw, alice_key, servers, pool):
    a, b = servers
    c = FakeServer("C")
    try:
        pool((a.url, 0, 3), (b.url, 0, 1), (c.url, 1, 10))
        results = [gw.chat(alice_key[1]) for _ in range(40)]
    finally:
        c.stop()
    assert {r.status for r in results} == {200}
    # Smooth weighted round robin in one process: exact over every multiple of the tier's
    # total weight (4 here); tolerance ±1 request.
    assert abs(a.requests - 30) <= 1 and abs(b.requests - 10) <= 1
    assert c.requests == 0


def test_an_endpoint_refusing_connections_costs_no_client_error(
    gw, alice_key, servers, pool, caplog, gateway_settings
):
    # No trial within the test, however slow the machine (a trial's failure is logged too).
    gateway_settings.GATEWAY_UPSTREAM_EJECT_SECONDS = 30
    gateway_settings.GATEWAY_UPSTREAM_EJECT_MAX_SECONDS = 60
    a, _b = servers
    dead, alive = pool((f"http://127.0.0.1:{free_port()}/v1", 0, 1), (a.url, 0, 1))
    caplog.set_level(logging.WARNING, logger="gateway")
    results = [gw.chat(alice_key[1], STREAM if i % 2 else None) for i in range(12)]
    assert [r.status for r in results] == [200] * 12
    assert all("error" not in r.body.decode() for r in results)
    assert a.requests == 12
    # Ejected after three failures, and said once, not per request.
    ejections = [r for r in caplog.records if "ejected" in r.getMessage()]
    assert len(ejections) == 1 and f"{dead.pk}:" in ejections[0].getMessage()
    gw.flush()
    assert set(UsageRecord.objects.values_list("upstream_endpoint_id", flat=True)) == {alive.pk}
    _books_exact(alice_key[0], results)


@pytest.mark.parametrize("status", [500, 502, 503, 429])
def test_a_refusal_before_the_first_byte_fails_over(gw, alice_key, servers, pool, status):
    a, b = servers
    a.mode, a.status = "fail", status
    _first, second = pool((a.url, 0, 1), (b.url, 1, 1))
    results = [gw.chat(alice_key[1]), gw.chat(alice_key[1], STREAM)]
    assert [r.status for r in results] == [200, 200]
    assert results[0].json()["choices"][0]["message"]["content"] == "B"
    assert a.requests == 2 and b.requests == 2
    gw.flush()
    assert set(UsageRecord.objects.values_list("upstream_endpoint_id", flat=True)) == {second.pk}
    _books_exact(alice_key[0], results)


def test_a_client_error_of_the_upstream_is_passed_on_not_retried(gw, alice_key, servers, pool):
    a, b = servers
    a.mode, a.status = "fail", 400
    pool((a.url, 0, 1), (b.url, 1, 1))
    assert gw.chat(alice_key[1]).status == 400
    assert (a.requests, b.requests) == (1, 0)


def test_attempts_are_bounded(gw, alice_key, servers, pool, gateway_settings):
    a, b = servers
    c = FakeServer("C")
    try:
        for server in (a, b, c):
            server.mode = "fail"
        gateway_settings.GATEWAY_UPSTREAM_ATTEMPTS = 2
        pool((a.url, 0, 1), (b.url, 1, 1), (c.url, 2, 1))
        result = gw.chat(alice_key[1])
    finally:
        c.stop()
    assert result.status == 502
    assert (a.requests, b.requests, c.requests) == (1, 1, 0)
    gw.flush()
    assert UsageRecord.objects.get().upstream_endpoint_id is None
    _books_exact(alice_key[0], [result])
    assert DailyUsage.objects.get().used_tokens == 0


def test_a_stream_cut_midway_is_not_retried_and_is_charged_for_what_was_delivered(
    gw, alice_key, servers, pool
):
    a, b = servers
    a.mode = "cut"
    first, _second = pool((a.url, 0, 1), (b.url, 1, 1))
    result = gw.chat(alice_key[1], STREAM)
    assert result.status == 200
    events = result.events()
    assert any(isinstance(e, dict) and "error" in e for e in events)
    text = "".join(
        e["choices"][0]["delta"].get("content") or ""
        for e in events
        if isinstance(e, dict) and e.get("choices")
    )
    assert text == "one two "
    assert (a.requests, b.requests) == (1, 0)
    gw.flush()
    record = UsageRecord.objects.get()
    assert record.upstream_endpoint_id == first.pk
    assert record.output_tokens > 0 and record.estimated
    _books_exact(alice_key[0], [result])


def test_an_ejected_endpoint_comes_back_after_its_cool_down(gw, alice_key, servers, pool):
    a, b = servers
    a.mode = "fail"
    pool((a.url, 0, 1), (b.url, 0, 1))
    for _ in range(8):
        assert gw.chat(alice_key[1]).status == 200
    assert a.requests == 3  # three failures in a row, then ejected: no more traffic
    a.mode = "ok"
    time.sleep(0.35)  # GATEWAY_UPSTREAM_EJECT_SECONDS = 0.3
    before = a.requests
    for _ in range(10):
        assert gw.chat(alice_key[1]).status == 200
    # One trial, then back in the rotation: about half of the traffic.
    assert a.requests - before >= 4
    states = {state.label.split(":")[0]: state for state in gw.gateway.router.states()}
    assert all(state.ejections_in_a_row == 0 for state in states.values())


def test_alias_resolves_and_a_listed_alias_is_in_the_model_list(gw, alice_key, demo_model):
    demo_model.aliases.create(name="longcat", listed=True)
    demo_model.aliases.create(name="longcat-hidden", listed=False)
    assert gw.chat(alice_key[1], {**STREAM, "model": "longcat-hidden"}).status == 200
    listing = gw.request(
        "GET", "/openai/v1/models", headers={"authorization": f"Bearer {alice_key[1]}"}
    ).json()
    assert [m["id"] for m in listing["data"]] == [MODEL, "longcat"]
    gw.flush()
    assert UsageRecord.objects.get().model == "longcat-hidden"


def test_metrics_show_each_endpoint_s_attempts_errors_ejection_and_in_flight(
    gw, alice_key, servers, pool, gateway_settings
):
    from prometheus_client.parser import text_string_to_metric_families

    from observability import metrics

    def sample(name, endpoint):
        text = metrics.render_latest().decode()
        for family in text_string_to_metric_families(text):
            for s in family.samples:
                if s.name == name and s.labels == {"model": MODEL, "endpoint": endpoint}:
                    return s.value
        return 0.0

    gateway_settings.METRICS_ENABLED = True
    a, b = servers
    a.mode = "fail"
    dead, alive = pool((a.url, 0, 1), (b.url, 0, 1))
    dead_label = f"{dead.pk}:{a.url.split('/')[2]}"
    alive_label = f"{alive.pk}:{b.url.split('/')[2]}"
    for _ in range(6):
        assert gw.chat(alice_key[1]).status == 200
    assert sample("portal_gateway_upstream_endpoint_requests_total", dead_label) == 3
    assert sample("portal_gateway_upstream_endpoint_errors_total", dead_label) == 3
    assert sample("portal_gateway_upstream_endpoint_ejections_total", dead_label) == 1
    assert sample("portal_gateway_upstream_endpoint_ejected", dead_label) == 1
    assert sample("portal_gateway_upstream_endpoint_requests_total", alive_label) == 6
    assert sample("portal_gateway_upstream_endpoint_errors_total", alive_label) == 0
    assert sample("portal_gateway_upstream_endpoint_in_flight", alive_label) == 0


# --- concurrency caps and the fair queue ------------------------------------------------------


def _ask(gw, key, text, *, path="/openai/v1/chat/completions"):
    body = {"model": MODEL, "messages": [{"role": "user", "content": text}], "max_tokens": 10}
    headers = {
        "authorization": f"Bearer {key}",
        "content-type": "application/json",
        "anthropic-version": "2023-06-01",
    }
    return asgi_call(gw.app, "POST", path, headers=headers, body=json.dumps(body).encode())


def _sample(name, **labels):
    """A /metrics sample's value, summed over the series whose labels include ``labels``."""
    from prometheus_client.parser import text_string_to_metric_families

    from observability import metrics

    text = metrics.render_latest().decode()
    return sum(
        s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == name and labels.items() <= s.labels.items()
    )


async def _until(condition, seconds=10.0):
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.01)


def test_a_capped_endpoint_queues_and_one_account_s_backlog_does_not_starve_another(
    gw, alice_key, bob_key, servers, pool, gateway_settings
):
    gateway_settings.METRICS_ENABLED = True
    a, _b = servers
    a.gate.clear()
    (endpoint,) = pool((a.url, 0, 1))
    endpoint.max_concurrency = 1
    endpoint.save()

    async def go():
        alice = [asyncio.create_task(_ask(gw, alice_key[1], f"alice {n}")) for n in range(6)]
        await _until(lambda: gw.gateway is not None and gw.gateway.router.queued() == {MODEL: 5})
        assert _sample("portal_gateway_upstream_queue_depth", model=MODEL) == 5
        bob = asyncio.create_task(_ask(gw, bob_key[1], "bob"))
        await _until(lambda: gw.gateway.router.queued() == {MODEL: 6})
        a.gate.set()
        return await asyncio.gather(*alice, bob)

    results = gw.run(go())
    assert [r.status for r in results] == [200] * 7
    # One of Alice's is in flight and her next waits first; then it is Bob's turn. (Which of
    # her six reaches the router first is the event loop's business, not the queue's.)
    assert a.seen.index("bob") == 2
    assert a.seen[0].startswith("alice") and len(a.seen) == 7
    assert gw.gateway.router.queued() == {}
    assert _sample("portal_gateway_upstream_queue_depth", model=MODEL) == 0
    label = f"{endpoint.pk}:{a.url.split('/')[2]}"
    latency = _sample("portal_gateway_upstream_endpoint_first_byte_seconds_count", endpoint=label)
    assert latency == 7
    gw.flush()
    _books_exact(alice_key[0], results[:6])
    _books_exact(bob_key[0], results[6:])


@pytest.mark.parametrize(
    ("path", "status"), [("/openai/v1/chat/completions", 503), ("/anthropic/v1/messages", 529)]
)
def test_past_the_wait_the_client_gets_503_or_529_with_retry_after_and_pays_nothing(
    gw, alice_key, servers, pool, gateway_settings, path, status
):
    gateway_settings.METRICS_ENABLED = True
    gateway_settings.GATEWAY_UPSTREAM_QUEUE_WAIT_SECONDS = 0.2
    a, _b = servers
    a.gate.clear()
    (endpoint,) = pool((a.url, 0, 1))
    endpoint.max_concurrency = 1
    endpoint.save()

    def refusals():
        return _sample(
            "portal_gateway_upstream_queue_refusals_total", model=MODEL, reason="timeout"
        )

    before = refusals()

    async def go():
        first = asyncio.create_task(_ask(gw, alice_key[1], "first", path=path))
        await _until(lambda: a.requests == 1)
        second = await _ask(gw, alice_key[1], "second", path=path)
        a.gate.set()
        return await first, second

    first, second = gw.run(go())
    assert first.status == 200
    assert second.status == status
    assert second.headers["retry-after"] == "2"
    error = second.json()["error"]
    assert "within 0.2 s" in error["message"]
    if status == 529:
        assert error["type"] == "overloaded_error"
    else:
        assert error["code"] == "upstream_overloaded"
    assert a.seen == ["first"]
    assert refusals() == before + 1
    gw.flush()
    refused = UsageRecord.objects.get(status_code=503)
    assert refused.error_code == "upstream_overloaded"
    assert (refused.input_tokens, refused.output_tokens) == (0, 0)
    _books_exact(alice_key[0], [first, second])


def test_a_client_that_leaves_while_waiting_gives_up_its_place(gw, alice_key, servers, pool):
    a, _b = servers
    a.gate.clear()
    (endpoint,) = pool((a.url, 0, 1))
    endpoint.max_concurrency = 1
    endpoint.save()

    async def go():
        first = asyncio.create_task(_ask(gw, alice_key[1], "first"))
        await _until(lambda: a.requests == 1)
        leaving = asyncio.create_task(_ask(gw, alice_key[1], "leaving"))
        await _until(lambda: gw.gateway.router.queued() == {MODEL: 1})
        leaving.cancel()
        await _until(lambda: gw.gateway.router.queued() == {})
        following = asyncio.create_task(_ask(gw, alice_key[1], "next"))
        await _until(lambda: gw.gateway.router.queued() == {MODEL: 1})
        a.gate.set()
        return await asyncio.gather(first, following)

    first, following = gw.run(go())
    assert (first.status, following.status) == (200, 200)
    assert a.seen == ["first", "next"]
    assert gw.gateway.router.health(MODEL, _catalog_endpoint(endpoint)).in_flight == 0


def test_a_full_best_tier_spills_to_the_next_one(gw, alice_key, servers, pool):
    a, b = servers
    a.gate.clear()
    first, _second = pool((a.url, 0, 1), (b.url, 1, 1))
    first.max_concurrency = 1
    first.save()

    async def go():
        one = asyncio.create_task(_ask(gw, alice_key[1], "one"))
        await _until(lambda: a.requests == 1)
        two = await _ask(gw, alice_key[1], "two")
        a.gate.set()
        return await one, two

    results = gw.run(go())
    assert [r.status for r in results] == [200, 200]
    assert (a.seen, b.seen) == (["one"], ["two"])


def test_a_failed_over_attempt_gives_its_slot_back(gw, alice_key, servers, pool):
    a, b = servers
    a.mode = "fail"
    first, second = pool((a.url, 0, 1), (b.url, 1, 1))
    for row in (first, second):
        row.max_concurrency = 1
        row.save()
    for _ in range(2):  # under the ejection threshold: a is tried each time
        assert gw.chat(alice_key[1]).status == 200
    assert (a.requests, b.requests) == (2, 2)
    router = gw.gateway.router
    assert router.health(MODEL, _catalog_endpoint(first)).in_flight == 0
    assert router.health(MODEL, _catalog_endpoint(second)).in_flight == 0


def test_the_probe_ejects_a_dead_endpoint_and_readmits_it_without_a_client_s_trial(
    gw, alice_key, servers, pool, gateway_settings
):
    gateway_settings.GATEWAY_UPSTREAM_EJECT_SECONDS = 60
    gateway_settings.GATEWAY_UPSTREAM_EJECT_MAX_SECONDS = 60
    a, b = servers
    first, _second = pool((a.url, 0, 1), (b.url, 0, 1))
    assert gw.chat(alice_key[1]).status == 200  # the gateway is up
    monitor = gw.gateway.monitor
    a.mode = "fail"
    for _ in range(3):
        gw.run(monitor.probe())
    state = gw.gateway.router.health(MODEL, _catalog_endpoint(first))
    assert state.ejections_in_a_row == 1 and a.probes == 3
    a.mode = "ok"
    gw.run(monitor.probe())
    assert state.ejections_in_a_row == 0  # long before its 60 s cool-down
    before = a.requests
    for _ in range(4):
        assert gw.chat(alice_key[1]).status == 200
    assert a.requests - before == 2


def test_the_probe_runs_on_its_own_when_set_and_not_by_default(
    gw, alice_key, servers, pool, gateway_settings
):
    a, _b = servers
    pool((a.url, 0, 1))
    assert gateway_settings.GATEWAY_UPSTREAM_PROBE_SECONDS == 0
    gateway_settings.GATEWAY_UPSTREAM_PROBE_SECONDS = 0.1
    assert gw.chat(alice_key[1]).status == 200  # starts the gateway
    gw.run(asyncio.sleep(0.5))
    assert a.probes >= 2
    gw.run(gw.app.shutdown())
    gateway_settings.GATEWAY_UPSTREAM_PROBE_SECONDS = 0
    assert gw.chat(alice_key[1]).status == 200  # a new gateway, without the probe
    probes = a.probes
    gw.run(asyncio.sleep(0.3))
    assert a.probes == probes


def _catalog_endpoint(row):
    from gateway.selectors import CatalogEndpoint

    return CatalogEndpoint(row.pk, row.kind, row.base_url, "")


# --- the live state on the staff overview -----------------------------------------------------


def _row(page, attribute, value):
    start = page.index(f'{attribute}="{value}"')
    return page[start : page.index("</tr>", start)]


def _cell(row, name):
    start = row.index(f'data-live="{name}"')
    return row[row.index(">", start) + 1 : row.index("</td>", start)]


def test_the_staff_overview_shows_each_endpoint_s_live_state_merged_across_processes(
    gw, alice_key, bob_key, servers, pool, client
):
    from django.core.cache import cache

    from accounts.services import account_create
    from gateway.live_state import Publisher
    from tests.portal.test_translations import english_left_on, get_zh

    cache.clear()
    a, b = servers
    a.mode = "fail"
    dead, alive = pool((a.url, 0, 1), (b.url, 0, 1))
    for _ in range(6):
        assert gw.chat(alice_key[1]).status == 200
    gw.run(gw.gateway.monitor.publish())
    # Another gateway process's report on the same endpoint, and its waiting requests.
    Publisher("elsewhere:1").publish(
        {
            "endpoints": [
                {
                    "model": MODEL,
                    "endpoint": alive.pk,
                    "label": "x",
                    "state": "healthy",
                    "ejected_until": None,
                    "in_flight": 2,
                    "attempts": 10,
                    "failures": 1,
                    "latency_ms": 50.0,
                }
            ],
            "queued": {MODEL: 3},
        }
    )
    staff = account_create(email="staff@example.com", is_staff=True)
    for user, status in ((None, 302), (bob_key[0], 404), (staff, 200)):
        if user is not None:
            client.force_login(user)
        response = client.get("/staff/")
        assert response.status_code == status
    page = response.content.decode()
    assert re.search(r"Last reported \d s ago by 2 gateway processes\.", page)
    dead_row, alive_row = (
        _row(page, "data-endpoint", dead.pk),
        _row(page, "data-endpoint", alive.pk),
    )
    assert "ejected" in _cell(dead_row, "state") and "until" in _cell(dead_row, "state")
    assert "(1 of 1 processes)" in _cell(dead_row, "state")
    assert _cell(dead_row, "errors") == "100.0 % (3 of 3)"
    assert "healthy" in _cell(alive_row, "state") and " s ago" in _cell(alive_row, "state")
    assert _cell(alive_row, "in-flight") == "2"
    assert _cell(alive_row, "errors") == "6.2 % (1 of 16)"
    assert _cell(alive_row, "latency").endswith(" ms")
    assert _cell(dead_row, "queued") == "3"
    html = get_zh(client, "/staff/")
    for text in ("已摘除", "健康", "个网关进程上报", "排队中", "近期错误", "毫秒"):
        assert text in html
    assert english_left_on(html) == []
    # A process that stops takes its report with it.
    gw.run(gw.gateway.monitor.stop())
    page = client.get("/staff/").content.decode()
    assert "by 1 gateway process." in page
    assert "no report" in _cell(_row(page, "data-endpoint", dead.pk), "state")
