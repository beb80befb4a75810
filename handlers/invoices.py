"""Invoices: every `invoice.*` event we store carries the whole invoice.

API versions: before basil the subscription is `invoice.subscription`; from basil on it is
`invoice.parent.subscription_details.subscription`. The paid amount and time come from the
invoice (`amount_paid`, `status_transitions.paid_at`) or, failing those, from its `payments`.
Status only moves forward inside one second (draft < open < paid/void/uncollectible; see
`invoice_rank`). `invoice.upcoming` has no id and is never stored as an invoice: it has no
handler. A deleted (draft) invoice keeps its row, marked deleted, terminal.
"""

from __future__ import annotations

from typing import Any

import asyncpg

from app.events import EventRecord
from app.processing import ProcessingContext
from handlers import payments
from handlers.customers import customer_placeholder
from handlers.fields import CREATED_RANK, DELETED_RANK, integer, listed, ref, text, ts
from handlers.writes import Snapshot, Table, own_snapshot

INVOICE_EVENTS = frozenset(
    {
        "invoice.created",
        "invoice.finalized",
        "invoice.updated",
        "invoice.paid",
        "invoice.payment_succeeded",
        "invoice.payment_failed",
        "invoice.payment_action_required",
        "invoice.voided",
        "invoice.marked_uncollectible",
        "invoice.deleted",
    }
)

STATUS_LEVELS = {"draft": 1, "open": 2, "paid": 3, "void": 3, "uncollectible": 3}
# Events that move an invoice into its status: first among that status's events of a second.
ENTERING_EVENTS = frozenset(
    {"invoice.finalized", "invoice.paid", "invoice.payment_succeeded", "invoice.voided", "invoice.marked_uncollectible"}
)

