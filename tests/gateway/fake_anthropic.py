"""A fake Anthropic Messages API for the gateway's Anthropic-native endpoints, switched by tests.

``mode``: ``ok`` (answers), ``fail`` (HTTP ``status`` before any byte), ``cut`` (a stream that
stops after its text without ``message_stop``), ``error`` (a stream that sends an
``overloaded_error`` event after its first text), ``nousage`` (answers without ``usage``,
``nullusage`` with a stream's ``message_delta`` writing the counts it does not report as null,
as some Anthropic-compatible servers do). It
answers with the thinking, text and tool
use a request asks for, reports cache usage (10 input + 20 written to + 30 read from the
cache, 7 output), and keeps what it was sent.
"""

from __future__ import annotations

import asyncio
import json

from aiohttp import web

from tests.gateway.harness import DemoUpstreamThread

USAGE = {
    "input_tokens": 10,
    "cache_creation_input_tokens": 20,
    "cache_read_input_tokens": 30,
    "output_tokens": 7,
}
UPSTREAM_SIGNATURE = "EqQBCkYIBxgCKkBupstream-signature"
THOUGHT = "Let me think about it."


def sse(data: dict) -> bytes:
    return f"event: {data['type']}\ndata: {json.dumps(data)}\n\n".encode()


class FakeAnthropic:
    def __init__(self, name: str = "A"):
        self.name = name
        self.mode = "ok"
        self.status = 529
        self.count_tokens = True
        self.requests: list[dict] = []
        self.headers: list[dict] = []
        self.thread = DemoUpstreamThread(app_factory=self._app).start()
        # The Anthropic SDK's base_url convention: no /v1.
        self.url = f"http://127.0.0.1:{self.thread.port}"

    def stop(self):
        self.thread.stop()

    def _blocks(self, body: dict) -> list[dict]:
        blocks = []
        if body.get("thinking"):
            blocks.append(
                {"type": "thinking", "thinking": THOUGHT, "signature": UPSTREAM_SIGNATURE}
            )
        blocks.append({"type": "text", "text": f"Hello from {self.name}"})
        if body.get("tools"):
            blocks.append(
                {
                    "type": "tool_use",
                    "id": "toolu_01",
                    "name": body["tools"][0]["name"],
                    "input": {"city": "Paris"},
                }
            )
        return blocks

    def _app(self):
        async def messages(request):
            body = await request.json()
            self.requests.append(body)
            self.headers.append(dict(request.headers))
            if self.mode == "fail":
                error = {"type": "error", "error": {"type": "overloaded_error", "message": "busy"}}
                return web.json_response(error, status=self.status)
            blocks = self._blocks(body)
            stop_reason = "tool_use" if body.get("tools") else "end_turn"
            if not body.get("stream"):
                message = {
                    "id": "msg_01",
                    "type": "message",
                    "role": "assistant",
                    "model": body["model"],
                    "content": blocks,
                    "stop_reason": stop_reason,
                    "stop_sequence": None,
                    "usage": USAGE,
                }
                if self.mode == "nousage":
                    del message["usage"]
                return web.json_response(message)
            response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
            await response.prepare(request)
            start = {
                "id": "msg_01",
                "type": "message",
                "role": "assistant",
                "model": body["model"],
                "content": [],
                "stop_reason": None,
                "stop_sequence": None,
                "usage": {**USAGE, "output_tokens": 1},
            }
            if self.mode == "nousage":
                del start["usage"]
            await response.write(sse({"type": "message_start", "message": start}))
            await response.write(sse({"type": "ping"}))
            for index, block in enumerate(blocks):
                kind = block["type"]
                empty = {"text": ""} if kind == "text" else {}
                if kind == "thinking":
                    empty = {"thinking": "", "signature": ""}
                if kind == "tool_use":
                    empty = {"id": block["id"], "name": block["name"], "input": {}}
                await response.write(
                    sse(
                        {
                            "type": "content_block_start",
                            "index": index,
                            "content_block": {"type": kind, **empty},
                        }
                    )
                )
                if kind == "thinking":
                    deltas = [
                        {"type": "thinking_delta", "thinking": THOUGHT},
                        {"type": "signature_delta", "signature": UPSTREAM_SIGNATURE},
                    ]
                elif kind == "text":
                    words = block["text"].split(" ")
                    deltas = [
                        {"type": "text_delta", "text": word + (" " if i < len(words) - 1 else "")}
                        for i, word in enumerate(words)
                    ]
                else:
                    deltas = [
                        {"type": "input_json_delta", "partial_json": '{"city": '},
                        {"type": "input_json_delta", "partial_json": '"Paris"}'},
                    ]
                for delta in deltas:
                    event = {"type": "content_block_delta", "index": index, "delta": delta}
                    await response.write(sse(event))
                    if self.mode == "error" and delta["type"] == "text_delta":
                        error = {"type": "overloaded_error", "message": "Overloaded"}
                        await response.write(sse({"type": "error", "error": error}))
                        await response.write_eof()
                        return response
                await response.write(sse({"type": "content_block_stop", "index": index}))
            if self.mode == "cut":
                await asyncio.sleep(0.05)
                request.transport.close()  # the server dies mid-stream
                return response
            final = {
                "type": "message_delta",
                "delta": {"stop_reason": stop_reason, "stop_sequence": None},
                "usage": {"output_tokens": USAGE["output_tokens"]},
            }
            if self.mode == "nousage":
                del final["usage"]
            elif self.mode == "nullusage":
                final["usage"].update(dict.fromkeys(USAGE.keys() - {"output_tokens"}))
            await response.write(sse(final))
            await response.write(sse({"type": "message_stop"}))
            await response.write_eof()
            return response

        async def count_tokens(request):
            body = await request.json()
            self.requests.append(body)
            self.headers.append(dict(request.headers))
            if not self.count_tokens:
                error = {"type": "error", "error": {"type": "not_found_error", "message": "no"}}
                return web.json_response(error, status=404)
            return web.json_response({"input_tokens": 1234})

        async def models(request):
            self.headers.append(dict(request.headers))
            if self.mode == "fail":
                return web.json_response({"type": "error"}, status=self.status)
            return web.json_response({"data": [{"type": "model", "id": "claude-x"}]})

        app = web.Application()
        app.router.add_post("/v1/messages", messages)
        app.router.add_post("/v1/messages/count_tokens", count_tokens)
        app.router.add_get("/v1/models", models)
        return app
