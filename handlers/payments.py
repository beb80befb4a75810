"""Payments: charges (`charge.succeeded`, `.failed`, `.refunded`) and basil's invoice payments.

An `invoice_payment` payload names its invoice but not its customer: the customer is the
invoice's, found when the batch is flushed (handlers/writes.py) and joined when read. Before
basil a charge names its invoice; from basil on it does not. Payments follow the context-free
order (created, rank, event id): a refund after the charge it refunds.
"""

from __future__ import annotations

from typing import Any

import asyncpg

from app.events import EventRecord
from app.processing import ProcessingContext
from handlers.customers import customer_placeholder
from handlers.fields import CHANGED_RANK, integer, ref, text, ts
from handlers.writes import Snapshot, Table, embedded_snapshot, own_snapshot

REFUNDED_RANK = CHANGED_RANK + 10

UPSERT_PAYMENTS = """
INSERT INTO payments AS p (id, account, kind, customer_id, invoice_id, payment_intent_id, status, amount,
                           amount_refunded, currency, description, failure_code, created_at, paid_at,
                           event_created, event_rank, event_id)
SELECT i.*
FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[], $7::text[], $8::int8[],
            $9::int8[], $10::text[], $11::text[], $12::text[], $13::timestamptz[], $14::timestamptz[],
            $15::timestamptz[], $16::int2[], $17::text[])
     AS i(id, account, kind, customer_id, invoice_id, payment_intent_id, status, amount, amount_refunded, currency,
          description, failure_code, created_at, paid_at, event_created, event_rank, event_id)
ORDER BY i.id
ON CONFLICT (id) DO UPDATE SET
    account = excluded.account, kind = excluded.kind, customer_id = excluded.customer_id,
    invoice_id = excluded.invoice_id, payment_intent_id = excluded.payment_intent_id, status = excluded.status,
    amount = excluded.amount, amount_refunded = excluded.amount_refunded, currency = excluded.currency,
    description = excluded.description, failure_code = excluded.failure_code, created_at = excluded.created_at,
    paid_at = excluded.paid_at, event_created = excluded.event_created, event_rank = excluded.event_rank,
    event_id = excluded.event_id, last_synced_at = now()
WHERE (excluded.event_created, excluded.event_rank, excluded.event_id)
      > (p.event_created, p.event_rank, coalesce(p.event_id, ''))
"""

PAYMENTS = Table(name="payments", order=70, upsert=UPSERT_PAYMENTS)


def _charge_row(event: EventRecord, charge: dict[str, Any]) -> tuple:
    status = text(charge.get("status"))
    succeeded = status == "succeeded" or (status is None and charge.get("paid") is True)
    return (
        charge["id"],
        event.account,
        "charge",
        ref(charge.get("customer")),
        ref(charge.get("invoice")),  # before basil only
        ref(charge.get("payment_intent")),
        status,
        integer(charge.get("amount")) or 0,
        integer(charge.get("amount_refunded")) or 0,
        text(charge.get("currency")) or "",
        text(charge.get("description")),
        text(charge.get("failure_code")),
        ts(charge.get("created")),
        ts(charge.get("created")) if succeeded else None,
    )


def invoice_payment_row(event: EventRecord, payment: dict[str, Any], invoice_id: str | None = None) -> tuple:
    """An invoice payment (basil), from its own event or from its invoice's `payments` list."""
    paid = integer(payment.get("amount_paid"))
    method = payment.get("payment") if isinstance(payment.get("payment"), dict) else {}
    transitions = payment.get("status_transitions") if isinstance(payment.get("status_transitions"), dict) else {}
    return (
        payment["id"],
        event.account,
        "invoice_payment",
        None,
        ref(payment.get("invoice")) or invoice_id,
        ref(method.get("payment_intent")) or ref(method.get("charge")),
        text(payment.get("status")),
        paid if paid is not None else integer(payment.get("amount_requested")) or 0,
        0,
        text(payment.get("currency")) or "",
        None,
        None,
        ts(payment.get("created")),
        ts(transitions.get("paid_at")),
    )


def charge_rank(event: EventRecord) -> int:
    return REFUNDED_RANK if event.type == "charge.refunded" else CHANGED_RANK


def charge_snapshot(event: EventRecord) -> Snapshot:
    return own_snapshot(PAYMENTS, event, event.object["id"], charge_rank(event), _charge_row(event, event.object))


def invoice_payment_snapshot(event: EventRecord) -> Snapshot:
    return own_snapshot(PAYMENTS, event, event.object["id"], CHANGED_RANK, invoice_payment_row(event, event.object))


def embedded_invoice_payment_snapshot(event: EventRecord, payment: Any, invoice_id: str) -> Snapshot | None:
    if not isinstance(payment, dict) or not ref(payment.get("id")):
        return None
    return embedded_snapshot(PAYMENTS, event, payment["id"], invoice_payment_row(event, payment, invoice_id))


def _stage_charge(event: EventRecord, ctx: ProcessingContext) -> None:
    ctx.writes.note(event, ctx)
    ctx.writes.stage(charge_snapshot(event))
    ctx.writes.stage(customer_placeholder(event, ref(event.object.get("customer"))))


async def on_charge_succeeded(conn: asyncpg.Connection, event: EventRecord, ctx: ProcessingContext) -> None:
    """Money received: a candidate for the customer's last payment; on the timeline."""
    _stage_charge(event, ctx)


async def on_charge_failed(conn: asyncpg.Connection, event: EventRecord, ctx: ProcessingContext) -> None:
    """A declined payment, with its failure code; on the timeline."""
    _stage_charge(event, ctx)


async def on_charge_refunded(conn: asyncpg.Connection, event: EventRecord, ctx: ProcessingContext) -> None:
    """Money returned, in part or whole: the amount refunded."""
    _stage_charge(event, ctx)


async def on_invoice_payment_paid(conn: asyncpg.Connection, event: EventRecord, ctx: ProcessingContext) -> None:
    """basil: a payment settled an invoice; the customer is the invoice's."""
    snapshot = invoice_payment_snapshot(event)
    ctx.writes.stage(snapshot)
    ctx.writes.touch_customer_of_invoice(snapshot.row[4])
