"""A scripted OpenAI-compatible upstream: with tools offered and a user turn last, it calls the
first tool (``arguments(body)`` decides its arguments); once a tool's output comes back, it
answers with that output; otherwise with a fixed text. Streamed or not, with reasoning and
usage (including cached prompt tokens), as vLLM reports them."""

import json

REASONING = "The user wants something; a tool may help."
TEXT = "Hello from the scripted model."


def scripted_upstream(received: list, arguments=lambda body: {"city": "Paris"}):
    from aiohttp import web

    async def chat(request):
        body = await request.json()
        received.append(body)
        last = body["messages"][-1]
        message: dict = {"role": "assistant", "reasoning_content": REASONING}
        if last["role"] == "tool":
            message["content"] = f"The tool said: {last['content'][-300:]}"
            finish = "stop"
        elif body.get("tools") and last["role"] == "user":
            tool = body["tools"][0]["function"]["name"]
            message["content"] = None
            message["tool_calls"] = [
                {
                    "id": f"call_{len(received)}",
                    "type": "function",
                    "function": {"name": tool, "arguments": json.dumps(arguments(body))},
                }
            ]
            finish = "tool_calls"
        else:
            message["content"] = TEXT
            finish = "stop"
        usage = {
            "prompt_tokens": 100,
            "completion_tokens": 12,
            "total_tokens": 112,
            "prompt_tokens_details": {"cached_tokens": 64},
            "completion_tokens_details": {"reasoning_tokens": 5},
        }
        if not body.get("stream"):
            return web.json_response(
                {
                    "id": "chatcmpl-1",
                    "object": "chat.completion",
                    "model": body["model"],
                    "choices": [{"index": 0, "message": message, "finish_reason": finish}],
                    "usage": usage,
                }
            )
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        deltas = [{"reasoning_content": REASONING}]
        if message.get("content"):
            words = message["content"].split(" ")
            deltas += [
                {"content": w + (" " if i < len(words) - 1 else "")} for i, w in enumerate(words)
            ]
        for n, call in enumerate(message.get("tool_calls") or []):
            deltas.append(
                {
                    "tool_calls": [
                        {
                            "index": n,
                            "id": call["id"],
                            "type": "function",
                            "function": {"name": call["function"]["name"], "arguments": ""},
                        }
                    ]
                }
            )
            arguments_text = call["function"]["arguments"]
            half = len(arguments_text) // 2
            for piece in (arguments_text[:half], arguments_text[half:]):
                deltas.append({"tool_calls": [{"index": n, "function": {"arguments": piece}}]})
        choices = [{"index": 0, "delta": d, "finish_reason": None} for d in deltas]
        choices.append({"index": 0, "delta": {}, "finish_reason": finish})
        for choice in choices:
            await response.write(f"data: {json.dumps({'choices': [choice]})}\n\n".encode())
        await response.write(f"data: {json.dumps({'choices': [], 'usage': usage})}\n\n".encode())
        await response.write(b"data: [DONE]\n\n")
        return response

    app = web.Application(client_max_size=64 * 1024 * 1024)
    app.router.add_post("/v1/chat/completions", chat)
    return app
