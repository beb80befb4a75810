"""JSON answers: ISO 8601 UTC timestamps, clear error messages."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

import orjson
from starlette.responses import Response


def iso(value: datetime | None) -> str | None:
    """ISO 8601 in UTC with a Z, the one timestamp form in our JSON."""
    if value is None:
        return None
    if value.tzinfo is None:
        value = value.replace(tzinfo=timezone.utc)
    text = value.astimezone(timezone.utc).isoformat()
    return text.replace("+00:00", "Z")


def _default(value: Any) -> Any:
    if isinstance(value, datetime):
        return iso(value)
    raise TypeError


class JSONResponse(Response):
    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        # orjson writes datetimes itself, as +00:00; pass them through `iso` for one form.
        return orjson.dumps(content, default=_default, option=orjson.OPT_PASSTHROUGH_DATETIME)


def error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)
