"""Test helpers: read Responses SSE bytes and check every event against the official openai
SDK's own event types (strictly: a wrong field name or type fails)."""

import json
import typing

from openai.types.responses import Response, ResponseStreamEvent
from pydantic import TypeAdapter

_RESPONSE = TypeAdapter(Response)


def _event_classes() -> dict[str, type]:
    union = typing.get_args(ResponseStreamEvent)[0]  # Annotated[Union[...], discriminator]
    return {
        typing.get_args(cls.model_fields["type"].annotation)[0]: cls
        for cls in typing.get_args(union)
    }


_EVENTS = _event_classes()


def sse_frames(raw: bytes) -> list[tuple[str, dict]]:
    """(event name, data) pairs; every frame carries both lines and the name is the type."""
    frames = []
    for frame in raw.decode().split("\n\n"):
        if not frame.strip():
            continue
        lines = dict(line.split(": ", 1) for line in frame.split("\n"))
        assert set(lines) == {"event", "data"}, frame
        data = json.loads(lines["data"])
        assert data["type"] == lines["event"], frame
        frames.append((lines["event"], data))
    return frames


def sdk_events(raw: bytes) -> list:
    """The stream as the SDK's typed events, validated strictly."""
    return [_EVENTS[name].model_validate(data) for name, data in sse_frames(raw)]


def sdk_response(body: dict) -> Response:
    return _RESPONSE.validate_python(body)
