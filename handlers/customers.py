"""Customers: `customer.created` and `customer.updated`, and placeholders.

`customer.deleted` belongs to handlers/deletion.py (the anonymize/delete policy): the deletion's
own snapshot is the customer's newest version, and the policy is laid over the row after every
batch that touches it, so the row follows its events like any other.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import asyncpg

from stripeline.handlers import discounts
from stripeline.model.context import ProcessingContext
from stripeline.model.events import EventRecord
from stripeline.model.fields import text, ts, verb_rank
from stripeline.model.writes import (
    Bool,
    Json,
    Projection,
    Snapshot,
    Table,
    Text,
    Timestamp,
    own_snapshot,
    placeholder_snapshot,
)

# The fields Encharge maps (email, name, phone, address, currency, delinquent); `customer.deleted`
# is handlers/deletion.py's.
EVENTS = {
    "customer.created": "a new customer: the row Encharge maps (email, name, address, currency, ...)",
    "customer.updated": "a changed customer: the whole snapshot, if newer than the row's",
}

ADDRESS_KEYS = ("line1", "line2", "city", "state", "postal_code", "country")

class CustomerRow(NamedTuple):
    id: Text
    account: Text
    livemode: Bool
    email: Text
    name: Text
    phone: Text
    description: Text
    address: Json
    delinquent: Bool
    currency: Text
    metadata: Json
    created_at: Timestamp


UPSERT_CUSTOMERS = """
WITH incoming AS (
    SELECT i.* FROM {incoming}
    -- a placeholder only for a customer not stored yet (skipping it here takes no row lock)
    WHERE i.event_created IS NOT NULL OR NOT EXISTS (SELECT 1 FROM customers AS c WHERE c.id = i.id)
),
stored AS (
    SELECT c.id, c.event_created, c.event_rank, c.event_id FROM customers AS c JOIN incoming USING (id)
),
written AS (
    INSERT INTO customers AS c ({columns})
    SELECT {values} FROM incoming ORDER BY id
    ON CONFLICT (id) DO UPDATE SET {updates}, last_synced_at = now()
    WHERE (excluded.event_created, excluded.event_rank) > (c.event_created, c.event_rank)
       OR ((excluded.event_created, excluded.event_rank) = (c.event_created, c.event_rank)
           AND CASE WHEN excluded.event_rank = 0 THEN excluded.event_id > coalesce(c.event_id, '')
                    ELSE {settled} AND excluded.event_id <> c.event_id END)
)
-- Rows stored from the same second as the incoming event: the flush may settle them by evidence.
SELECT i.id, s.event_id FROM incoming AS i JOIN stored AS s USING (id)
WHERE NOT {settled} AND i.event_rank > 0 AND s.event_created = i.event_created
"""


def _address(value: Any) -> dict[str, Any] | None:
    if not isinstance(value, dict):
        return None
    return {key: value.get(key) for key in ADDRESS_KEYS}


def customer_snapshot(event: EventRecord) -> Snapshot:
    """The customers row as a `customer.*` event shows it."""
    obj = event.object
    row = CustomerRow(
        id=obj["id"],
        account=event.account,
        livemode=event.livemode,
        email=text(obj.get("email")),
        name=text(obj.get("name")),
        phone=text(obj.get("phone")),
        description=text(obj.get("description")),
        address=_address(obj.get("address")),
        delinquent=obj.get("delinquent") is True,
        currency=text(obj.get("currency")),
        metadata=obj.get("metadata") if isinstance(obj.get("metadata"), dict) else {},
        created_at=ts(obj.get("created")),
    )
    return own_snapshot(CUSTOMERS, event, obj["id"], verb_rank(event.type), row)


def customer_placeholder(event: EventRecord, customer_id: str | None) -> Snapshot | None:
    """A customer known so far only as the owner of another object."""
    if not customer_id:
        return None
    row = CustomerRow(customer_id, event.account, event.livemode, None, None, None, None, None, False, None, {}, None)
    return placeholder_snapshot(CUSTOMERS, customer_id, row)


CUSTOMERS = Table(
    name="customers",
    row=CustomerRow,
    order=30,
    template=UPSERT_CUSTOMERS,
    evidence_types=frozenset(EVENTS),
    project=customer_snapshot,
)


async def on_customer_event(conn: asyncpg.Connection, event: EventRecord, ctx: ProcessingContext) -> None:
    """The customer, and (before basil) the customer-wide coupon it carries."""
    ctx.touch(event)
    ctx.writes.stage(customer_snapshot(event))
    # Before basil a customer-wide coupon arrives inside the customer.
    discount = event.object.get("discount")
    if isinstance(discount, dict):
        ctx.writes.stage(discounts.embedded_discount_snapshot(event, discount, customer_id=event.object["id"]))




def address_of(row: dict[str, Any]) -> dict[str, Any]:
    """The contract's address object, every key present."""
    address = row.get("address") or {}
    return {key: address.get(key) for key in ADDRESS_KEYS}


PROJECTIONS = (Projection(EVENTS, on_customer_event),)
