"""A fake OpenAI Responses API (``POST /v1/responses``) for OpenAI-compatible endpoints marked
``responses_api``, switched by tests; it serves ``/v1/chat/completions`` too (the same text and
usage, plain or streamed), as such a server does.

``mode``: ``ok`` (answers), ``fail`` (HTTP ``status`` before any byte), ``cut`` (a stream that
stops after its text without its final event), ``error`` (a stream that sends an ``error``
event after its first text), ``nousage`` (answers without ``usage``). It answers with the text
and the function call a request asks for (``incomplete`` when ``max_output_tokens`` is under
7), reports cache usage (50 input, 30 of them read from the cache; 7 output) and a field this
gateway does not know (``service_tier``), and keeps what it was sent.
"""

from __future__ import annotations

import asyncio
import json
import time

from aiohttp import web

from tests.gateway.harness import DemoUpstreamThread

USAGE = {
    "input_tokens": 50,
    "input_tokens_details": {"cached_tokens": 30, "cache_write_tokens": 0},
    "output_tokens": 7,
    "output_tokens_details": {"reasoning_tokens": 0},
    "total_tokens": 57,
}
ARGUMENTS = ['{"city": ', '"Paris"}']


def sse(data: dict) -> bytes:
    return f"event: {data['type']}\ndata: {json.dumps(data)}\n\n".encode()


def _message(text: str, status: str) -> dict:
    content = [{"type": "output_text", "text": text, "annotations": [], "logprobs": []}]
    return {
        "id": "msg_up1",
        "type": "message",
        "role": "assistant",
        "status": status,
        "content": content if status == "completed" else [],
    }


def _call(name: str, arguments: str, status: str) -> dict:
    return {
        "id": "fc_up1",
        "type": "function_call",
        "call_id": "call_up1",
        "name": name,
        "arguments": arguments,
        "status": status,
    }


class FakeResponses:
    def __init__(self, name: str = "A"):
        self.name = name
        self.mode = "ok"
        self.status = 500
        self.requests: list[dict] = []
        self.paths: list[str] = []
        self.headers: list[dict] = []
        self.thread = DemoUpstreamThread(app_factory=self._app).start()
        # The OpenAI SDK's base_url convention: with /v1.
        self.url = f"http://127.0.0.1:{self.thread.port}/v1"

    def stop(self):
        self.thread.stop()

    @property
    def text(self) -> str:
        return f"Hello from {self.name}"

    def _response(self, body: dict, status: str, output: list, usage) -> dict:
        return {
            "id": "resp_up1",
            "object": "response",
            "created_at": int(time.time()),
            "status": status,
            "background": False,
            "error": None,
            "incomplete_details": (
                {"reason": "max_output_tokens"} if status == "incomplete" else None
            ),
            "instructions": body.get("instructions"),
            "max_output_tokens": body.get("max_output_tokens"),
            "metadata": body.get("metadata") or {},
            "model": body["model"],
            "output": output,
            "parallel_tool_calls": True,
            "previous_response_id": None,
            "reasoning": {"effort": None, "summary": None},
            "service_tier": "default",
            "store": body.get("store", True),
            "temperature": 1.0,
            "text": {"format": {"type": "text"}},
            "tool_choice": body.get("tool_choice", "auto"),
            "tools": body.get("tools") or [],
            "top_p": 1.0,
            "truncation": "disabled",
            "usage": usage,
            "user": None,
        }

    def _app(self):
        async def responses(request):
            body = await request.json()
            self.requests.append(body)
            self.paths.append(request.path)
            self.headers.append(dict(request.headers))
            if self.mode == "fail":
                error = {"error": {"message": "busy", "type": "server_error", "code": None}}
                return web.json_response(error, status=self.status)
            tool = (body.get("tools") or [{}])[0].get("name")
            final = "incomplete" if (body.get("max_output_tokens") or 7) < 7 else "completed"
            usage = None if self.mode == "nousage" else USAGE
            output = [_message(self.text, "completed")]
            if tool:
                output.append(_call(tool, "".join(ARGUMENTS), "completed"))
            if not body.get("stream"):
                return web.json_response(self._response(body, final, output, usage))
            response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
            await response.prepare(request)
            sequence = iter(range(1000))

            async def send(kind: str, **data):
                await response.write(sse({"type": kind, "sequence_number": next(sequence), **data}))

            started = self._response(body, "in_progress", [], None)
            await send("response.created", response=started)
            await send("response.in_progress", response=started)
            await send(
                "response.output_item.added", output_index=0, item=_message("", "in_progress")
            )
            part = {"type": "output_text", "text": "", "annotations": [], "logprobs": []}
            at = {"item_id": "msg_up1", "output_index": 0, "content_index": 0}
            await send("response.content_part.added", **at, part=part)
            words = self.text.split(" ")
            for i, word in enumerate(words):
                delta = word + (" " if i < len(words) - 1 else "")
                await send("response.output_text.delta", **at, delta=delta, logprobs=[])
                if self.mode == "error":
                    await send("error", code="server_error", message="The server had an error")
                    await response.write_eof()
                    return response
            await send("response.output_text.done", **at, text=self.text, logprobs=[])
            await send("response.content_part.done", **at, part={**part, "text": self.text})
            await send("response.output_item.done", output_index=0, item=output[0])
            if tool:
                pending = _call(tool, "", "in_progress")
                await send("response.output_item.added", output_index=1, item=pending)
                for piece in ARGUMENTS:
                    await send(
                        "response.function_call_arguments.delta",
                        item_id="fc_up1",
                        output_index=1,
                        delta=piece,
                    )
                await send(
                    "response.function_call_arguments.done",
                    item_id="fc_up1",
                    output_index=1,
                    name=tool,
                    arguments="".join(ARGUMENTS),
                )
                await send("response.output_item.done", output_index=1, item=output[1])
            if self.mode == "cut":
                await asyncio.sleep(0.05)
                request.transport.close()  # the server dies mid-stream
                return response
            await send(f"response.{final}", response=self._response(body, final, output, usage))
            await response.write_eof()
            return response

        async def chat(request):
            body = await request.json()
            self.requests.append(body)
            self.paths.append(request.path)
            self.headers.append(dict(request.headers))
            head = {
                "id": "chatcmpl-up1",
                "created": int(time.time()),
                "model": body["model"],
            }
            usage = {"prompt_tokens": 50, "completion_tokens": 7, "total_tokens": 57}
            if not body.get("stream"):
                message = {"role": "assistant", "content": self.text}
                choice = {"index": 0, "message": message, "finish_reason": "stop"}
                return web.json_response(
                    {**head, "object": "chat.completion", "choices": [choice], "usage": usage}
                )
            response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
            await response.prepare(request)
            chunk = {**head, "object": "chat.completion.chunk"}
            for delta, finish in (({"content": self.text}, None), ({}, "stop")):
                choice = {"index": 0, "delta": delta, "finish_reason": finish}
                await response.write(
                    f"data: {json.dumps({**chunk, 'choices': [choice]})}\n\n".encode()
                )
            final = {**chunk, "choices": [], "usage": usage}
            await response.write(f"data: {json.dumps(final)}\n\ndata: [DONE]\n\n".encode())
            await response.write_eof()
            return response

        app = web.Application()
        app.router.add_post("/v1/responses", responses)
        app.router.add_post("/v1/chat/completions", chat)
        return app
