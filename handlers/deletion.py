"""customer.deleted, and what a deletion means for every other event of that customer.

The policy is `settings.deleted_customers` (STRIPELINE_DELETED_CUSTOMERS):

- `anonymize` (default, as ChartMogul): the customer row stays, marked `deleted_in_stripe`
  with `deleted_at`; its personal fields are erased from its rows, from the outbox and from
  every stored event payload that names it (its own events, and customer-less events that
  name it or its charges: disputes, reviews; `app.scrub` lists the fields); its live
  subscriptions are canceled; custom attributes stay; it gets the tag `deleted_customer_in_stripe`.
- `delete` (Chargebee's cascade): the customer and everything it owned (subscriptions and
  items, invoices, payments, discounts, segment membership and history, attributes, tags,
  activity, outbox messages and its stored events, the deletion's own included) are removed.
  Stored events of other objects that merely mention it are scrubbed, not removed.

Either way a tombstone (`customer_tombstones`: id, account, deletion time and event) stays,
and `admit_event` applies the policy to every later event of that customer, whatever its
age and in whatever order events arrive: in `delete` mode the event's effects are dropped and
the stored event is deleted (a second delivery is stored again, then deleted again); in
`anonymize` mode the event is scrubbed in the store and in memory, applied, and the
anonymization is laid over the rows it wrote. Because that overlay is re-applied after every
event, the rows' own versions are left as the events wrote them (a subscription keeps its
last event's fields, with status `canceled`), so the outcome does not depend on order.

Changing the mode: a replay (`stripeline replay`, with or without `--rebuild`) re-applies
the *current* mode to past deletions, since it runs the stored `customer.deleted` event and
the customer's other events through this module again. Switching `anonymize` -> `delete`
and replaying removes previously anonymized customers. Switching `delete` -> `anonymize`
cannot bring back what was deleted: those customers stay reduced to their tombstone.

Known gap: the guard recognises a later event by its own `customer`; a customer-less event
that arrives after the deletion and names the customer only indirectly (a dispute opened
later on one of its charges) is stored as it came.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from typing import Any

import asyncpg

from app.events import EventRecord
from app.logging import log
from app.processing import Handler, ProcessingContext, handlers_registry
from app.scrub import scrub_document, scrub_event

DELETED_TAG = "deleted_customer_in_stripe"
SCRUB_BATCH = 500

# Tables whose rows belong to one customer through a `customer_id` column and go with it in
# `delete` mode (customer_tombstones and stripe_events are handled on their own).
OWNED_TABLES = (
    "subscriptions", "invoices", "payments", "discounts", "segment_memberships", "segment_history", "segment_evaluations",
    "customer_attributes", "customer_tags", "customer_activity",
)


@dataclass(frozen=True)
class Tombstone:
    customer_id: str
    account: str | None
    deleted_at: datetime
    event_id: str
    mentions_scrubbed_at: datetime | None = None


TOMBSTONE_COLUMNS = "customer_id, account, deleted_at, event_id, mentions_scrubbed_at"

GET_TOMBSTONES = f"SELECT {TOMBSTONE_COLUMNS} FROM customer_tombstones WHERE customer_id = ANY($1::text[])"

# The earliest deletion wins: a second customer.deleted (a re-delivery, a replay) changes nothing.
RECORD_TOMBSTONE = f"""
INSERT INTO customer_tombstones AS t (customer_id, account, deleted_at, event_id)
VALUES ($1, $2, $3, $4)
ON CONFLICT (customer_id) DO UPDATE SET
    account = coalesce(t.account, EXCLUDED.account),
    event_id = CASE WHEN (EXCLUDED.deleted_at, EXCLUDED.event_id) < (t.deleted_at, t.event_id)
                    THEN EXCLUDED.event_id ELSE t.event_id END,
    deleted_at = least(t.deleted_at, EXCLUDED.deleted_at)
RETURNING {TOMBSTONE_COLUMNS}
"""

MARK_MENTIONS_SCRUBBED = "UPDATE customer_tombstones SET mentions_scrubbed_at = now() WHERE customer_id = $1"

# In `anonymize` mode the customer stays even if no other event of it was ever received.
ENSURE_CUSTOMER = """
INSERT INTO customers (id, account, livemode, currency, delinquent, created_at, deleted_in_stripe,
                       deleted_at, event_created, event_id)
VALUES ($1, $2, $3, $4, coalesce($5, false), $6, true, $7, $8, $9)
ON CONFLICT (id) DO NOTHING
"""

ANONYMIZE_CUSTOMER = """
UPDATE customers
SET email = NULL, name = NULL, phone = NULL, description = NULL, address = NULL, metadata = '{}',
    deleted_in_stripe = true, deleted_at = $2
