"""The server's lifespan: the gateway starts and stops with it, and a started server process
tunes the garbage collector (test clients, which send no lifespan events, leave it alone)."""

import asyncio
import gc

from gateway.serving.app import GC_YOUNGEST_THRESHOLD, GatewayApplication


class FakeGateway:
    def __init__(self):
        self.started = self.stopped = False

    async def startup(self):
        self.started = True

    async def shutdown(self):
        self.stopped = True


def test_a_started_server_freezes_what_it_loaded_and_collects_its_youngest_objects_less_often():
    gateway = FakeGateway()
    app = GatewayApplication(None, dialects=[], factory=lambda: gateway)
    sent = []
    threshold = gc.get_threshold()

    async def lifespan():
        events = asyncio.Queue()
        for kind in ("lifespan.startup", "lifespan.shutdown"):
            events.put_nowait({"type": kind})

        async def send(message):
            sent.append(message["type"])
            if message["type"] == "lifespan.startup.complete":
                sent.append((gc.get_threshold()[0], gc.get_freeze_count()))

        await app({"type": "lifespan"}, events.get, send)

    try:
        asyncio.run(lifespan())
    finally:
        gc.unfreeze()
        gc.set_threshold(*threshold)
    (youngest, frozen) = sent[1]
    assert sent[0] == "lifespan.startup.complete" and sent[2] == "lifespan.shutdown.complete"
    assert youngest == GC_YOUNGEST_THRESHOLD and frozen > 10_000
    assert gateway.started and gateway.stopped
