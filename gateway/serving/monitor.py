"""Per gateway process, beside the requests: the router's live state published for the staff
overview every ``gateway.live_state.PUBLISH_SECONDS``, and the optional active probe.

The probe (``GATEWAY_UPSTREAM_PROBE_SECONDS``, 0 = off) asks every endpoint of the catalog for
its model list on the shared upstream session, all at once, each bounded by the probe interval
(at most ``PROBE_TIMEOUT_SECONDS``). No answer or a 5xx counts towards ejection as a failed
request would; any other answer brings an ejected endpoint back without waiting for a client's
trial request (``Router.probed``). What is asked depends on the endpoint's kind
(``PROBES``); a kind without an entry is not probed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

import aiohttp
from asgiref.sync import sync_to_async
from django.conf import settings

from gateway.live_state import PUBLISH_SECONDS, Publisher
from gateway.models import UpstreamEndpoint
from gateway.selectors import CatalogEndpoint
from gateway.serving.catalog import Catalog
from gateway.serving.routing import Router
from gateway.serving.upstream import ANTHROPIC_VERSION, Upstream

log = logging.getLogger(__name__)

PROBE_TIMEOUT_SECONDS = 10.0


def _openai_probe(endpoint: CatalogEndpoint) -> tuple[str, dict]:
    # The base URL includes /v1, as an OpenAI SDK's base_url does.
    key = endpoint.upstream_key
    return "/models", {"Authorization": f"Bearer {key}"} if key else {}


def _anthropic_probe(endpoint: CatalogEndpoint) -> tuple[str, dict]:
    # The base URL has no /v1, as an Anthropic SDK's base_url; Anthropic lists models there.
    headers = {"anthropic-version": ANTHROPIC_VERSION}
    if endpoint.upstream_key:
        headers["x-api-key"] = endpoint.upstream_key
    return "/v1/models", headers


# What to ask an endpoint of each kind: (path below its base URL, headers).
PROBES = {
    UpstreamEndpoint.Kind.OPENAI_COMPATIBLE: _openai_probe,
    UpstreamEndpoint.Kind.DEMO: _openai_probe,
    UpstreamEndpoint.Kind.ANTHROPIC: _anthropic_probe,
}


class UpstreamMonitor:
    def __init__(self, router: Router, catalog: Catalog, upstream: Upstream):
        self.router = router
        self.catalog = catalog
        self.upstream = upstream
        self.publisher = Publisher()
        self._tasks: list[asyncio.Task] = []

    def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._tasks.append(loop.create_task(self._every(PUBLISH_SECONDS, self.publish)))
        probe = settings.GATEWAY_UPSTREAM_PROBE_SECONDS
        if probe > 0:
            self._tasks.append(loop.create_task(self._every(probe, self.probe)))

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks.clear()
        try:
            await sync_to_async(self.publisher.withdraw, thread_sensitive=False)()
        except Exception as failure:
            log.warning("upstream state not withdrawn: %s", failure.__class__.__name__)

    async def _every(self, seconds: float, step) -> None:
        while True:
            await asyncio.sleep(seconds)
            try:
                await step()
            except Exception as failure:
                # The next beat tries again; requests never depend on this.
                log.warning("upstream %s failed: %s", step.__name__, failure.__class__.__name__)

    async def publish(self) -> None:
        report = self.router.snapshot()
        await sync_to_async(self.publisher.publish, thread_sensitive=False)(report)

    async def probe(self) -> None:
        targets = [
            (model.name, endpoint)
            for model in await self.catalog.enabled()
            for endpoint in model.endpoints
            if endpoint.kind in PROBES and endpoint.upstream_key is not None
        ]
        verdicts = await asyncio.gather(*(self._answers(endpoint) for _, endpoint in targets))
        for (model, endpoint), ok in zip(targets, verdicts, strict=True):
            self.router.probed(model, endpoint, ok=ok)

    async def _answers(self, endpoint: CatalogEndpoint) -> bool:
        path, headers = PROBES[endpoint.kind](endpoint)
        seconds = min(settings.GATEWAY_UPSTREAM_PROBE_SECONDS, PROBE_TIMEOUT_SECONDS)
        try:
            async with self.upstream.session.get(
                endpoint.base_url + path,
                headers=headers,
                timeout=aiohttp.ClientTimeout(total=seconds),
            ) as response:
                return response.status < 500
        except (aiohttp.ClientError, OSError, TimeoutError):
            return False