WHERE id = $1
  AND (email, name, phone, description, address, metadata, deleted_in_stripe, deleted_at)
      IS DISTINCT FROM (NULL, NULL, NULL, NULL, NULL, '{}'::jsonb, true, $2)
"""

# Stripe cancels every subscription of a deleted customer. The row keeps the version of the
# last event that wrote it; this overlay, re-applied after each later event, keeps it canceled.
CANCEL_SUBSCRIPTIONS = """
UPDATE subscriptions
SET status = CASE WHEN status IN ('canceled', 'incomplete_expired') THEN status ELSE 'canceled' END,
    canceled_at = CASE WHEN status IN ('canceled', 'incomplete_expired') THEN canceled_at
                       ELSE coalesce(canceled_at, $2) END,
    ended_at = CASE WHEN status IN ('canceled', 'incomplete_expired') THEN ended_at
                    ELSE coalesce(ended_at, $2) END,
    metadata = '{}'
WHERE customer_id = $1 AND (status NOT IN ('canceled', 'incomplete_expired') OR metadata <> '{}')
"""

# Free text the merchant wrote for this customer may name them.
SCRUB_INVOICES = "UPDATE invoices SET description = NULL WHERE customer_id = $1 AND description IS NOT NULL"
SCRUB_PAYMENTS = "UPDATE payments SET description = NULL WHERE customer_id = $1 AND description IS NOT NULL"

ADD_DELETED_TAG = """
INSERT INTO customer_tags (customer_id, tag) VALUES ($1, $2) ON CONFLICT (customer_id, tag) DO NOTHING
"""

PURGE_CUSTOMER = """
WITH items AS (
    DELETE FROM subscription_items
    WHERE subscription_id IN (SELECT id FROM subscriptions WHERE customer_id = $1) RETURNING 1
), gone_subscriptions AS (DELETE FROM subscriptions WHERE customer_id = $1 RETURNING 1
), gone_invoices AS (DELETE FROM invoices WHERE customer_id = $1 RETURNING 1
), gone_payments AS (DELETE FROM payments WHERE customer_id = $1 RETURNING 1
), gone_discounts AS (DELETE FROM discounts WHERE customer_id = $1 RETURNING 1
), gone_memberships AS (DELETE FROM segment_memberships WHERE customer_id = $1 RETURNING 1
), gone_history AS (DELETE FROM segment_history WHERE customer_id = $1 RETURNING 1
), gone_evaluations AS (DELETE FROM segment_evaluations WHERE customer_id = $1 RETURNING 1
), gone_attributes AS (DELETE FROM customer_attributes WHERE customer_id = $1 RETURNING 1
), gone_tags AS (DELETE FROM customer_tags WHERE customer_id = $1 RETURNING 1
), gone_activity AS (DELETE FROM customer_activity WHERE customer_id = $1 RETURNING 1
), gone_customer AS (DELETE FROM customers WHERE id = $1 RETURNING 1
)
SELECT (SELECT count(*) FROM items) + (SELECT count(*) FROM gone_subscriptions)
     + (SELECT count(*) FROM gone_invoices) + (SELECT count(*) FROM gone_payments)
     + (SELECT count(*) FROM gone_discounts) + (SELECT count(*) FROM gone_memberships)
     + (SELECT count(*) FROM gone_history) + (SELECT count(*) FROM gone_evaluations)
     + (SELECT count(*) FROM gone_attributes)
     + (SELECT count(*) FROM gone_tags) + (SELECT count(*) FROM gone_activity)
     + (SELECT count(*) FROM gone_customer)
