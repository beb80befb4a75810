"""Reading request bodies without ever buffering more than a route accepts."""

from __future__ import annotations

from typing import Any

import orjson
from starlette.requests import ClientDisconnect
from starlette.types import Receive, Scope

from stripeline.http.responses import BadInput

# A Stripe webhook: the contract's limit (Stripe's events are a few kB; the largest are far below).
WEBHOOK_MAX_BYTES = 1024 * 1024
# A JSON body sent to /api (attributes, activity, retry filters).
API_BODY_MAX_BYTES = 64 * 1024


class BodyTooLarge(BadInput):
    """The body is over the route's limit."""

    status = 413


def header(scope: Scope, name: bytes) -> bytes | None:
    for key, value in scope["headers"]:
        if key == name:
            return value
    return None


async def read_body(scope: Scope, receive: Receive, limit: int = WEBHOOK_MAX_BYTES) -> bytes:
    """Read the raw body, refusing as soon as it passes `limit` (never buffering more)."""
    declared = header(scope, b"content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:  # bytes: ASCII digits only
        raise BodyTooLarge(f"body larger than {limit} bytes")
    chunks = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientDisconnect()
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise BodyTooLarge(f"body larger than {limit} bytes")
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


async def read_json(scope: Scope, receive: Receive, limit: int = API_BODY_MAX_BYTES) -> Any:
    """The body as JSON; over `limit` it is BodyTooLarge, not JSON it is BadInput."""
    body = await read_body(scope, receive, limit)
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError:
        raise BadInput("body is not valid JSON") from None
