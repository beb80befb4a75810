"""Invoices: every `invoice.*` event we store carries the whole invoice.

API versions: before basil the subscription is `invoice.subscription`; from basil on it is
`invoice.parent.subscription_details.subscription`. The paid amount and time come from the
invoice (`amount_paid`, `status_transitions.paid_at`) or, failing those, from its `payments`.
Status only moves forward inside one second (draft < open < paid/void/uncollectible; see
`invoice_rank`). `invoice.upcoming` has no id and is never stored as an invoice: it has no
handler. A deleted (draft) invoice keeps its row, marked deleted, terminal.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import asyncpg

from stripeline.handlers import payments
from stripeline.model.context import ProcessingContext
from stripeline.model.events import EventRecord
from stripeline.model.fields import CREATED_RANK, DELETED_RANK, integer, listed, ref, text, ts
from stripeline.model.writes import BigInt, Bool, Int, Projection, Snapshot, Table, Text, Timestamp, own_snapshot

# Every one carries the whole invoice: paid amount and time give the last payment; created, paid
# and failed are on the timeline.
EVENTS = {
    "invoice.created": "a new (draft) invoice; on the timeline",
    "invoice.finalized": "draft to open: number and amounts fixed",
    "invoice.updated": "any change; its previous_attributes order it among the invoice's events of its second",
    "invoice.paid": "paid (by any means): amount and time of the customer's last payment",
    "invoice.payment_succeeded": "paid by a successful charge; the same state as invoice.paid",
    "invoice.payment_failed": "a failed attempt: attempt count and next retry; on the timeline",
    "invoice.payment_action_required": "the customer must authenticate the payment (3-D Secure)",
    "invoice.voided": "voided: final, never paid",
    "invoice.marked_uncollectible": "given up on: final",
    "invoice.deleted": "a draft deleted: the row stays, marked deleted, so no late event revives it",
}

STATUS_LEVELS = {"draft": 1, "open": 2, "paid": 3, "void": 3, "uncollectible": 3}
# Events that move an invoice into its status: first among that status's events of a second.
ENTERING_EVENTS = frozenset(
    {"invoice.finalized", "invoice.paid", "invoice.payment_succeeded", "invoice.voided", "invoice.marked_uncollectible"}
)

class InvoiceRow(NamedTuple):
    id: Text
    account: Text
    customer_id: Text
    subscription_id: Text
    status: Text  # draft | open | paid | void | uncollectible
    number: Text
    billing_reason: Text
    currency: Text
    amount_due: BigInt
    amount_paid: BigInt
    amount_remaining: BigInt
    total: BigInt
    description: Text  # the invoice's description, else its first line's
    created_at: Timestamp
    period_start: Timestamp
    period_end: Timestamp
    due_date: Timestamp
    paid_at: Timestamp
    attempt_count: Int
    next_payment_attempt: Timestamp
    deleted: Bool  # terminal: only drafts can be deleted


UPSERT_INVOICES = """
WITH incoming AS (
    SELECT i.* FROM {incoming}
),
stored AS (
    SELECT inv.id, inv.event_created, inv.event_rank, inv.event_id FROM invoices AS inv JOIN incoming USING (id)
),
written AS (
    INSERT INTO invoices AS inv ({columns})
    SELECT {values} FROM incoming ORDER BY id
    ON CONFLICT (id) DO UPDATE SET {updates}, last_synced_at = now()
    WHERE NOT inv.deleted
      AND ((excluded.event_created, excluded.event_rank) > (inv.event_created, inv.event_rank)
           OR ((excluded.event_created, excluded.event_rank) = (inv.event_created, inv.event_rank)
               AND {settled} AND excluded.event_id <> inv.event_id))
)
SELECT i.id, s.event_id FROM incoming AS i JOIN stored AS s USING (id)
WHERE NOT {settled} AND i.event_rank > 0 AND s.event_created = i.event_created
"""


def invoice_rank(event: EventRecord) -> int:
    """created 10; draft 20-21, open 30-31, paid/void/uncollectible 40-41 (entering event
    first); deleted 90."""
    if event.type == "invoice.created":
        return CREATED_RANK
    if event.type == "invoice.deleted":
        return DELETED_RANK
    level = STATUS_LEVELS.get(event.object.get("status"), 1)
    return 10 * (level + 1) + (0 if event.type in ENTERING_EVENTS else 1)


def subscription_of(invoice: dict[str, Any]) -> str | None:
    old = ref(invoice.get("subscription"))
    if old:
        return old
    parent = invoice.get("parent")
    if isinstance(parent, dict) and isinstance(parent.get("subscription_details"), dict):
        return ref(parent["subscription_details"].get("subscription"))
    return None


def _payments(invoice: dict[str, Any]) -> list[dict[str, Any]]:
    return [p for p in listed(invoice.get("payments")) if isinstance(p, dict)]


def _paid(invoice: dict[str, Any]) -> tuple[int | None, Any]:
    amount = integer(invoice.get("amount_paid"))
    transitions = invoice.get("status_transitions") if isinstance(invoice.get("status_transitions"), dict) else {}
    paid_at = ts(transitions.get("paid_at"))
    if amount is None or paid_at is None:
        paid = [p for p in _payments(invoice) if p.get("status") == "paid"]
        if amount is None and paid:
            amount = sum(integer(p.get("amount_paid")) or 0 for p in paid)
        if paid_at is None:
            times = [ts((p.get("status_transitions") or {}).get("paid_at")) for p in paid]
            paid_at = max((t for t in times if t is not None), default=None)
    return amount, paid_at


def _description(invoice: dict[str, Any]) -> str | None:
    if text(invoice.get("description")):
        return invoice["description"]
    lines = listed(invoice.get("lines"))
    if lines and isinstance(lines[0], dict):
        return text(lines[0].get("description"))
    return None


def invoice_snapshot(event: EventRecord) -> Snapshot:
    """The invoices row as an `invoice.*` event shows it."""
    obj = event.object
    amount_paid, paid_at = _paid(obj)
    status = text(obj.get("status"))
    row = InvoiceRow(
        id=obj["id"],
        account=event.account,
        customer_id=ref(obj.get("customer")),
        subscription_id=subscription_of(obj),
        status=status if status in STATUS_LEVELS else None,
        number=text(obj.get("number")),
        billing_reason=text(obj.get("billing_reason")),
        currency=text(obj.get("currency")),
        amount_due=integer(obj.get("amount_due")),
        amount_paid=amount_paid,
        amount_remaining=integer(obj.get("amount_remaining")),
        total=integer(obj.get("total")),
        description=_description(obj),
        created_at=ts(obj.get("created")),
        period_start=ts(obj.get("period_start")),
        period_end=ts(obj.get("period_end")),
        due_date=ts(obj.get("due_date")),
        paid_at=paid_at,
        attempt_count=integer(obj.get("attempt_count")),
        next_payment_attempt=ts(obj.get("next_payment_attempt")),
        deleted=event.type == "invoice.deleted" or obj.get("deleted") is True,
    )
    return own_snapshot(INVOICES, event, obj["id"], invoice_rank(event), row)


INVOICES = Table(
    name="invoices",
    row=InvoiceRow,
    order=60,
    template=UPSERT_INVOICES,
    evidence_types=frozenset(EVENTS),
    project=invoice_snapshot,
)


async def on_invoice_event(conn: asyncpg.Connection, event: EventRecord, ctx: ProcessingContext) -> None:
    """The invoice, a placeholder for its customer, and the payments it lists (basil)."""
    obj = event.object
    ctx.touch(event)
    ctx.writes.stage(invoice_snapshot(event))
    for payment in _payments(obj):
        ctx.writes.stage(payments.embedded_invoice_payment_snapshot(event, payment, obj["id"]))


PROJECTIONS = (Projection(EVENTS, on_invoice_event),)
