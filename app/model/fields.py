"""Reading Stripe payload fields the same way in every handler.

A reference is an id or, when expanded, the object itself; times are Unix seconds; fields
move between API versions, so readers look in every place a version may put them.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

# Ranks shared by every object (app/model/ordering.py): a creation before everything else of
# its second, a deletion after it.
CREATED_RANK = 10
CHANGED_RANK = 20
DELETED_RANK = 90


def ref(value: Any) -> str | None:
    """The id of a reference, expanded or not."""
    if isinstance(value, str) and value:
        return value
    if isinstance(value, dict) and isinstance(value.get("id"), str) and value["id"]:
        return value["id"]
    return None


_TIMES: dict[int, datetime] = {}


def ts(value: Any) -> datetime | None:
    """A Unix time as an aware datetime (memoised: a batch repeats the same seconds)."""
    if isinstance(value, bool) or not isinstance(value, int):
        return None
    found = _TIMES.get(value)
    if found is None:
        if len(_TIMES) > 100_000:
            _TIMES.clear()
        found = _TIMES[value] = datetime.fromtimestamp(value, timezone.utc)
    return found


def integer(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def text(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def verb_rank(event_type: str) -> int:
    """The rank every object's events share: `*.created` first, `*.deleted` last."""
    if event_type.endswith(".created"):
        return CREATED_RANK
    if event_type.endswith(".deleted"):
        return DELETED_RANK
    return CHANGED_RANK


def listed(value: Any) -> list[Any]:
    """The `data` of a Stripe list object (or a plain list)."""
    if isinstance(value, dict):
        value = value.get("data")
    return value if isinstance(value, list) else []
