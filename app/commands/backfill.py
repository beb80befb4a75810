"""`stripeline backfill`: bring in what Stripe already knows, resumably, through the handlers.

Current products, prices, customers, subscriptions (every status) and invoices are listed page
by page. Each listed object becomes a synthetic `*.updated` event whose `created` is the time
its listing started, stored in the event log and processed like a webhook: a webhook newer
than the listing always wins, an older one never overwrites it, and `replay` rebuilds the
backfilled state from the log. Stripe's events of the last 30 days (all it keeps) are stored
as received. A cursor per listing commits with each page, so an interrupted backfill resumes
after the last stored page. `--only-new` skips history: it records now as the start and
fetches only events created since.

Rate limits: stripe-python retries dropped connections and 5xx but not 429, and ignores
Retry-After, so the retry policy is ours (`Backoff`) and the library's is off.
"""

from __future__ import annotations

import asyncio
import itertools
import random
import sys
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import asyncpg
import orjson
import stripe

from stripeline import event_loop
from stripeline.commands.progress import Progress, RunError, Tally, run_command
from stripeline.handlers import registry
from stripeline.logging import log
from stripeline.model.context import Registry
from stripeline.model.events import EventRecord, InvalidEvent, event_from_payload
from stripeline.processing.importing import process_in_order
from stripeline.settings import Settings
from stripeline.store.event_log import insert_events

PAGE_SIZE = 100  # Stripe's maximum
REQUEST_TIMEOUT_SECONDS = 30
# "stripback" as an integer: one backfill at a time.
BACKFILL_LOCK = 0x7374726970626B66


@dataclass(frozen=True)
class Listing:
    resource: str  # the path under /v1 and the service on StripeClient.v1
    event_type: str | None  # the synthetic event's type; None: the listed objects are events
    params: dict[str, Any] = field(default_factory=dict)


# Referenced objects first, so a subscription's price and product exist when it is applied.
LISTINGS = (
    Listing("products", "product.updated"),
    Listing("prices", "price.updated"),
    Listing("customers", "customer.updated"),
    Listing("subscriptions", "customer.subscription.updated", {"status": "all"}),
    Listing("invoices", "invoice.updated"),
    Listing("events", None),
)

OPEN_RUN = """
SELECT id, only_new, started_at, events_since FROM backfill_runs
WHERE finished_at IS NULL ORDER BY id DESC LIMIT 1
"""
DROP_RUN = "DELETE FROM backfill_runs WHERE id = $1"
START_RUN = """
INSERT INTO backfill_runs (only_new, events_since)
VALUES ($1, CASE WHEN $1 THEN date_trunc('second', now()) ELSE now() - interval '30 days' END)
RETURNING id, only_new, started_at, events_since
"""
FINISH_RUN = "UPDATE backfill_runs SET finished_at = now() WHERE id = $1"
# The snapshot is whole seconds, as Stripe's `created` is, rounded down: never later than the
# listing's start. A resumed listing keeps its snapshot (the no-op update lets RETURNING give it).
START_LISTING = """
INSERT INTO backfill_cursors (run_id, resource, snapshot_at) VALUES ($1, $2, date_trunc('second', now()))
ON CONFLICT (run_id, resource) DO UPDATE SET run_id = excluded.run_id
RETURNING snapshot_at, starting_after, listed, finished_at
"""
ADVANCE_LISTING = """
UPDATE backfill_cursors
SET starting_after = $3, listed = listed + $4, finished_at = CASE WHEN $5 THEN now() END
WHERE run_id = $1 AND resource = $2
"""
PENDING_EVENTS = """
SELECT created, id FROM stripe_events
WHERE status = 'pending' AND (next_attempt_at IS NULL OR next_attempt_at <= now())
"""


class BackfillError(RunError):
    """Stripe refused or kept failing a request; what was stored stays, a rerun resumes."""

    exit_code = 1


@dataclass(frozen=True)
class Backoff:
    """Waits between attempts at one Stripe request: exponential with jitter, capped."""

    first: float = 1.0
    cap: float = 60.0
    attempts: int = 8

    def delay(self, attempt: int) -> float:
        ceiling = min(self.cap, self.first * 2 ** (attempt - 1))
        return ceiling / 2 + random.uniform(0, ceiling / 2)


