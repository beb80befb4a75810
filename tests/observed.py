"""What a user sees of the model, read through the HTTP API: the yardstick of "one model".

Two databases hold the same model when every customer's `GET /api/customers/{id}` answer
(fields, subscriptions with items, MRR, last payment, tags, attributes, segments), its
timeline and the segment counts are the same. Times that say when a row was written rather
than what happened (`last_synced_at`) are left out; everything else is compared as served.
"""

from __future__ import annotations

from typing import Any

import httpx

# When a row was last written: differs between two runs that hold the same model.
RUN_TIMES = ("last_synced_at",)


def _answer(body: dict[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in body.items() if key not in RUN_TIMES}


async def customer_view(client: httpx.AsyncClient, customer_id: str) -> Any:
    """One customer as a user sees it: its answer and its whole timeline (or the status code)."""
    answer = await client.get(f"/api/customers/{customer_id}")
    if answer.status_code != 200:
        return answer.status_code
    timeline = await client.get(f"/api/customers/{customer_id}/events", params={"limit": 500})
    assert timeline.status_code == 200, timeline.text
    return {"customer": _answer(answer.json()), "timeline": timeline.json()}


async def observed(client: httpx.AsyncClient, customer_ids: list[str]) -> dict[str, Any]:
    """Every listed customer's view, and every segment's count."""
    segments = await client.get("/api/segments")
    assert segments.status_code == 200, segments.text
    return {
        "customers": {customer_id: await customer_view(client, customer_id) for customer_id in sorted(customer_ids)},
        "segments": segments.json(),
    }


def differing(got: dict[str, Any], want: dict[str, Any]) -> list[str]:
    """The customers (and segment counts) that differ between two observations."""
    found = [
        customer_id
        for customer_id in sorted(got["customers"].keys() | want["customers"].keys())
        if got["customers"].get(customer_id) != want["customers"].get(customer_id)
    ]
    if got["segments"] != want["segments"]:
        found.append("segment counts")
    return found
