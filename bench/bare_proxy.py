"""The yardstick for ``bench/gateway.py``: a bare pass-through on the gateway's own stack.

Raw ASGI under the same uvicorn (uvloop + httptools), one shared aiohttp session, the body
forwarded as is and the answer relayed as it comes — no auth, quota, rate limit or records.
"""

import os

import aiohttp

UPSTREAM = os.environ.get("BARE_UPSTREAM_URL", "http://127.0.0.1:8100/v1") + "/chat/completions"
_session: aiohttp.ClientSession | None = None


async def app(scope, receive, send):
    global _session
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                _session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await _session.close()
                await send({"type": "lifespan.shutdown.complete"})
                return
    body = b""
    more = True
    while more:
        message = await receive()
        body += message.get("body", b"")
        more = message.get("more_body", False)
    async with _session.post(
        UPSTREAM, data=body, headers={"Content-Type": "application/json"}
    ) as upstream:
        await send(
            {
                "type": "http.response.start",
                "status": upstream.status,
                "headers": [(b"content-type", upstream.headers["Content-Type"].encode())],
            }
        )
        async for piece in upstream.content.iter_any():
            await send({"type": "http.response.body", "body": piece, "more_body": True})
        await send({"type": "http.response.body", "body": b""})
