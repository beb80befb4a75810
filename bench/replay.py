"""Time `stripeline replay --rebuild` over N stored events; print events per second.

Creates a fresh database, stores N generated events with realistic Stripe payloads (customer
lifecycles: sign-up, trial, conversion, monthly invoices and charges, some churn), marks them
processed as an old history would be, then runs the same function `replay --rebuild` runs and
prints the rate, and the segment counts at the end. Whatever handlers are registered are the
ones measured; before the billing handlers land that is the mechanism alone (read, decode,
lock, dispatch, commit). `--noop-handlers` registers a do-nothing handler for every type.

    .venv/bin/python bench/replay.py [--events 200000] [--batch-size 1000] [--keep]
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import random
import time
from typing import Any
from urllib.parse import urlparse, urlunparse

import asyncpg

from app.db import connect, create_pool
from app.events import event_from_payload, insert_events
from app.garbage import quiet_garbage_collector
from app.logging import configure_logging
from app.migrate import migrate
from app.replay import replay
from app.settings import Settings

ADMIN_URL = os.environ.get("BENCH_DATABASE_URL", "postgresql://root@127.0.0.1:5432/test")
START = 1_600_000_000
MONTH = 30 * 86400
API_VERSION = "2025-03-31.basil"


class Ids:
    def __init__(self) -> None:
        self.n = 0

    def __call__(self, prefix: str) -> str:
        self.n += 1
        return f"{prefix}_{self.n:014d}bench"


def _event(new_id: Ids, type: str, obj: dict[str, Any], created: int, previous: dict | None = None) -> dict[str, Any]:
    data: dict[str, Any] = {"object": obj}
    if previous is not None:
        data["previous_attributes"] = previous
    return {
        "id": new_id("evt"),
        "object": "event",
        "api_version": API_VERSION,
        "created": created,
        "data": data,
        "livemode": True,
        "pending_webhooks": 1,
        "request": {"id": new_id("req"), "idempotency_key": new_id("idem")},
        "type": type,
    }


def _customer(cid: str, created: int, n: int) -> dict[str, Any]:
    return {
        "id": cid,
        "object": "customer",
        "address": {
            "city": "Berlin", "country": "DE", "line1": f"Street {n}", "line2": None, "postal_code": "10115", "state": None
        },
        "balance": 0,
        "created": created,
        "currency": "eur",
        "default_source": None,
        "delinquent": False,
        "description": None,
        "email": f"customer{n}@example.com",
        "invoice_prefix": f"B{n:07X}",
        "invoice_settings": {
            "custom_fields": None, "default_payment_method": None, "footer": None, "rendering_options": None
        },
        "livemode": True,
        "metadata": {"signup_source": random.choice(["web", "sales", "partner"])},
        "name": f"Customer {n}",
        "phone": None,
        "preferred_locales": ["en"],
        "shipping": None,
        "tax_exempt": "none",
        "test_clock": None,
    }


def _price(pid: str, product: str, amount: int, interval: str) -> dict[str, Any]:
    return {
        "id": pid,
        "object": "price",
        "active": True,
        "billing_scheme": "per_unit",
        "created": START,
        "currency": "eur",
        "livemode": True,
        "lookup_key": None,
        "metadata": {},
        "nickname": f"{interval}ly",
        "product": product,
        "recurring": {"interval": interval, "interval_count": 1, "meter": None, "usage_type": "licensed"},
        "tax_behavior": "exclusive",
        "tiers_mode": None,
        "type": "recurring",
        "unit_amount": amount,
        "unit_amount_decimal": str(amount),
    }


def _subscription(
    sid: str, cid: str, item: str, price: dict, status: str, start: int, period_start: int, trial_end: int | None
) -> dict[str, Any]:
    return {
        "id": sid,
        "object": "subscription",
        "billing_cycle_anchor": start,
        "cancel_at": None,
        "cancel_at_period_end": False,
        "canceled_at": period_start if status == "canceled" else None,
        "collection_method": "charge_automatically",
        "created": start,
        "currency": "eur",
        "customer": cid,
        "default_payment_method": None,
        "discounts": [],
        "ended_at": period_start if status == "canceled" else None,
        "items": {
            "object": "list",
            "data": [
                {
                    "id": item,
                    "object": "subscription_item",
                    "created": start,
                    "current_period_end": period_start + MONTH,
                    "current_period_start": period_start,
                    "metadata": {},
                    "price": price,
                    "quantity": 1,
                    "subscription": sid,
                    "tax_rates": [],
                }
            ],
            "has_more": False,
            "total_count": 1,
            "url": f"/v1/subscription_items?subscription={sid}",
        },
        "latest_invoice": None,
        "livemode": True,
        "metadata": {},
        "start_date": start,
        "status": status,
        "trial_end": trial_end,
        "trial_start": start if trial_end else None,
    }


def _invoice(iid: str, cid: str, sid: str, price: dict, status: str, created: int) -> dict[str, Any]:
    amount = price["unit_amount"]
    return {
        "id": iid,
        "object": "invoice",
        "account_country": "DE",
        "amount_due": amount,
        "amount_paid": amount if status == "paid" else 0,
        "amount_remaining": 0 if status == "paid" else amount,
        "attempt_count": 1,
        "billing_reason": "subscription_cycle",
        "collection_method": "charge_automatically",
        "created": created,
        "currency": "eur",
        "customer": cid,
        "customer_email": None,
        "lines": {
            "object": "list",
            "data": [
                {
                    "id": f"il_{iid}",
                    "object": "line_item",
                    "amount": amount,
                    "currency": "eur",
                    "description": f"1 x Pro ({price['nickname']})",
                    "period": {"start": created, "end": created + MONTH},
                    "pricing": {
                        "price_details": {"price": price["id"], "product": price["product"]},
                        "type": "price_details",
                    },
                    "quantity": 1,
                }
            ],
            "has_more": False,
            "total_count": 1,
        },
        "livemode": True,
        "number": f"INV-{iid[-8:]}",
        "parent": {"type": "subscription_details", "subscription_details": {"metadata": {}, "subscription": sid}},
        "period_end": created,
        "period_start": created - MONTH,
        "status": status,
        "status_transitions": {"finalized_at": created, "paid_at": created + 60 if status == "paid" else None},
        "subtotal": amount,
        "total": amount,
    }


def _charge(chid: str, cid: str, amount: int, created: int) -> dict[str, Any]:
    return {
        "id": chid,
        "object": "charge",
        "amount": amount,
        "amount_captured": amount,
        "amount_refunded": 0,
        "captured": True,
        "created": created,
        "currency": "eur",
        "customer": cid,
        "description": "Subscription update",
        "failure_code": None,
        "livemode": True,
        "paid": True,
        "payment_intent": f"pi_{chid}",
        "payment_method_details": {
            "card": {"brand": "visa", "last4": "4242", "exp_month": 12, "exp_year": 2030}, "type": "card"
        },
        "status": "succeeded",
    }


def _lifecycle(new_id: Ids, n: int, price: dict[str, Any]) -> list[dict[str, Any]]:
    """One customer: sign-up, a trial, then churn at trial end or months of paid invoices."""
    cid, sid, item = new_id("cus"), new_id("sub"), new_id("si")
    start = START + random.randrange(0, 12 * MONTH)
    trial_end = start + 14 * 86400
    customer = _customer(cid, start, n)
    events: list[dict[str, Any]] = []

    def add(type: str, obj: dict[str, Any], at: int, previous: dict | None = None) -> None:
        events.append(_event(new_id, type, obj, at, previous))

    def subscription(status: str, period_start: int) -> dict[str, Any]:
        return _subscription(sid, cid, item, price, status, start, period_start, trial_end)

    add("customer.created", customer, start)
    add("customer.updated", dict(customer, name=f"Customer {n} GmbH"), start + 120, {"name": customer["name"]})
    add("customer.subscription.created", subscription("trialing", start), start + 5)
    if random.random() < 0.3:
        add("customer.subscription.updated", subscription("canceled", trial_end), trial_end)
        return events
    months = random.randrange(1, 12)
    for month in range(months):
        at = trial_end + month * MONTH
        iid = new_id("in")
        add("customer.subscription.updated", subscription("active", at), at)
        add("invoice.created", _invoice(iid, cid, sid, price, "draft", at), at)
        add("invoice.finalized", _invoice(iid, cid, sid, price, "open", at), at + 3600)
        add("charge.succeeded", _charge(new_id("ch"), cid, price["unit_amount"], at + 3650), at + 3650)
        add("invoice.paid", _invoice(iid, cid, sid, price, "paid", at), at + 3660)
    if random.random() < 0.2:
        end = trial_end + months * MONTH
        add("customer.subscription.deleted", subscription("canceled", end), end)
    return events


def generate(total: int, seed: int = 7) -> list[dict[str, Any]]:
    """About `total` events: whole customer lifecycles until the count is reached."""
    random.seed(seed)
    new_id = Ids()
    plans = ((2900, "month"), (29000, "year"), (9900, "month"))
    prices = [_price(new_id("price"), new_id("prod"), amount, interval) for amount, interval in plans]
    events: list[dict[str, Any]] = []
    n = 0
    while len(events) < total:
        n += 1
        events += _lifecycle(new_id, n, random.choice(prices))
    return events[:total]


def _with_database(url: str, name: str) -> str:
    return urlunparse(urlparse(url)._replace(path=f"/{name}"))


async def main(args: argparse.Namespace) -> None:
    name = f"stripeline_bench_{os.getpid()}"
    admin = await asyncpg.connect(ADMIN_URL)
    await admin.execute(f'CREATE DATABASE "{name}"')
    url = _with_database(ADMIN_URL, name)
    try:
        conn = await connect(url)
        await migrate(conn)
        await conn.close()
        pool = await create_pool(url, max_size=4)
        started = time.perf_counter()
        payloads = generate(args.events)
        generated = time.perf_counter()
        types = {p["type"] for p in payloads}
        if args.noop_handlers:
            import handlers

            async def noop(conn, event, ctx) -> None:
                return None

            handlers.HANDLERS.update({t: noop for t in types if t not in handlers.HANDLERS})
        from handlers import HANDLERS

        handled = set(HANDLERS)
        async with pool.acquire() as conn:
            for start in range(0, len(payloads), 2000):
                await insert_events(conn, [event_from_payload(p) for p in payloads[start : start + 2000]])
            # The status each event got when it was live: processed if a handler exists, else ignored.
            await conn.execute(
                "UPDATE stripe_events SET status = CASE WHEN type = ANY($1::text[]) THEN 'processed' ELSE 'ignored' END,"
                " processed_at = now()",
                sorted(handled),
            )
            await conn.execute("VACUUM ANALYZE stripe_events")
            size = await conn.fetchval("SELECT pg_size_pretty(pg_total_relation_size('stripe_events'))")
        stored = time.perf_counter()
        count = len(payloads)
        print(f"generated {count:,} events in {generated - started:.1f} s; stored in {stored - generated:.1f} s ({size})")
        # The generated events are millions of live objects that would slow every garbage
        # collection during the replay; `stripeline replay` holds nothing like them.
        del payloads
        gc.collect()

        settings = Settings(database_url=url)
        # As `stripeline replay` runs: JSON logs at info (not structlog's unconfigured debug
        # console) and the garbage collector tuned by app.garbage.
        configure_logging(settings)
        quiet_garbage_collector()
        began, cpu_began = time.perf_counter(), time.process_time()
        tally = await replay(pool, settings, rebuild=True, batch_size=args.batch_size)
        seconds, cpu = time.perf_counter() - began, time.process_time() - cpu_began
        print(
            f"replay --rebuild: {tally.applied:,} applied, {tally.skipped:,} skipped, {tally.failed:,} failed "
            f"in {seconds:.2f} s = {count / seconds:,.0f} events/s (batch {args.batch_size}); "
            f"this process used {cpu:.2f} s of CPU ({cpu / count * 1e6:.0f} us/event)"
        )
        async with pool.acquire() as conn:
            rows = await conn.fetch("SELECT segment, count(*) AS n FROM segment_memberships GROUP BY 1 ORDER BY 1")
            customers = await conn.fetchval("SELECT count(*) FROM customers")
        segments = ", ".join(f"{r['segment']}={r['n']:,}" for r in rows) or "none"
        print(f"customers: {customers:,}; segments: {segments}")
        await pool.close()
    finally:
        if not args.keep:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        else:
            print(f"kept database {name}")
        await admin.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--batch-size", type=int, default=1000)
    parser.add_argument("--noop-handlers", action="store_true", help="a do-nothing handler for every generated type")
    parser.add_argument("--keep", action="store_true", help="keep the database afterwards")
    asyncio.run(main(parser.parse_args()))