def stripe_client(settings: Settings) -> stripe.StripeClient:
    return stripe.StripeClient(
        settings.stripe_api_key,
        base_addresses={"api": settings.stripe_api_base} if settings.stripe_api_base else None,
        max_network_retries=0,
        http_client=stripe.RequestsClient(timeout=REQUEST_TIMEOUT_SECONDS),
    )


def _retry_after(error: stripe.StripeError) -> float | None:
    for name, value in (error.headers or {}).items():
        if name.lower() == "retry-after":
            try:
                return max(0.0, float(value))
            except ValueError:
                return None  # an HTTP date: Stripe sends seconds; fall back to our backoff
    return None


async def fetch_page(
    client: stripe.StripeClient,
    resource: str,
    params: dict[str, Any],
    backoff: Backoff,
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
) -> dict[str, Any]:
    """One page of a list, as Stripe sent it; retried on 429, 5xx and dropped connections."""
    service = getattr(client.v1, resource)
    for attempt in itertools.count(1):
        try:
            page = await asyncio.to_thread(service.list, dict(params))
            return orjson.loads(page.last_response.body)
        except stripe.AuthenticationError:
            raise BackfillError("Stripe did not accept STRIPE_API_KEY (401): check the key") from None
        except stripe.PermissionError:
            raise BackfillError(
                f"STRIPE_API_KEY may not read {resource} (403): give the restricted key read access"
            ) from None
        except (stripe.RateLimitError, stripe.APIConnectionError, stripe.APIError) as error:
            retryable = not isinstance(error, stripe.APIError) or (error.http_status or 500) >= 500
            if not retryable or attempt >= backoff.attempts:
                raise BackfillError(
                    f"listing {resource} failed after {attempt} attempts ({type(error).__name__}); "
                    "run it again to resume"
                ) from None
            delay = _retry_after(error)
            delay = backoff.delay(attempt) if delay is None else min(delay, backoff.cap)
            log.warning(
                "stripe_request_retried",
                resource=resource,
                error=type(error).__name__,
                attempt=attempt,
                delay=round(delay, 2),
            )
            await sleep(delay)
        except stripe.StripeError as error:
            raise BackfillError(
                f"Stripe answered {error.http_status} to listing {resource}: {error.user_message}"
            ) from None
    raise AssertionError("itertools.count never ends")


def synthetic_event(listing: Listing, obj: dict[str, Any], snapshot: datetime) -> dict[str, Any]:
    """A listed object as an `*.updated` event dated when its listing started, with a stable id."""
    stamp = int(snapshot.timestamp())
    return {
        "id": f"evt_backfill_{obj.get('id')}_{stamp}",
        "object": "event",
        "type": listing.event_type,
        "api_version": stripe.api_version,
        "created": stamp,
        "data": {"object": obj},
        "livemode": obj.get("livemode") is True,
        "pending_webhooks": 0,
        "request": {"id": None, "idempotency_key": None},
    }


@dataclass
class BackfillCounts:
    listed: int = 0
    stored: int = 0
    malformed: int = 0


def _records(
    listing: Listing, objects: list[dict[str, Any]], snapshot: datetime, counts: BackfillCounts
) -> list[EventRecord]:
    records = []
    for obj in objects:
        payload = obj if listing.event_type is None else synthetic_event(listing, obj, snapshot)
        try:
            records.append(event_from_payload(payload))
        except InvalidEvent as problem:
            counts.malformed += 1
            log.warning("backfill_object_skipped", resource=listing.resource, reason=str(problem))
    return records