"""

# SKIP LOCKED: an event another worker holds is waiting for this customer's lock, and will
# meet the tombstone when it gets it; waiting for it here would deadlock.
DELETE_CUSTOMER_EVENTS = """
WITH gone AS (
    DELETE FROM stripe_events WHERE id IN (
        SELECT id FROM stripe_events WHERE customer_id = $1 FOR UPDATE SKIP LOCKED
    ) RETURNING 1
)
SELECT count(*) FROM gone
"""

DELETE_EVENT = "DELETE FROM stripe_events WHERE id = $1"

UPDATE_PAYLOAD = "UPDATE stripe_events SET payload = $2 WHERE id = $1"

UPDATE_PAYLOADS = """
UPDATE stripe_events AS e SET payload = scrubbed.payload
FROM unnest($1::text[], $2::jsonb[]) AS scrubbed(id, payload)
WHERE e.id = scrubbed.id
"""

OWN_EVENTS = """
SELECT id, payload FROM stripe_events WHERE customer_id = $1 ORDER BY created, id FOR UPDATE SKIP LOCKED
"""

# Events that name no customer of their own but name this one inside (an expanded object), or
# name one of its charges or payment intents (a dispute's evidence holds the customer's name
# and email; a review, its charge). Events of other customers are not searched: Stripe never
# puts one customer's data in another's objects. This reads every customer-less payload since
# the customer existed, so it runs once per tombstone (mentions_scrubbed_at), not on replays.
MENTIONING_EVENTS = """
SELECT id, payload FROM stripe_events
WHERE created >= $2 AND customer_id IS NULL
  AND (jsonb_path_exists(payload, 'strict $.** ? (@ == $id)', jsonb_build_object('id', $1::text))
       OR payload #>> '{data,object,charge}' = ANY($3::text[])
       OR payload #>> '{data,object,payment_intent}' = ANY($4::text[]))
ORDER BY created, id
FOR UPDATE SKIP LOCKED
"""

PAYMENT_REFERENCES = """
SELECT coalesce(array_agg(id) FILTER (WHERE kind = 'charge'), '{}') AS charges,
       coalesce(array_agg(DISTINCT payment_intent_id) FILTER (WHERE payment_intent_id IS NOT NULL), '{}') AS intents
FROM payments WHERE customer_id = $1
"""

MENTIONING_OUTBOX = """
SELECT id, payload FROM outbox
WHERE jsonb_path_exists(payload, 'strict $.** ? (@ == $id)', jsonb_build_object('id', $1::text))
FOR UPDATE
"""

UPDATE_OUTBOX = """
UPDATE outbox AS o SET payload = scrubbed.payload
FROM unnest($1::bigint[], $2::jsonb[]) AS scrubbed(id, payload)
WHERE o.id = scrubbed.id
"""

DELETE_OUTBOX = "DELETE FROM outbox WHERE id = ANY($1::bigint[])"


def _tombstone(row: asyncpg.Record) -> Tombstone:
    return Tombstone(**dict(row))


def _when(value: Any) -> datetime | None:
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 2**34:
        return datetime.fromtimestamp(value, timezone.utc)
    return None


async def load_tombstones(conn: asyncpg.Connection, records: list[EventRecord], ctx: ProcessingContext) -> None:
    """Find which customers of a batch are deleted, in one query, before any handler runs."""
    ids = sorted({r.customer_id for r in records if r.customer_id} - ctx.tombstones.keys())
    if ids:
        for row in await conn.fetch(GET_TOMBSTONES, ids):
            ctx.tombstones[row["customer_id"]] = _tombstone(row)


async def admit_event(
    conn: asyncpg.Connection, record: EventRecord, handler: Handler | None, ctx: ProcessingContext
) -> tuple[EventRecord, Handler | None]:
    """What of an event of a deleted customer may apply: (the event to apply, its handler or None)."""
    if record.type == "customer.deleted":
        # The deletion itself, again (a re-delivery or a replay): it re-applies the current mode.
        return record, handler
    tombstone: Tombstone = ctx.tombstones[record.customer_id]
    if ctx.settings.deleted_customers == "delete":
        await conn.fetchval(PURGE_CUSTOMER, tombstone.customer_id)
        await conn.execute(DELETE_EVENT, record.id)
        log.info("deleted_customer_event_dropped", event_id=record.id, event_type=record.type,
                 customer_id=tombstone.customer_id)
        return record, None
    scrubbed = scrub_event(record.payload)
    if scrubbed != record.payload:
        await conn.execute(UPDATE_PAYLOAD, record.id, scrubbed)
        record = replace(record, payload=scrubbed)
    if handler is None:
        return record, None

    async def apply_then_anonymize(conn: asyncpg.Connection, event: EventRecord, ctx: ProcessingContext) -> None:
        await handler(conn, event, ctx)
        await anonymize_rows(conn, tombstone)

    return record, apply_then_anonymize


async def anonymize_rows(conn: asyncpg.Connection, tombstone: Tombstone) -> None:
    """Lay the anonymization over the customer's rows; cheap, and idempotent."""
    customer_id, deleted_at = tombstone.customer_id, tombstone.deleted_at
    await conn.execute(ANONYMIZE_CUSTOMER, customer_id, deleted_at)
    await conn.execute(CANCEL_SUBSCRIPTIONS, customer_id, deleted_at)
    await conn.execute(SCRUB_INVOICES, customer_id)
    await conn.execute(SCRUB_PAYMENTS, customer_id)
    await conn.execute(ADD_DELETED_TAG, customer_id, DELETED_TAG)


async def _scrub_payloads(conn: asyncpg.Connection, query: str, *args: Any) -> int:
    """Scrub the stored events a query selects (id, payload), in batches; return how many changed."""
    changed = 0
    ids: list[str] = []
    payloads: list[dict[str, Any]] = []
    async for row in conn.cursor(query, *args, prefetch=SCRUB_BATCH):
        scrubbed = scrub_event(row["payload"])
        if scrubbed != row["payload"]:
            ids.append(row["id"])
            payloads.append(scrubbed)
        if len(ids) >= SCRUB_BATCH:
            await conn.execute(UPDATE_PAYLOADS, ids, payloads)
            changed += len(ids)
            ids, payloads = [], []
    if ids:
        await conn.execute(UPDATE_PAYLOADS, ids, payloads)
        changed += len(ids)
    return changed


async def _scrub_mentions(
    conn: asyncpg.Connection, tombstone: Tombstone, since: datetime | None, payments: asyncpg.Record
) -> int:
    if tombstone.mentions_scrubbed_at is not None:
        return 0
    since = since or datetime(1970, 1, 1, tzinfo=timezone.utc)
    changed = await _scrub_payloads(
        conn, MENTIONING_EVENTS, tombstone.customer_id, since, payments["charges"], payments["intents"]
    )
    await conn.execute(MARK_MENTIONS_SCRUBBED, tombstone.customer_id)
    return changed


async def _outbox_mentions(conn: asyncpg.Connection, customer_id: str, *, delete: bool) -> int:
    """Outbox messages naming the customer: deleted, or scrubbed; return how many."""
    rows = await conn.fetch(MENTIONING_OUTBOX, customer_id)
    if delete:
        await conn.execute(DELETE_OUTBOX, [row["id"] for row in rows])
        return len(rows)
    ids, payloads = [], []
    for row in rows:
        scrubbed = scrub_document(row["payload"])
        if scrubbed != row["payload"]:
            ids.append(row["id"])
            payloads.append(scrubbed)
    if ids:
        await conn.execute(UPDATE_OUTBOX, ids, payloads)
    return len(ids)


async def _anonymize(
    conn: asyncpg.Connection, event: EventRecord, tombstone: Tombstone, ctx: ProcessingContext
) -> dict[str, int]:
    obj = event.object
    scrubbed = replace(event, payload=scrub_event(event.payload))
    # The deleted customer's last snapshot is applied like any other (non-personal fields,
    # versioned by the billing model's own rules), before the anonymization is laid over it.
    snapshot = handlers_registry().get("customer.updated")
    if snapshot is not None:
        await snapshot(conn, scrubbed, ctx)
    currency = obj.get("currency") if isinstance(obj.get("currency"), str) else None
    delinquent = obj.get("delinquent") if isinstance(obj.get("delinquent"), bool) else None
    await conn.execute(
        ENSURE_CUSTOMER, tombstone.customer_id, event.account, event.livemode, currency, delinquent,
        _when(obj.get("created")), tombstone.deleted_at, event.created, event.id,
    )
    await anonymize_rows(conn, tombstone)
    own = await _scrub_payloads(conn, OWN_EVENTS, tombstone.customer_id)
    payments = await conn.fetchrow(PAYMENT_REFERENCES, tombstone.customer_id)
    mentions = await _scrub_mentions(conn, tombstone, _when(obj.get("created")), payments)
    outbox = await _outbox_mentions(conn, tombstone.customer_id, delete=False)
    return {"events_scrubbed": own + mentions, "outbox_scrubbed": outbox}


async def _delete(conn: asyncpg.Connection, event: EventRecord, tombstone: Tombstone) -> dict[str, int]:
    payments = await conn.fetchrow(PAYMENT_REFERENCES, tombstone.customer_id)
    rows = await conn.fetchval(PURGE_CUSTOMER, tombstone.customer_id)
    events = await conn.fetchval(DELETE_CUSTOMER_EVENTS, tombstone.customer_id)
    mentions = await _scrub_mentions(conn, tombstone, _when(event.object.get("created")), payments)
    outbox = await _outbox_mentions(conn, tombstone.customer_id, delete=True)
    return {"rows_deleted": rows, "events_deleted": events, "events_scrubbed": mentions, "outbox_deleted": outbox}


async def on_customer_deleted(conn: asyncpg.Connection, event: EventRecord, ctx: ProcessingContext) -> None:
    """Record the tombstone and apply the deletion policy to everything the customer left."""
    started = time.perf_counter()
    customer_id = event.customer_id
    if customer_id is None:
        log.warning("customer_deletion_without_id", event_id=event.id)
        return
    row = await conn.fetchrow(RECORD_TOMBSTONE, customer_id, event.account, event.created, event.id)
    tombstone = ctx.tombstones[customer_id] = _tombstone(row)
    mode = ctx.settings.deleted_customers
    if mode == "delete":
        counts = await _delete(conn, event, tombstone)
    else:
        counts = await _anonymize(conn, event, tombstone, ctx)
    log.info(
        "customer_deletion_applied",
        event_id=event.id,
        customer_id=customer_id,
        mode=mode,
        duration_ms=round((time.perf_counter() - started) * 1000, 2),
        **counts,
    )
