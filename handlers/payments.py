"""Payments: charges (`charge.succeeded`, `.failed`, `.refunded`) and basil's invoice payments.

An `invoice_payment` payload names its invoice but not its customer: the customer is the
invoice's, found when the batch is flushed (app/model/writes.py) and joined when read. Before
basil a charge names its invoice; from basil on it does not. Payments follow the context-free
order (created, rank, event id): a refund after the charge it refunds.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import asyncpg

from stripeline.model.context import ProcessingContext
from stripeline.model.events import EventRecord
from stripeline.model.fields import CHANGED_RANK, integer, ref, text, ts
from stripeline.model.writes import (
    BigInt,
    Projection,
    Snapshot,
    Table,
    Text,
    Timestamp,
    embedded_snapshot,
    own_snapshot,
)

REFUNDED_RANK = CHANGED_RANK + 10

class PaymentRow(NamedTuple):
    id: Text  # ch_..., py_... or inpay_...
    account: Text
    kind: Text  # charge | invoice_payment
    customer_id: Text  # null for an invoice payment: its customer is its invoice's
    invoice_id: Text
    payment_intent_id: Text
    status: Text
    amount: BigInt
    amount_refunded: BigInt
    currency: Text
    description: Text
    failure_code: Text
    created_at: Timestamp
    paid_at: Timestamp


UPSERT_PAYMENTS = """
INSERT INTO payments AS p ({columns})
SELECT {columns} FROM {incoming}
ORDER BY i.id
ON CONFLICT (id) DO UPDATE SET {updates}, last_synced_at = now()
WHERE (excluded.event_created, excluded.event_rank, excluded.event_id)
      > (p.event_created, p.event_rank, coalesce(p.event_id, ''))
"""

PAYMENTS = Table(name="payments", row=PaymentRow, order=70, template=UPSERT_PAYMENTS)


def _charge_row(event: EventRecord, charge: dict[str, Any]) -> PaymentRow:
    status = text(charge.get("status"))
    succeeded = status == "succeeded" or (status is None and charge.get("paid") is True)
    return PaymentRow(
        id=charge["id"],
        account=event.account,
        kind="charge",
        customer_id=ref(charge.get("customer")),
        invoice_id=ref(charge.get("invoice")),  # before basil only
        payment_intent_id=ref(charge.get("payment_intent")),
        status=status,
        amount=integer(charge.get("amount")) or 0,
        amount_refunded=integer(charge.get("amount_refunded")) or 0,
        currency=text(charge.get("currency")) or "",
        description=text(charge.get("description")),
        failure_code=text(charge.get("failure_code")),
        created_at=ts(charge.get("created")),
        paid_at=ts(charge.get("created")) if succeeded else None,
    )


def invoice_payment_row(event: EventRecord, payment: dict[str, Any], invoice_id: str | None = None) -> PaymentRow:
    """An invoice payment (basil), from its own event or from its invoice's `payments` list."""
    paid = integer(payment.get("amount_paid"))
    method = payment.get("payment") if isinstance(payment.get("payment"), dict) else {}
    transitions = payment.get("status_transitions") if isinstance(payment.get("status_transitions"), dict) else {}
    return PaymentRow(
        id=payment["id"],
        account=event.account,
        kind="invoice_payment",
        customer_id=None,
        invoice_id=ref(payment.get("invoice")) or invoice_id,
        payment_intent_id=ref(method.get("payment_intent")) or ref(method.get("charge")),
        status=text(payment.get("status")),
        amount=paid if paid is not None else integer(payment.get("amount_requested")) or 0,
        amount_refunded=0,
        currency=text(payment.get("currency")) or "",
        description=None,
        failure_code=None,
        created_at=ts(payment.get("created")),
        paid_at=ts(transitions.get("paid_at")),
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


# Charges: money in, declined or returned; the last payment and the timeline.
CHARGE_EVENTS = {
    "charge.succeeded": "money received: a candidate for the customer's last payment; on the timeline",
    "charge.failed": "a declined payment, with its failure code; on the timeline",
    "charge.refunded": "money returned, in part or whole: the amount refunded",
}
# basil: the payments that settled an invoice (the payload names no customer).
INVOICE_PAYMENT_EVENTS = {
    "invoice_payment.paid": "a payment settled an invoice; the customer is the invoice's",
}


async def on_charge_event(conn: asyncpg.Connection, event: EventRecord, ctx: ProcessingContext) -> None:
    """The charge, and a placeholder for its customer."""
    ctx.touch(event)
    ctx.writes.stage(charge_snapshot(event))





async def on_invoice_payment_event(conn: asyncpg.Connection, event: EventRecord, ctx: ProcessingContext) -> None:
    """The invoice payment; its invoice's customer is touched once the flush can tell it."""
    snapshot = invoice_payment_snapshot(event)
    ctx.writes.stage(snapshot)
    ctx.writes.touch_customer_of_invoice(snapshot.row.invoice_id)


PROJECTIONS = (
    Projection(CHARGE_EVENTS, on_charge_event),
    Projection(INVOICE_PAYMENT_EVENTS, on_invoice_payment_event),
)
