"""charge.* and invoice_payment.paid: money in, declined, returned."""

from __future__ import annotations

import pytest

from tests import factories as f
from tests.handlers.billing_support import apply, row

T = 1_700_000_000


@pytest.mark.parametrize("api_version", [f.OLD_API_VERSION, f.NEW_API_VERSION])
async def test_succeeded_charge_is_a_payment_of_its_customer(conn, settings, api_version):
    invoice_id = f.new_id("in")
    charge = f.charge_object(f.new_id("cus"), amount=4200, currency="eur", invoice=invoice_id, created=T,
                             description="Subscription creation", api_version=api_version)
    ctx = await apply(conn, settings, [f.event("charge.succeeded", charge, created=T, api_version=api_version)])
    stored = await row(conn, "payments", charge["id"])
    assert ctx.touched == {charge["customer"]}
    assert (stored["kind"], stored["status"], stored["amount"], stored["currency"]) == ("charge", "succeeded", 4200, "eur")
    assert stored["paid_at"].timestamp() == T
    # Before basil a charge names its invoice; from basil on it does not.
    assert stored["invoice_id"] == (invoice_id if api_version == f.OLD_API_VERSION else None)


async def test_failed_charge_keeps_its_failure_code_and_is_not_paid(conn, settings):
    charge = f.charge_object(f.new_id("cus"), status="failed", failure_code="card_declined", created=T)
    await apply(conn, settings, [f.event("charge.failed", charge, created=T)])
    stored = await row(conn, "payments", charge["id"])
    assert (stored["status"], stored["failure_code"], stored["paid_at"]) == ("failed", "card_declined", None)


async def test_refund_in_the_same_second_wins_over_the_charge_in_either_order(conn, settings):
    for reverse in (False, True):
        charge = f.charge_object(f.new_id("cus"), amount=1000, created=T)
        refunded, _ = f.changed(charge, amount_refunded=1000, refunded=True)
        events = [f.event("charge.succeeded", charge, created=T, id="evt_b" + charge["id"]),
                  f.event("charge.refunded", refunded, created=T, id="evt_a" + charge["id"])]
        for payload in (events[::-1] if reverse else events):
            await apply(conn, settings, [payload])
        assert (await row(conn, "payments", charge["id"]))["amount_refunded"] == 1000


async def test_invoice_payment_names_no_customer_but_touches_its_invoice_s_customer(conn, settings):
    customer_id = f.new_id("cus")
    invoice = f.invoice_object(customer_id, status="paid", amount_due=900, amount_paid=900, paid_at=T)
    payment = f.invoice_payment_object(invoice["id"], amount=900, paid_at=T)
    early = await apply(conn, settings, [f.event("invoice_payment.paid", payment, created=T)])
    assert early.touched == set()  # its invoice is not known yet
    await apply(conn, settings, [f.event("invoice.paid", invoice, created=T)])
    again = await apply(conn, settings, [f.event("invoice_payment.paid", payment, created=T, id=f.new_id("evt"))])
    assert again.touched == {customer_id}
    stored = await row(conn, "payments", payment["id"])
    assert (stored["kind"], stored["invoice_id"], stored["amount"], stored["customer_id"]) == (
        "invoice_payment", invoice["id"], 900, None)


async def test_replaying_a_charge_twice_changes_nothing(conn, settings):
    charge = f.charge_object(f.new_id("cus"), created=T)
    payload = f.event("charge.succeeded", charge, created=T)
    await apply(conn, settings, [payload])
    first = await row(conn, "payments", charge["id"])
    await apply(conn, settings, [payload, payload])
    assert await row(conn, "payments", charge["id"]) == first
