"""Helpers for the replay, import and backfill tests: handler stand-ins, histories, the CLI.

The stand-ins (`doubles`) are small handlers with real SQL on the real tables, written as the
contract asks of handlers (an older event never overwrites a newer one), plus one that is
deliberately sensitive to order and repetition: invoice events append their id to the
invoice's description, so only an exact, exactly-once replay in (created, id) order reproduces
it. Tests that compare whole derived tables use the product's registry.
"""

from __future__ import annotations

import dataclasses
import os
import random
import subprocess
import sys
from typing import Any

from stripeline.model.context import Registry
from tests import fake_stripe
from tests.factories import event

UPSERT_CUSTOMER = """
INSERT INTO customers (id, email, name, created_at, event_created, event_id)
VALUES ($1, $2, $3, to_timestamp($4), $5, $6)
ON CONFLICT (id) DO UPDATE
SET email = excluded.email, name = excluded.name, created_at = excluded.created_at,
    event_created = excluded.event_created, event_id = excluded.event_id
WHERE (customers.event_created, coalesce(customers.event_id, '')) < (excluded.event_created, excluded.event_id)
"""

UPSERT_SUBSCRIPTION = """
INSERT INTO subscriptions (id, customer_id, status, event_created, event_id)
VALUES ($1, $2, $3, $4, $5)
ON CONFLICT (id) DO UPDATE
SET customer_id = excluded.customer_id, status = excluded.status,
    event_created = excluded.event_created, event_id = excluded.event_id
WHERE (subscriptions.event_created, coalesce(subscriptions.event_id, '')) < (excluded.event_created, excluded.event_id)
"""

APPEND_TO_INVOICE = """
INSERT INTO invoices (id, customer_id, description, event_created, event_id)
VALUES ($1, $2, $3, $4, $3)
ON CONFLICT (id) DO UPDATE
SET description = invoices.description || ' ' || excluded.description, event_id = excluded.event_id
"""

REFRESH_MRR = """
UPDATE customers AS c
SET mrr = 1000 * (SELECT count(*) FROM subscriptions AS s
                  WHERE s.customer_id = c.id AND s.status IN ('active', 'past_due'))
WHERE c.id = ANY($1::text[])
"""
LEAVE_SEGMENT = """
DELETE FROM segment_memberships AS m
USING customers AS c
WHERE m.segment = 'customers' AND m.customer_id = c.id AND c.id = ANY($1::text[]) AND c.mrr = 0
"""
ENTER_SEGMENT = """
INSERT INTO segment_memberships (segment, customer_id, entered_at)
SELECT 'customers', id, $2 FROM customers WHERE id = ANY($1::text[]) AND mrr > 0
ON CONFLICT DO NOTHING
"""


async def on_customer(conn, record, ctx) -> None:
    obj = record.object
    await conn.execute(
        UPSERT_CUSTOMER, obj["id"], obj.get("email"), obj.get("name"), obj.get("created", 0), record.created, record.id
    )


async def on_subscription(conn, record, ctx) -> None:
    obj = record.object
    await conn.execute(UPSERT_SUBSCRIPTION, obj["id"], obj["customer"], obj["status"], record.created, record.id)


async def on_invoice(conn, record, ctx) -> None:
    await conn.execute(APPEND_TO_INVOICE, record.object["id"], record.customer_id, record.id, record.created)


async def refresh_customers(conn, customer_ids, ctx) -> None:
    await conn.execute(REFRESH_MRR, customer_ids)
    await conn.execute(LEAVE_SEGMENT, customer_ids)
    await conn.execute(ENTER_SEGMENT, customer_ids, ctx.now)


DOUBLES = {
    "customer.created": on_customer,
    "customer.updated": on_customer,
    "customer.subscription.created": on_subscription,
    "customer.subscription.updated": on_subscription,
    "customer.subscription.deleted": on_subscription,
    "invoice.created": on_invoice,
    "invoice.paid": on_invoice,
}


def doubles() -> Registry:
    """The stand-in handlers and refresher."""
    return Registry(handlers=dict(DOUBLES), refreshers=(refresh_customers,))


def with_handlers(registry: Registry, replaced: dict) -> Registry:
    """The registry with these event types handled by these handlers."""
    return dataclasses.replace(registry, handlers={**registry.handlers, **replaced})


