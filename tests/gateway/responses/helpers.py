"""Test helpers: read Responses SSE bytes and check every event against the official openai
SDK's own event types (strictly: a wrong field name or type fails)."""

import typing

from openai.types.responses import Response, ResponseStreamEvent
from pydantic import TypeAdapter

# The SSE framing (event and data lines, the name equal to the data's type) is the same as the
# Anthropic stream's: one reader for both.
from tests.gateway.anthropic.helpers import sse_events as sse_frames

_RESPONSE = TypeAdapter(Response)


def _event_classes() -> dict[str, type]:
    union = typing.get_args(ResponseStreamEvent)[0]  # Annotated[Union[...], discriminator]
    return {
        typing.get_args(cls.model_fields["type"].annotation)[0]: cls
        for cls in typing.get_args(union)
    }


_EVENTS = _event_classes()


def sdk_events(raw: bytes) -> list:
    """The stream as the SDK's typed events, validated strictly."""
    return [_EVENTS[name].model_validate(data) for name, data in sse_frames(raw)]


def sdk_response(body: dict) -> Response:
    return _RESPONSE.validate_python(body)
