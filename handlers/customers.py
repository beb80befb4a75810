"""Customers: `customer.created` and `customer.updated`, and placeholders.

`customer.deleted` belongs to handlers/deletion.py (the anonymize/delete policy): the deletion's
own snapshot is the customer's newest version, and the policy is laid over the row after every
batch that touches it, so the row follows its events like any other.
"""

from __future__ import annotations

from typing import Any

import asyncpg

from app.events import EventRecord
from app.processing import ProcessingContext
from handlers import discounts
from handlers.fields import DELETED_RANK, ref, text, ts, verb_rank
from handlers.writes import Snapshot, Table, own_snapshot, placeholder_snapshot

CUSTOMER_EVENTS = frozenset({"customer.created", "customer.updated"})

ADDRESS_KEYS = ("line1", "line2", "city", "state", "postal_code", "country")

UPSERT_CUSTOMERS = """
WITH incoming AS (
    SELECT i.*
    FROM unnest($1::text[], $2::text[], $3::bool[], $4::text[], $5::text[], $6::text[], $7::text[], $8::text[],
                $9::bool[], $10::text[], $11::text[], $12::timestamptz[], $13::timestamptz[], $14::int2[], $15::text[])
         AS i(id, account, livemode, email, name, phone, description, address, delinquent, currency, metadata,
              created_at, event_created, event_rank, event_id)
    -- a placeholder only for a customer not stored yet (skipping it here takes no row lock)
    WHERE i.event_created IS NOT NULL OR NOT EXISTS (SELECT 1 FROM customers AS c WHERE c.id = i.id)
),
stored AS (
    SELECT c.id, c.event_created, c.event_rank, c.event_id FROM customers AS c JOIN incoming USING (id)
),
written AS (
    INSERT INTO customers AS c (id, account, livemode, email, name, phone, description, address, delinquent,
                                currency, metadata, created_at, event_created, event_rank, event_id)
    SELECT id, account, livemode, email, name, phone, description, address::jsonb, delinquent, currency,
           metadata::jsonb, created_at, coalesce(event_created, '-infinity'), event_rank, event_id
    FROM incoming ORDER BY id
    ON CONFLICT (id) DO UPDATE SET
        account = excluded.account, livemode = excluded.livemode, email = excluded.email, name = excluded.name,
        phone = excluded.phone, description = excluded.description, address = excluded.address,
        delinquent = excluded.delinquent, currency = excluded.currency, metadata = excluded.metadata,
        created_at = excluded.created_at, event_created = excluded.event_created,
        event_rank = excluded.event_rank, event_id = excluded.event_id, last_synced_at = now()
    WHERE (excluded.event_created, excluded.event_rank) > (c.event_created, c.event_rank)
       OR ((excluded.event_created, excluded.event_rank) = (c.event_created, c.event_rank)
           AND CASE WHEN excluded.event_rank = 0 THEN excluded.event_id > coalesce(c.event_id, '')
                    ELSE $16::bool AND excluded.event_id <> c.event_id END)
)
-- Rows stored from the same second as the incoming event: the flush may settle them by evidence.
SELECT i.id, s.event_id FROM incoming AS i JOIN stored AS s USING (id)
WHERE NOT $16::bool AND i.event_rank > 0 AND s.event_created = i.event_created
"""


def _address(value: Any) -> dict[str, Any] | None:
    if not isinstance(value, dict):
        return None
    return {key: value.get(key) for key in ADDRESS_KEYS}


def customer_snapshot(event: EventRecord) -> Snapshot:
    """The customers row as a `customer.*` event shows it."""
    obj = event.object
    row = (
        obj["id"],
        event.account,
        event.livemode,
        text(obj.get("email")),
        text(obj.get("name")),
        text(obj.get("phone")),
        text(obj.get("description")),
        _address(obj.get("address")),
        obj.get("delinquent") is True,
        text(obj.get("currency")),
        obj.get("metadata") if isinstance(obj.get("metadata"), dict) else {},
        ts(obj.get("created")),
    )
    return own_snapshot(CUSTOMERS, event, obj["id"], verb_rank(event.type), row)


def customer_placeholder(event: EventRecord, customer_id: str | None) -> Snapshot | None:
    """A customer known so far only as the owner of another object."""
    if not customer_id:
        return None
    row = (customer_id, event.account, event.livemode, None, None, None, None, None, False, None, {}, None)
    return placeholder_snapshot(CUSTOMERS, customer_id, row)


CUSTOMERS = Table(
    name="customers",
    order=30,
    upsert=UPSERT_CUSTOMERS,
    jsonb_columns=(7, 10),
    evidence_types=CUSTOMER_EVENTS,
    project=customer_snapshot,
)


def _stage(event: EventRecord, ctx: ProcessingContext) -> None:
    ctx.writes.note(event, ctx)
    ctx.writes.stage(customer_snapshot(event))
    # Before basil a customer-wide coupon arrives inside the customer.
    discount = event.object.get("discount")
    if isinstance(discount, dict):
        ctx.writes.stage(discounts.embedded_discount_snapshot(event, discount, customer_id=event.object["id"]))


async def on_customer_created(conn: asyncpg.Connection, event: EventRecord, ctx: ProcessingContext) -> None:
    """A new customer: the row Encharge maps (email, name, address, currency, ...)."""
    _stage(event, ctx)


async def on_customer_updated(conn: asyncpg.Connection, event: EventRecord, ctx: ProcessingContext) -> None:
    """A changed customer: the whole snapshot, if newer than the row's."""
    _stage(event, ctx)


def address_of(row: dict[str, Any]) -> dict[str, Any]:
    """The contract's address object, every key present."""
    address = row.get("address") or {}
    return {key: address.get(key) for key in ADDRESS_KEYS}