def customer_history(rng: random.Random, base: int, *, ignored: bool = True) -> list[dict[str, Any]]:
    """One customer's life in Stripe events, with objects shaped as Stripe sends them.

    Sign-up, edits, a subscription moving through states, invoices created and paid. Times
    come from a narrow window so that many events share a second, as they do in Stripe, and
    the id must settle the order.
    """
    product = fake_stripe.product()
    price = fake_stripe.price(product["id"])
    customer = fake_stripe.customer(created=base)
    subscription = fake_stripe.subscription(customer["id"], price, status="trialing", created=base)

    def at() -> int:
        return base + rng.randrange(0, 120)

    payloads = [event("customer.created", customer, created=base)]
    for n in range(rng.randrange(1, 4)):
        changed = dict(customer, email=f"{n}.{customer['email']}", name=f"Name {n}")
        payloads.append(event("customer.updated", changed, created=at(), previous_attributes={"name": customer["name"]}))
    for status in rng.sample(["trialing", "active", "past_due", "canceled", "active"], k=rng.randrange(1, 5)):
        payloads.append(event("customer.subscription.updated", dict(subscription, status=status), created=at()))
    for _ in range(rng.randrange(1, 3)):
        invoice = fake_stripe.invoice(customer["id"], subscription["id"], status="open")
        payloads.append(event("invoice.created", dict(invoice, status="draft"), created=at()))
        payloads.append(event("invoice.paid", dict(invoice, status="paid"), created=at()))
    if ignored:
        charge = {"id": fake_stripe.stripe_id("ch"), "object": "charge", "customer": customer["id"], "amount": 2900}
        payloads.append(event("charge.succeeded", charge, created=at()))
    return payloads


def generated_history(seed: int, customers: int, base: int = 1_700_000_000) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    payloads = []
    for n in range(customers):
        payloads += customer_history(rng, base + n * 7)
    rng.shuffle(payloads)
    return payloads


# Times that say when a row was written, not what happened: they differ between two runs.
RUN_TIMES = {"entered_at"}
COLUMNS = """
SELECT column_name FROM information_schema.columns
WHERE table_schema = current_schema() AND table_name = $1 AND coalesce(column_default, '') NOT LIKE 'now()%'
ORDER BY ordinal_position
"""


async def derived_state(conn) -> dict[str, list[tuple]]:
    """Every Stripe-derived table in full, but for times of writing (defaults of now(), entered_at)."""
    from stripeline.processing.replay import DERIVED_TABLES

    state = {}
    for table in DERIVED_TABLES:
        columns = [r["column_name"] for r in await conn.fetch(COLUMNS, table) if r["column_name"] not in RUN_TIMES]
        rows = await conn.fetch(f"SELECT {', '.join(columns)} FROM {table}")  # names from the catalog
        state[table] = sorted((tuple(row) for row in rows), key=repr)
    return state


BILLING = "SELECT id, mrr, last_payment_id, last_payment_amount, last_payment_at FROM customers ORDER BY id"


async def billing_is_settled(conn) -> bool:
    """No customer waits for its MRR and last payment (billing_unsettled is empty), and each
    customer's are what its rows give now (recomputing them changes nothing)."""
    from stripeline.handlers import billing

    before = await conn.fetch(BILLING)
    async with conn.transaction():
        await billing.refresh_customers(conn, [row["id"] for row in before])
        after = await conn.fetch(BILLING)
    return before == after and await conn.fetchval("SELECT count(*) FROM billing_unsettled") == 0


async def billing_model(conn) -> dict[str, list]:
    """The derived state the doubles write, without times that depend on when it ran."""
    return {
        "customers": [
            tuple(r) for r in await conn.fetch("SELECT id, email, name, mrr, event_id FROM customers ORDER BY id")
        ],
        "subscriptions": [
            tuple(r) for r in await conn.fetch("SELECT id, customer_id, status, event_id FROM subscriptions ORDER BY id")
        ],
        "invoices": [tuple(r) for r in await conn.fetch("SELECT id, customer_id, description FROM invoices ORDER BY id")],
        "segments": [
            tuple(r) for r in await conn.fetch("SELECT segment, customer_id FROM segment_memberships ORDER BY 1, 2")
        ],
    }


def command(argv: list[str], settings) -> int:
    """Run a subcommand in this process (so test handlers apply), past `main`'s logging setup."""
    from stripeline.commands.cli import build_parser

    args = build_parser().parse_args(argv)
    return args.run(args, settings)


def command_environment(env: dict[str, str]) -> dict[str, str]:
    return {"PATH": os.environ.get("PATH", ""), "LOG_LEVEL": "warning", **env}


def stripeline(*argv: str, env: dict[str, str], stdin: bytes | None = None) -> subprocess.CompletedProcess:
    """Run the real `stripeline` in a process of its own, as a user would.

    In-process `main()` would point structlog at this test's captured stdout for good.
    """
    command = [sys.executable, "-m", "stripeline", *argv]
    return subprocess.run(command, input=stdin, capture_output=True, env=command_environment(env), timeout=60)


def stripeline_process(*argv: str, env: dict[str, str], new_group: bool = False, stdin: Any = None) -> subprocess.Popen:
    """`stripeline` started in the background, for a test to signal (`new_group`: in a process
    group of its own, as a terminal starts a command, for a signal to the whole group)."""
    command = [sys.executable, "-m", "stripeline", *argv]
    return subprocess.Popen(command, stdin=stdin, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env=command_environment(env), process_group=0 if new_group else None)


def summary_lines(output: bytes) -> list[str]:
    """stdout without log lines (JSON): what the command printed for the user."""
    return [line for line in output.decode().splitlines() if line and not line.startswith("{")]
