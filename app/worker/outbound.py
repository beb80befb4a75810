"""Segment webhooks: outbox rows POSTed to STRIPELINE_SEGMENT_WEBHOOK_URL, signed, at least once.

The segment refresh writes one row per entry or exit inside the transaction that made the
change; this worker job delivers them, never the request path. It claims due rows with a
lease (so two workers never send the same row at once), POSTs each as JSON with a
`Stripeline-Signature: t=<unix time>,v1=<hex>` header, the HMAC-SHA256 of "<t>.<body>" with
STRIPELINE_SEGMENT_WEBHOOK_SECRET, exactly as Stripe signs its own webhooks, and deletes the
row on a 2xx answer (segment_history is the permanent record). Anything else is retried with
exponential backoff (STRIPELINE_RETRY_BASE_SECONDS, doubling, at most an hour) for about three
days, then left with `next_attempt_at = 'infinity'` and its last error. A crash between the
POST and the delete sends the event again: receivers dedupe on its `id`.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from datetime import datetime
from typing import Any

import httpx
import orjson

from stripeline.clock import utc_now
from stripeline.logging import log
from stripeline.settings import Settings
from stripeline.signature import sign

SIGNATURE_HEADER = "Stripeline-Signature"
USER_AGENT = "stripeline-segment-webhooks"

BATCH = 50
CONCURRENCY = 8
MAX_BATCHES_PER_RUN = 20
TIMEOUT_SECONDS = 10
# Longer than a POST can take: a claimed row is not claimed again before then.
LEASE_SECONDS = 60
MAX_BACKOFF_SECONDS = 3600
# With a 5 s base: ten attempts in the first 1.4 hours, then hourly, about three days in all.
MAX_ATTEMPTS = 80

CLAIM_DUE = """
UPDATE outbox SET next_attempt_at = $1::timestamptz + make_interval(secs => $3)
WHERE id IN (
    SELECT id FROM outbox
    WHERE kind = 'segment_webhook' AND next_attempt_at <= $1
      AND id <> ALL ($4::bigint[])
    ORDER BY next_attempt_at, id
    LIMIT $2
    FOR UPDATE SKIP LOCKED
)
RETURNING id, payload, attempts
"""

FORGET_DELIVERED = "DELETE FROM outbox WHERE id = ANY ($1::bigint[])"

RECORD_FAILURES = """
UPDATE outbox AS o
SET attempts = o.attempts + 1,
    last_error = failed.error,
    next_attempt_at = CASE WHEN o.attempts + 1 >= $4 THEN 'infinity'::timestamptz
                           ELSE $3::timestamptz + make_interval(secs => least($5 * power(2, o.attempts), $6)) END
FROM unnest($1::bigint[], $2::text[]) AS failed(id, error)
WHERE o.id = failed.id
"""


async def _post(client: httpx.AsyncClient, settings: Settings, payload: dict[str, Any]) -> str | None:
    """POST one event; None when the receiver took it, else why not (never the URL or the body)."""
    body = orjson.dumps(payload)
    headers = {"content-type": "application/json", "user-agent": USER_AGENT}
    if settings.segment_webhook_secret:
        headers[SIGNATURE_HEADER] = sign(body, settings.segment_webhook_secret)
    try:
        response = await client.post(settings.segment_webhook_url, content=body, headers=headers)
    except httpx.HTTPError as problem:
        return type(problem).__name__
    if 200 <= response.status_code < 300:
        return None
    return f"HTTP {response.status_code}"


async def deliver_segment_webhooks(ctx: dict[str, Any]) -> dict[str, int]:
    """Deliver due segment-change events; each row is tried at most once per run."""
    settings: Settings = ctx["settings"]
    if not settings.segment_webhook_url:
        return {"delivered": 0, "failed": 0}
    clock: Callable[[], datetime] = ctx.get("clock", utc_now)
    pool = ctx["pool"]
    started = time.perf_counter()
    attempted: list[int] = []
    delivered = failed = 0
    limit = asyncio.Semaphore(CONCURRENCY)

    async def post(client: httpx.AsyncClient, payload: dict[str, Any]) -> str | None:
        async with limit:
            return await _post(client, settings, payload)

    async with httpx.AsyncClient(timeout=TIMEOUT_SECONDS) as client:
        for _ in range(MAX_BATCHES_PER_RUN):
            async with pool.acquire() as conn:
                rows = await conn.fetch(CLAIM_DUE, clock(), BATCH, float(LEASE_SECONDS), attempted)
            if not rows:
                break
            rows = sorted(rows, key=lambda row: row["id"])
            attempted += [row["id"] for row in rows]
            errors = await asyncio.gather(*(post(client, row["payload"]) for row in rows))
            done = [row["id"] for row, error in zip(rows, errors) if error is None]
            retry = [(row["id"], error) for row, error in zip(rows, errors) if error is not None]
            async with pool.acquire() as conn:
                if done:
                    await conn.execute(FORGET_DELIVERED, done)
                if retry:
                    await conn.execute(
                        RECORD_FAILURES,
                        [row_id for row_id, _ in retry],
                        [error for _, error in retry],
                        clock(),
                        MAX_ATTEMPTS,
                        float(settings.retry_base_seconds),
                        float(MAX_BACKOFF_SECONDS),
                    )
            delivered += len(done)
            failed += len(retry)
            for row_id, error in retry:
                log.warning("segment_webhook_failed", outbox_id=row_id, error=error)
            if len(rows) < BATCH:
                break
    if attempted:
        log.info(
            "segment_webhooks_delivered",
            delivered=delivered,
            failed=failed,
            duration_ms=round((time.perf_counter() - started) * 1000, 1),
        )
    return {"delivered": delivered, "failed": failed}


async def check_segment_webhook(ctx: dict[str, Any]) -> None:
    """Worker start-up: say once if segment webhooks will go out unsigned."""
    settings: Settings = ctx["settings"]
    if settings.segment_webhook_url and not settings.segment_webhook_secret:
        log.warning("segment_webhooks_unsigned", missing="STRIPELINE_SEGMENT_WEBHOOK_SECRET")