UPSERT_INVOICES = """
WITH incoming AS (
    SELECT i.*
    FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[], $7::text[], $8::text[],
                $9::int8[], $10::int8[], $11::int8[], $12::int8[], $13::text[], $14::timestamptz[],
                $15::timestamptz[], $16::timestamptz[], $17::timestamptz[], $18::timestamptz[], $19::int4[],
                $20::timestamptz[], $21::bool[], $22::timestamptz[], $23::int2[], $24::text[])
         AS i(id, account, customer_id, subscription_id, status, number, billing_reason, currency, amount_due,
              amount_paid, amount_remaining, total, description, created_at, period_start, period_end, due_date,
              paid_at, attempt_count, next_payment_attempt, deleted, event_created, event_rank, event_id)
),
stored AS (
    SELECT inv.id, inv.event_created, inv.event_rank, inv.event_id FROM invoices AS inv JOIN incoming USING (id)
),
written AS (
    INSERT INTO invoices AS inv (id, account, customer_id, subscription_id, status, number, billing_reason, currency,
                                 amount_due, amount_paid, amount_remaining, total, description, created_at,
                                 period_start, period_end, due_date, paid_at, attempt_count, next_payment_attempt,
                                 deleted, event_created, event_rank, event_id)
    SELECT * FROM incoming ORDER BY id
    ON CONFLICT (id) DO UPDATE SET
        account = excluded.account, customer_id = excluded.customer_id, subscription_id = excluded.subscription_id,
        status = excluded.status, number = excluded.number, billing_reason = excluded.billing_reason,
        currency = excluded.currency, amount_due = excluded.amount_due, amount_paid = excluded.amount_paid,
        amount_remaining = excluded.amount_remaining, total = excluded.total, description = excluded.description,
        created_at = excluded.created_at, period_start = excluded.period_start, period_end = excluded.period_end,
        due_date = excluded.due_date, paid_at = excluded.paid_at, attempt_count = excluded.attempt_count,
        next_payment_attempt = excluded.next_payment_attempt, deleted = excluded.deleted,
        event_created = excluded.event_created, event_rank = excluded.event_rank, event_id = excluded.event_id,
        last_synced_at = now()
    WHERE NOT inv.deleted
      AND ((excluded.event_created, excluded.event_rank) > (inv.event_created, inv.event_rank)
           OR ((excluded.event_created, excluded.event_rank) = (inv.event_created, inv.event_rank)
               AND $25::bool AND excluded.event_id <> inv.event_id))
)
SELECT i.id, s.event_id FROM incoming AS i JOIN stored AS s USING (id)
WHERE NOT $25::bool AND i.event_rank > 0 AND s.event_created = i.event_created
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
    row = (
        obj["id"],
        event.account,
        ref(obj.get("customer")),
        subscription_of(obj),
        status if status in STATUS_LEVELS else None,
        text(obj.get("number")),
        text(obj.get("billing_reason")),
        text(obj.get("currency")),
        integer(obj.get("amount_due")),
        amount_paid,
        integer(obj.get("amount_remaining")),
        integer(obj.get("total")),
        _description(obj),
        ts(obj.get("created")),
        ts(obj.get("period_start")),
        ts(obj.get("period_end")),
        ts(obj.get("due_date")),
        paid_at,
        integer(obj.get("attempt_count")),
        ts(obj.get("next_payment_attempt")),
        event.type == "invoice.deleted" or obj.get("deleted") is True,
    )
    return own_snapshot(INVOICES, event, obj["id"], invoice_rank(event), row)


INVOICES = Table(
    name="invoices",
    order=60,
    upsert=UPSERT_INVOICES,
    evidence_types=INVOICE_EVENTS,
    project=invoice_snapshot,
)


def _stage(event: EventRecord, ctx: ProcessingContext) -> None:
    obj = event.object
    ctx.writes.note(event, ctx)
    ctx.writes.stage(invoice_snapshot(event))
    ctx.writes.stage(customer_placeholder(event, ref(obj.get("customer"))))
    for payment in _payments(obj):
        ctx.writes.stage(payments.embedded_invoice_payment_snapshot(event, payment, obj["id"]))


async def on_invoice_created(conn: asyncpg.Connection, event: EventRecord, ctx: ProcessingContext) -> None:
    """A new (draft) invoice; on the timeline."""
    _stage(event, ctx)


async def on_invoice_finalized(conn: asyncpg.Connection, event: EventRecord, ctx: ProcessingContext) -> None:
    """Draft to open: number and amounts fixed."""
    _stage(event, ctx)


async def on_invoice_updated(conn: asyncpg.Connection, event: EventRecord, ctx: ProcessingContext) -> None:
    """Any change; its previous_attributes order it among the invoice's events of its second."""
    _stage(event, ctx)


async def on_invoice_paid(conn: asyncpg.Connection, event: EventRecord, ctx: ProcessingContext) -> None:
    """Paid (by any means): amount and time of the customer's last payment."""
    _stage(event, ctx)


async def on_invoice_payment_succeeded(conn: asyncpg.Connection, event: EventRecord, ctx: ProcessingContext) -> None:
    """Paid by a successful charge; the same state as `invoice.paid`."""
    _stage(event, ctx)


async def on_invoice_payment_failed(conn: asyncpg.Connection, event: EventRecord, ctx: ProcessingContext) -> None:
    """A failed attempt: attempt count and next retry; on the timeline."""
    _stage(event, ctx)


async def on_invoice_payment_action_required(
    conn: asyncpg.Connection, event: EventRecord, ctx: ProcessingContext
) -> None:
    """The customer must authenticate the payment (3-D Secure)."""
    _stage(event, ctx)


async def on_invoice_voided(conn: asyncpg.Connection, event: EventRecord, ctx: ProcessingContext) -> None:
    """Voided: final, never paid."""
    _stage(event, ctx)


async def on_invoice_marked_uncollectible(conn: asyncpg.Connection, event: EventRecord, ctx: ProcessingContext) -> None:
    """Given up on: final."""
    _stage(event, ctx)


async def on_invoice_deleted(conn: asyncpg.Connection, event: EventRecord, ctx: ProcessingContext) -> None:
    """A draft deleted: the row stays, marked deleted, so no late event revives it."""
    _stage(event, ctx)
