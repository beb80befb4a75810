"""The time: one clock for the whole process (a test hands its own to the jobs that take one)."""

from __future__ import annotations

from datetime import datetime, timezone


def utc_now() -> datetime:
    return datetime.now(timezone.utc)