async def _list(
    pool: asyncpg.Pool,
    client: stripe.StripeClient,
    run: asyncpg.Record,
    listing: Listing,
    counts: BackfillCounts,
    backoff: Backoff,
    sleep: Callable[[float], Awaitable[None]],
    progress: Progress | None,
    stop: asyncio.Event | None,
) -> bool:
    """List one resource from its cursor to the end; False when stopped before the end."""
    async with pool.acquire() as conn:
        cursor = await conn.fetchrow(START_LISTING, run["id"], listing.resource)
    if cursor["finished_at"] is not None:
        return True
    if progress is not None:
        progress.phase(listing.resource, done=cursor["listed"])
    params: dict[str, Any] = {"limit": PAGE_SIZE, **listing.params}
    if listing.event_type is None:
        params["created"] = {"gte": int(run["events_since"].timestamp())}
    starting_after = cursor["starting_after"]
    while True:
        if starting_after:
            params["starting_after"] = starting_after
        page = await fetch_page(client, listing.resource, params, backoff, sleep)
        objects = page.get("data") or []
        records = _records(listing, objects, cursor["snapshot_at"], counts)
        finished = not page.get("has_more") or not objects
        starting_after = objects[-1]["id"] if objects else starting_after
        async with pool.acquire() as conn, conn.transaction():
            new = await insert_events(conn, records) if records else set()
            await conn.execute(ADVANCE_LISTING, run["id"], listing.resource, starting_after, len(objects), finished)
        counts.listed += len(objects)
        counts.stored += len(new)
        if progress is not None:
            progress.advance(len(objects))
        if finished:
            return True
        if stop is not None and stop.is_set():
            return False


async def _open_run(pool: asyncpg.Pool, only_new: bool, progress: Progress | None) -> asyncpg.Record:
    async with pool.acquire() as conn, conn.transaction():
        run = await conn.fetchrow(OPEN_RUN)
        if run is not None and run["only_new"] == only_new:
            if progress is not None:
                progress.note(f"resuming the backfill started at {run['started_at'].isoformat()}")
            return run
        if run is not None:
            await conn.execute(DROP_RUN, run["id"])
        return await conn.fetchrow(START_RUN, only_new)


async def backfill(
    pool: asyncpg.Pool,
    settings: Settings,
    client: stripe.StripeClient,
    tally: Tally,
    counts: BackfillCounts,
    *,
    only_new: bool = False,
    backoff: Backoff = Backoff(),
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    progress: Progress | None = None,
    stop: asyncio.Event | None = None,
    registry: Registry,
) -> None:
    """List, store and process; resumes an interrupted run of the same kind."""
    async with pool.acquire() as guard:
        if not await guard.fetchval("SELECT pg_try_advisory_lock($1)", BACKFILL_LOCK):
            raise BackfillError("another backfill is running")
        try:
            run = await _open_run(pool, only_new, progress)
            listings = [listing for listing in LISTINGS if not only_new or listing.event_type is None]
            for listing in listings:
                if not await _list(pool, client, run, listing, counts, backoff, sleep, progress, stop):
                    tally.interrupted = True
                    return
            keys = [(row["created"], row["id"]) for row in await guard.fetch(PENDING_EVENTS)]
            await process_in_order(pool, settings, keys, tally, progress=progress, stop=stop, registry=registry)
            if not tally.interrupted:
                await guard.execute(FINISH_RUN, run["id"])
                log.info("backfill_finished", listed=counts.listed, stored=counts.stored, failed=tally.failed)
        finally:
            await guard.execute("SELECT pg_advisory_unlock($1)", BACKFILL_LOCK)


def backfill_command(args: Any, settings: Settings) -> int:
    settings.require("DATABASE_URL", "STRIPE_API_KEY")
    client = stripe_client(settings)
    counts = BackfillCounts()

    async def work(pool, tally, progress, stop) -> None:
        await backfill(pool, settings, client, tally, counts, only_new=args.only_new, progress=progress, stop=stop,
                       registry=registry())

    def summary(tally: Tally) -> dict[str, int]:
        return {
            "listed": counts.listed,
            "stored": counts.stored,
            "malformed": counts.malformed,
            "applied": tally.applied,
            "skipped": tally.skipped,
            "failed": tally.failed,
        }

    if args.only_new:
        print("backfill: skipping history; syncing from now on", file=sys.stderr)
    return event_loop.run(run_command("backfill", settings, work, summary))
