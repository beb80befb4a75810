"""customer.deleted, and what a deletion means for every other event of that customer.

The policy is `settings.deleted_customers` (STRIPELINE_DELETED_CUSTOMERS). A deletion records a
tombstone (`customer_tombstones`: id, account, the deleting event and its time; the earliest
deletion wins) and the policy is then a function of the customer's events and its tombstone,
whatever order they arrive in and whichever path applies them (live, replay, rebuild, import):

- `anonymize` (default, as ChartMogul): the customer's rows keep following its events by the
  billing model's own rules (versions, same-second evidence), before and after the deletion,
  so its history (subscriptions and items, invoices, payments, discounts, MRR history, last
  payment) is what the events say. Over those rows lies the anonymization, laid again after
  every batch that touched the customer (`settle_deletions`): personal fields erased,
  `deleted_in_stripe` with `deleted_at`, live subscriptions canceled as Stripe cancels them,
  the merchant's free text on invoices and payments erased, the tag `deleted_customer_in_stripe`.
  Custom attributes stay. Every stored payload of the customer, and every customer-less
  payload that names it or its charges (disputes, reviews), is scrubbed of personal data
  (`stripeline.model.scrub` lists the fields); a later event is scrubbed before its handler sees it.
- `delete` (Chargebee's cascade): the customer and everything it owned (subscriptions and
  items, invoices, payments, invoice payments of its invoices, discounts, segment membership
  and history, attributes, tags, activity, outbox messages, its stored events, the deletion's
  own included) are removed, and every later event of it is dropped (its stored copy deleted),
  whenever it arrives. Stored events of other objects that merely mention it are scrubbed.

So the deletion and the customer's other events commute: a `customer.deleted` processed
before the customer's earlier subscription events (a retry, a backlog, two workers) leaves
the same rows as one processed after them, and `replay --rebuild` (which keeps tombstones and
wipes rows) rebuilds the same history.

Changing the mode: a replay (`stripeline replay`, with or without `--rebuild`) re-applies
the *current* mode to past deletions, since it runs the stored `customer.deleted` event and
the customer's other events through this module again. Switching `anonymize` -> `delete`
and replaying removes previously anonymized customers. Switching `delete` -> `anonymize`
cannot bring back what was deleted: those customers stay reduced to their tombstone.

Known gaps: the guard recognises a later event by its own `customer`; a customer-less event
that arrives after the deletion and names the customer only indirectly (a dispute opened
later on one of its charges) is stored as it came. In `delete` mode, an invoice payment
(basil: its payload names only its invoice) delivered after the deletion purged that invoice
cannot be traced to the customer and is kept as a row naming a missing invoice.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from typing import Any

import asyncpg
import orjson

from stripeline.handlers import customers
from stripeline.logging import log
from stripeline.model import tables
from stripeline.model.context import Handler, ProcessingContext
from stripeline.model.events import EventRecord
from stripeline.model.scrub import scrub_document, scrub_event
from stripeline.model.writes import Projection

DELETED_TAG = "deleted_customer_in_stripe"
SCRUB_BATCH = 500

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

# The anonymization laid over the rows of customers deleted in Stripe ($1 ids, $2 deletion
# times): cheap, idempotent, and a function of the rows and the tombstones alone. The rows keep
# the versions of the events that wrote them, so a later event still applies by the model's
# rules, and this is laid over it again. Stripe cancels every subscription of a deleted
# customer; free text the merchant wrote on its invoices and payments may name the person.
ANONYMIZE_CUSTOMERS = """
WITH gone AS (
    SELECT * FROM unnest($1::text[], $2::timestamptz[]) AS g(customer_id, deleted_at)
), anonymized AS (
    UPDATE customers AS c
    SET email = NULL, name = NULL, phone = NULL, description = NULL, address = NULL, metadata = '{}',
        deleted_in_stripe = true, deleted_at = g.deleted_at
    FROM gone AS g
    WHERE c.id = g.customer_id
      AND (c.email, c.name, c.phone, c.description, c.address, c.metadata, c.deleted_in_stripe, c.deleted_at)
          IS DISTINCT FROM (NULL, NULL, NULL, NULL, NULL, '{}'::jsonb, true, g.deleted_at)
    RETURNING 1
), canceled AS (
    UPDATE subscriptions AS s
    SET status = CASE WHEN s.status IN ('canceled', 'incomplete_expired') THEN s.status ELSE 'canceled' END,
        canceled_at = CASE WHEN s.status IN ('canceled', 'incomplete_expired') THEN s.canceled_at
                           ELSE coalesce(s.canceled_at, g.deleted_at) END,
        ended_at = CASE WHEN s.status IN ('canceled', 'incomplete_expired') THEN s.ended_at
                        ELSE coalesce(s.ended_at, g.deleted_at) END,
        metadata = '{}'
    FROM gone AS g
    WHERE s.customer_id = g.customer_id AND (s.status NOT IN ('canceled', 'incomplete_expired') OR s.metadata <> '{}')
    RETURNING 1
), invoices_scrubbed AS (
    UPDATE invoices AS i SET description = NULL
    FROM gone AS g WHERE i.customer_id = g.customer_id AND i.description IS NOT NULL
    RETURNING 1
), payments_scrubbed AS (
    UPDATE payments AS p SET description = NULL
    FROM gone AS g WHERE p.customer_id = g.customer_id AND p.description IS NOT NULL
    RETURNING 1
), tagged AS (
    INSERT INTO customer_tags (customer_id, tag)
    SELECT customer_id, $3 FROM gone
    ON CONFLICT (customer_id, tag) DO NOTHING
    RETURNING 1
)
SELECT (SELECT count(*) FROM anonymized) + (SELECT count(*) FROM canceled)
"""

# Every row the customers ($1) own, by the catalogue of tables (app/model/tables.py).
PURGE_CUSTOMERS = tables.purge_statement()

# The customer's stored events, and those of the invoice payments of its invoices ($2), which
# name no customer. SKIP LOCKED: an event another worker holds is waiting for this customer's
# lock, and will meet the tombstone when it gets it; waiting for it here would deadlock.
DELETE_CUSTOMER_EVENTS = """
WITH gone AS (
    DELETE FROM stripe_events WHERE id IN (
        SELECT id FROM stripe_events WHERE customer_id = $1 OR object_id = ANY($2::text[]) FOR UPDATE SKIP LOCKED
    ) RETURNING 1
)
SELECT count(*) FROM gone
"""

DELETE_EVENT = "DELETE FROM stripe_events WHERE id = $1"

# Payloads travel as JSON text, encoded one by one in Python: one that cannot be encoded (or
# read) must not fail the others (see `_scrubbed_text`).
UPDATE_PAYLOADS = """
UPDATE stripe_events AS e SET payload = scrubbed.payload::jsonb
FROM unnest($1::text[], $2::text[]) AS scrubbed(id, payload)
WHERE e.id = scrubbed.id
"""

STORED_COLUMNS = "id, type, created, object_type, object_id, customer_id, payload::text AS payload"

OWN_EVENTS = f"""
SELECT {STORED_COLUMNS} FROM stripe_events WHERE customer_id = $1 ORDER BY created, id FOR UPDATE SKIP LOCKED
"""

# Events that name no customer of their own but name this one inside (an expanded object), or
# name one of its charges or payment intents (a dispute's evidence holds the customer's name
# and email; a review, its charge). Events of other customers are not searched: Stripe never
# puts one customer's data in another's objects. The index of the strings of customer-less
# events (`mentions`, sql/0014_event_mentions.sql) hands over the candidates and the conditions
# after it check each one as before. It runs once per tombstone (mentions_scrubbed_at).
MENTIONING_EVENTS = f"""
SELECT {STORED_COLUMNS} FROM stripe_events
WHERE created >= $2 AND customer_id IS NULL
  AND mentions ?| (ARRAY[$1::text] || $3::text[] || $4::text[])
  AND (jsonb_path_exists(payload::jsonb, 'strict $.** ? (@ == $id)', jsonb_build_object('id', $1::text))
       OR payload #>> '{{data,object,charge}}' = ANY($3::text[])
       OR payload #>> '{{data,object,payment_intent}}' = ANY($4::text[]))
ORDER BY created, id
FOR UPDATE SKIP LOCKED
"""

PAYMENT_REFERENCES = """
SELECT coalesce(array_agg(id) FILTER (WHERE kind = 'charge'), '{}') AS charges,
       coalesce(array_agg(DISTINCT payment_intent_id) FILTER (WHERE payment_intent_id IS NOT NULL), '{}') AS intents,
       coalesce((SELECT array_agg(p.id) FROM payments AS p JOIN invoices AS i ON i.id = p.invoice_id
                 WHERE i.customer_id = $1 AND p.kind = 'invoice_payment'), '{}') AS invoice_payments
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


async def _load(conn: asyncpg.Connection, customer_ids: set[str], ctx: ProcessingContext) -> None:
    """Look the customers up once per batch; `ctx.tombstones` holds None for those not deleted."""
    ids = sorted(customer_ids - ctx.tombstones.keys())
    if not ids:
        return
    ctx.tombstones.update(dict.fromkeys(ids))
    for row in await conn.fetch(GET_TOMBSTONES, ids):
        ctx.tombstones[row["customer_id"]] = _tombstone(row)


async def load_tombstones(conn: asyncpg.Connection, records: list[EventRecord], ctx: ProcessingContext) -> None:
    """Find which customers of a batch are deleted, in one query, before any handler runs."""
    await _load(conn, {r.customer_id for r in records if r.customer_id}, ctx)


async def admit_event(
    conn: asyncpg.Connection, record: EventRecord, handler: Handler | None, ctx: ProcessingContext
) -> tuple[EventRecord, Handler | None]:
    """What of an event of a deleted customer may apply: (the event to apply, its handler or None)."""
    tombstone = ctx.tombstones.get(record.customer_id) if record.customer_id else None
    if tombstone is None or record.type == "customer.deleted":
        # Not deleted; or the deletion itself, again (a re-delivery, a replay): it re-applies the mode.
        return record, handler
    if ctx.settings.deleted_customers == "delete":
        await conn.execute(DELETE_EVENT, record.id)
        # Touched, so that settle_deletions purges whatever an earlier mode left of the customer.
        ctx.touched.add(tombstone.customer_id)
        log.debug("deleted_customer_event_dropped", event_id=record.id, event_type=record.type)
        return record, None
    scrubbed = scrub_event(record.payload)
    if scrubbed != record.payload:
        await conn.execute(UPDATE_PAYLOADS, [record.id], [_encoded(record.id, scrubbed, _stub_of(record))])
        record = replace(record, payload=scrubbed, raw=None)
    return record, handler


async def settle_deletions(conn: asyncpg.Connection, customer_ids: list[str], ctx: ProcessingContext) -> None:
    """Refresher, first of all: apply the policy to what the batch wrote for deleted customers.

    Runs after the batch's rows are written, so it sees them whichever order the deletion and
    the customer's other events came in; customers touched only indirectly (the invoice's
    customer of an invoice payment) are looked up here.
    """
    await _apply_to_stored(conn, ctx)
    await _load(conn, set(customer_ids), ctx)
    gone = [ctx.tombstones[c] for c in customer_ids if ctx.tombstones.get(c) is not None]
    if not gone:
        return
    ids = [t.customer_id for t in gone]
    if ctx.settings.deleted_customers == "delete":
        await conn.fetchval(PURGE_CUSTOMERS, ids)
    else:
        await conn.fetchval(ANONYMIZE_CUSTOMERS, ids, [t.deleted_at for t in gone], DELETED_TAG)


def _stub_of(row: Any) -> dict[str, Any]:
    """What is kept of a stored event whose payload cannot be read or scrubbed: no personal data."""
    get = row.__getitem__ if isinstance(row, (dict, asyncpg.Record)) else lambda key: getattr(row, key)
    created = get("created")
    return {
        "id": get("id"),
        "object": "event",
        "type": get("type"),
        "created": int(created.timestamp()) if isinstance(created, datetime) else created,
        "data": {"object": {"id": get("object_id"), "object": get("object_type"), "customer": get("customer_id")}},
        "stripeline_note": "payload unreadable; replaced when its customer was deleted in Stripe",
    }


def _encoded(event_id: str, payload: Any, stub: dict[str, Any]) -> str:
    try:
        return orjson.dumps(payload).decode()
    except (TypeError, ValueError):  # orjson.JSONEncodeError is a TypeError: too deep, say
        log.warning("stored_payload_replaced", event_id=event_id, reason="unencodable")
        return orjson.dumps(stub).decode()


def _scrubbed_text(row: asyncpg.Record) -> str | None:
    """The stored payload without personal data, as JSON text; None when it had none.

    A payload that cannot be read or scrubbed (nested deeper than any Stripe object) is
    replaced by a stub: one odd event must never keep a customer's personal data in the store.
    """
    try:
        payload = orjson.loads(row["payload"])
        scrubbed = scrub_event(payload)
    except (ValueError, RecursionError):  # orjson.JSONDecodeError is a ValueError
        log.warning("stored_payload_replaced", event_id=row["id"], reason="unreadable")
        return orjson.dumps(_stub_of(row)).decode()
    if scrubbed == payload:
        return None
    return _encoded(row["id"], scrubbed, _stub_of(row))


async def _scrub_payloads(conn: asyncpg.Connection, query: str, *args: Any) -> int:
    """Scrub the stored events a query selects, in batches; return how many changed."""
    changed = 0
    ids: list[str] = []
    payloads: list[str] = []
    async for row in conn.cursor(query, *args, prefetch=SCRUB_BATCH):
        text = _scrubbed_text(row)
        if text is not None:
            ids.append(row["id"])
            payloads.append(text)
        if len(ids) >= SCRUB_BATCH:
            await conn.execute(UPDATE_PAYLOADS, ids, payloads)
            changed += len(ids)
            ids, payloads = [], []
    if ids:
        await conn.execute(UPDATE_PAYLOADS, ids, payloads)
        changed += len(ids)
    return changed


async def _scrub_mentions(
    conn: asyncpg.Connection, tombstone: Tombstone, since: datetime | None, references: asyncpg.Record
) -> int:
    if tombstone.mentions_scrubbed_at is not None:
        return 0
    since = since or datetime(1970, 1, 1, tzinfo=timezone.utc)
    changed = await _scrub_payloads(
        conn, MENTIONING_EVENTS, tombstone.customer_id, since, references["charges"], references["intents"]
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


def _last_snapshot(event: EventRecord) -> Any:
    """The customer as its deletion shows it, without personal data: its newest version. Some
    API versions send only `{id, object, deleted}`: then the row is merely known to exist."""
    scrubbed = replace(event, payload=scrub_event(event.payload), raw=None)
    if "created" not in scrubbed.object:
        return customers.customer_placeholder(scrubbed, event.customer_id)
    return customers.customer_snapshot(scrubbed)


async def _anonymize_stored(
    conn: asyncpg.Connection, event: EventRecord, tombstone: Tombstone, ctx: ProcessingContext, *, known: bool
) -> dict[str, int]:
    if ctx.rebuilding and known and tombstone.mentions_scrubbed_at is not None:
        # A rebuild applies every stored event, and the tombstone was there before this
        # batch: each of the customer's events was scrubbed as it was admitted, in this run
        # (admit_event) or since the deletion was first applied; the mentions were scrubbed
        # then too. Reading all of them again (a tenth of a rebuild) would change nothing.
        return {"events_scrubbed": 0, "outbox_scrubbed": await _outbox_mentions(conn, tombstone.customer_id,
                                                                                delete=False)}
    own = await _scrub_payloads(conn, OWN_EVENTS, tombstone.customer_id)
    references = await conn.fetchrow(PAYMENT_REFERENCES, tombstone.customer_id)
    mentions = await _scrub_mentions(conn, tombstone, _when(event.object.get("created")), references)
    outbox = await _outbox_mentions(conn, tombstone.customer_id, delete=False)
    return {"events_scrubbed": own + mentions, "outbox_scrubbed": outbox}


async def _delete_stored(conn: asyncpg.Connection, event: EventRecord, tombstone: Tombstone) -> dict[str, int]:
    references = await conn.fetchrow(PAYMENT_REFERENCES, tombstone.customer_id)
    events = await conn.fetchval(DELETE_CUSTOMER_EVENTS, tombstone.customer_id, references["invoice_payments"])
    mentions = await _scrub_mentions(conn, tombstone, _when(event.object.get("created")), references)
    outbox = await _outbox_mentions(conn, tombstone.customer_id, delete=True)
    return {"events_deleted": events, "events_scrubbed": mentions, "outbox_deleted": outbox}


@dataclass(frozen=True)
class _Deletion:
    """A deletion this batch applied: what its customer left in the store waits for the
    batch's rows (its payments name the charges whose mentions are scrubbed)."""

    event: EventRecord
    known: bool  # the customer's tombstone was there before this batch


async def on_customer_deleted(conn: asyncpg.Connection, event: EventRecord, ctx: ProcessingContext) -> None:
    """Record the tombstone; the deletion policy is applied to what the customer left in the
    store (`_apply_to_stored`) and to its rows once this batch's writes are in
    (`settle_deletions`)."""
    customer_id = event.customer_id
    if customer_id is None:
        log.warning("customer_deletion_without_id", event_id=event.id)
        return
    known = ctx.tombstones.get(customer_id) is not None  # loaded before the batch's handlers ran
    row = await conn.fetchrow(RECORD_TOMBSTONE, customer_id, event.account, event.created, event.id)
    ctx.tombstones[customer_id] = _tombstone(row)
    ctx.touched.add(customer_id)
    ctx.deletions.setdefault(customer_id, _Deletion(event, known))
    if ctx.settings.deleted_customers != "delete":
        ctx.writes.stage(_last_snapshot(event))


async def _apply_to_stored(conn: asyncpg.Connection, ctx: ProcessingContext) -> None:
    """The batch's deletions, applied to the stored events (and outbox messages) of their
    customers and to those that mention them, after the batch's one flush: a deletion used to
    flush the batch's writes so far itself, about eight statements more per deletion."""
    deletions, ctx.deletions = ctx.deletions, {}
    mode = ctx.settings.deleted_customers
    for customer_id, deletion in sorted(deletions.items()):
        started = time.perf_counter()
        tombstone = ctx.tombstones[customer_id]
        if mode == "delete":
            counts = await _delete_stored(conn, deletion.event, tombstone)
        else:
            counts = await _anonymize_stored(conn, deletion.event, tombstone, ctx, known=deletion.known)
        log.info(
            "customer_deletion_applied",
            event_id=deletion.event.id,
            customer_id=customer_id,
            mode=mode,
            duration_ms=round((time.perf_counter() - started) * 1000, 2),
            **counts,
        )


# Tombstone, then anonymize or delete the customer (STRIPELINE_DELETED_CUSTOMERS).
PROJECTIONS = (
    Projection({"customer.deleted": "tombstone, then anonymize or delete the customer (STRIPELINE_DELETED_CUSTOMERS)"},
               on_customer_deleted),
)
