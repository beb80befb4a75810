"""Checking what callers send to /api: query parameters, ids, times and page cursors.

Every value is checked before it reaches PostgreSQL, so bad input answers 400 with a message
that says what to fix, never 500 (nor a 503 for a value PostgreSQL would refuse, such as a
NUL character).
"""

from __future__ import annotations

import base64
import binascii
import re
from datetime import datetime, timedelta, timezone
from typing import Any

from starlette.requests import Request

from stripeline.http.responses import BadInput

# Stripe ids and emails are far shorter; anything longer is not one.
MAX_TEXT = 512

_DIGITS = re.compile(r"[0-9]{1,18}")
_UNIX_SECONDS = re.compile(r"-?[0-9]{1,12}(\.[0-9]+)?")
EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
MICROSECOND = timedelta(microseconds=1)

# In a query string "+" arrives as a space: "...T12:00:00 01:00" meant "+01:00".
_SPACED_OFFSET = re.compile(r"(:\d\d(?:\.\d+)?) (\d\d:?\d\d)$")


def text(value: Any, name: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise BadInput(f"{name} must be a non-empty string")
    if len(value) > MAX_TEXT or "\x00" in value:
        raise BadInput(f"{name} is too long or holds a NUL character")
    return value.strip()


def parse_time(value: Any, name: str) -> datetime:
    """An ISO 8601 time (UTC when it names no offset) or Unix seconds, as a UTC datetime."""
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise BadInput(f"{name} must be an ISO 8601 time or Unix seconds")
    try:
        if isinstance(value, str) and not _UNIX_SECONDS.fullmatch(value.strip()):
            parsed = datetime.fromisoformat(_SPACED_OFFSET.sub(r"\1+\2", value.strip()))
            parsed = parsed.replace(tzinfo=timezone.utc) if parsed.tzinfo is None else parsed
        else:
            parsed = datetime.fromtimestamp(float(value), timezone.utc)
        # Year 1 at +14:00 is still year 0 in UTC, which neither Python nor we can hold.
        return parsed.astimezone(timezone.utc)
    except (ValueError, OverflowError, OSError):
        raise BadInput(f"{name} must be an ISO 8601 time or Unix seconds, got {str(value)[:40]!r}") from None


def query_time(request: Request, name: str) -> datetime | None:
    raw = request.query_params.get(name)
    return parse_time(raw, name) if raw else None


def query_text(request: Request, name: str) -> str | None:
    raw = request.query_params.get(name)
    return text(raw, name) if raw else None


def parse_limit(request: Request, default: int, maximum: int) -> int:
    raw = request.query_params.get("limit")
    if raw is None:
        return default
    if not _DIGITS.fullmatch(raw) or not 1 <= int(raw) <= maximum:
        raise BadInput(f"limit must be a whole number from 1 to {maximum}")
    return int(raw)


def is_digits(value: str) -> bool:
    return _DIGITS.fullmatch(value) is not None


def encode_cursor(at: datetime, key: str) -> str:
    """An opaque page cursor for keyset pagination on (time, key)."""
    micros = (at - EPOCH) // MICROSECOND
    return base64.urlsafe_b64encode(f"{micros}:{key}".encode()).decode().rstrip("=")


def decode_cursor(value: str) -> tuple[datetime, str]:
    problem = BadInput("after must be the `next` cursor of a previous page")
    if len(value) > 2 * MAX_TEXT:
        raise problem
    try:
        decoded = base64.urlsafe_b64decode(value + "=" * (-len(value) % 4)).decode()
    except (binascii.Error, ValueError):
        raise problem from None
    micros, _, key = decoded.partition(":")
    if not re.fullmatch(r"-?[0-9]{1,18}", micros) or not key or "\x00" in key:
        raise problem
    try:
        return EPOCH + int(micros) * MICROSECOND, key
    except OverflowError:
        raise problem from None


def check_request(request: Request, accepts: frozenset[str] | None) -> None:
    """Path ids and query values PostgreSQL can hold (no NUL: text cannot hold one, so it is bad
    input, never a reason to query or to answer 503), and (with `accepts`) no query parameter
    the route does not take."""
    for name, value in request.path_params.items():
        if len(value) > MAX_TEXT or "\x00" in value:
            raise BadInput(f"{name} is too long or holds a NUL character")
    for name, value in request.query_params.multi_items():
        if "\x00" in name or "\x00" in value:
            raise BadInput(f"{name[:40]!r} must not contain a NUL character")
    if accepts is None:
        return
    unknown = sorted(set(request.query_params) - accepts)
    if unknown:
        takes = f"it takes {', '.join(sorted(accepts))}" if accepts else "it takes none"
        raise BadInput(f"unknown query parameter {unknown[0][:40]!r}; {takes}")
