"""One model at scale: live delivery with two workers, `replay --rebuild` and `import`, each against in-order processing.

Takes the simulated account's real-sized stream (tests/simulation.py: same-second bursts, both
API shapes, customers deleted in Stripe with events of theirs before and after the deletion,
backfill snapshot events) and builds its model three ways with the checkout under test
(--code DIR), each compared customer by customer, through the HTTP API as a user reads it
(`GET /api/customers/{id}` and its timeline, plus the segment counts; tests/observed.py), with
the stream applied in Stripe order in-process with this checkout's code:

1. live: signed webhooks in Stripe order, plus a share delivered again late, over
   --concurrency connections into `stripeline web`, processed by two `stripeline worker`s;
2. rebuild: `stripeline replay --rebuild` over the live database's own log;
3. import: `stripeline import` of the stream into an empty database, shuffled with repeats
   (stored whole, then applied in Stripe order by the command), and in Stripe order (applied as
   it is read, by the command's lane processes).

It prints how many customers differ after each (each must be 0), and for the rebuild and the
import also against the live answers of the same checkout (the figure to compare across
checkouts, whose answers may have other fields).

    .venv/bin/python bench/one_model.py [--events 20000] [--mode anonymize|delete] [--code DIR]
"""

from __future__ import annotations

import argparse
import asyncio
import random
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import httpx  # noqa: E402

from bench.common import (  # noqa: E402
    ROOT,
    SECRET,
    TOKEN,
    Checkout,
    add_common_arguments,
    bodies_of,
    checkout_of,
    claimed_redis_db,
    free_port,
    fresh_database,
    migrate,
    observe,
    product_env,
    quiet_logs,
    simulated_account,
    size_line,
    stop,
    wait_for_http,
)
from stripeline.handlers import registry  # noqa: E402
from stripeline.model.events import event_from_payload  # noqa: E402
from stripeline.processing.engine import INTAKE, Batch, Engine  # noqa: E402
from stripeline.settings import Settings  # noqa: E402
from stripeline.signature import sign  # noqa: E402
from stripeline.store.db import create_pool  # noqa: E402
from stripeline.store.event_log import insert_events  # noqa: E402
from stripeline.store.migrate import migrate as migrate_here  # noqa: E402
from tests.observed import differing, first_difference  # noqa: E402


async def reference(database_url: str, payloads: list[dict], settings: Settings, batch: int) -> None:
    """The stream in Stripe order, in-process, in batches (the tests show these equal one event at a time)."""
    pool = await create_pool(database_url, max_size=2)
    try:
        async with pool.acquire() as conn:
            await migrate_here(conn)
            records = [event_from_payload(p) for p in payloads]
            await insert_events(conn, records)
        engine = Engine(pool, settings, registry())
        ordered = [r.id for r in sorted(records, key=lambda r: (r.created, r.id))]
        for start in range(0, len(ordered), batch):
            outcome = await engine.run(Batch(ordered[start : start + batch]), INTAKE)
            assert not outcome.failed and not outcome.retry, outcome.errors
    finally:
        await pool.close()


async def send_all(port: int, bodies: list[bytes], concurrency: int) -> int:
    """POST every body; return how many were not answered 200."""
    pending = iter(bodies)
    refused = 0
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=60) as client:

        async def connection() -> None:
            nonlocal refused
            for body in pending:
                headers = {"stripe-signature": sign(body, SECRET), "content-type": "application/json"}
                refused += (await client.post("/webhooks/stripe", content=body, headers=headers)).status_code != 200

        await asyncio.gather(*(connection() for _ in range(concurrency)))
    return refused


async def wait_until_processed(port: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=30,
                                 headers={"authorization": f"Bearer {TOKEN}"}) as client:
        while time.monotonic() < deadline:
            events = (await client.get("/api/sync")).json()["events"]
            if not events["pending"] and not events["failed"]:
                return
            await asyncio.sleep(0.5)
    raise SystemExit("timed out waiting for the workers")


def report(path: str, got: dict, want: dict) -> int:
    """Print how many customers differ; an older checkout (--code) answers in an older shape, so
    compare its paths with its own live answers."""
    different = differing(got, want)
    customers = [key for key in different if key != "segment counts"]
    print(f"{path}: {len(customers)} of {len(want['customers'])} customers differ"
          + ("; the segment counts differ" if "segment counts" in different else ""), flush=True)
    for key in customers[:3]:
        print(f"  {key}{first_difference(got['customers'].get(key), want['customers'].get(key))}")
    return len(different)


async def import_path(checkout: Checkout, redis_url: str, args: argparse.Namespace, label: str, lines: list[dict],
                      customers: list[str], want: dict, live: dict) -> int:
    """`stripeline import` of these lines into an empty database: customers that differ from `want`."""
    async with fresh_database(suffix="_import") as (_, import_url):
        env = product_env(import_url, redis_url, STRIPELINE_DELETED_CUSTOMERS=args.mode)
        migrate(checkout, env)
        with tempfile.NamedTemporaryFile(suffix=".jsonl") as file:
            file.write(b"\n".join(bodies_of(lines, False)) + b"\n")
            file.flush()
            started = time.perf_counter()
            done = checkout.run(["import", file.name], env)
        if done.returncode != 0:
            raise SystemExit(f"import failed: {(done.stdout + done.stderr)[-800:]}")
        events = len({p["id"] for p in lines})
        print(f"import: {len(lines):,} lines ({label}), {events / (time.perf_counter() - started):,.0f} events/s "
              "(the command's whole run)", flush=True)
        port = free_port()
        web = checkout.popen(["web", "--host", "127.0.0.1"], {**env, "PORT": str(port)})
        try:
            await wait_for_http(port, web)
            imported = await observe(port, customers)
            report(f"import ({label}), against the live answers", imported, live)
            return report(f"import ({label}) into an empty database", imported, want)
        finally:
            stop([web])


async def main(args: argparse.Namespace) -> int:
    checkout = checkout_of(args)
    quiet_logs()
    account = simulated_account(args.events, args.customers, args.per_second, args.seed)
    payloads = list(account.events)
    print(f"checkout under test: {checkout.describe()}")
    print(f"stream: {len(payloads):,} events, {len(account.customers):,} customers, {len(account.gone)} deleted in "
          f"Stripe; {size_line(bodies_of(payloads, False))}; deletion mode {args.mode}", flush=True)
    rng = random.Random(args.seed)
    problems = 0
    async with claimed_redis_db() as (redis_url, _):
        async with fresh_database(suffix="_reference") as (_, reference_url):
            started = time.perf_counter()
            await reference(reference_url, payloads, Settings(deleted_customers=args.mode), args.batch)
            print(f"reference: in Stripe order, in-process, {time.perf_counter() - started:.1f} s", flush=True)
            port = free_port()
            # Read with this checkout's web: the reference was built with this checkout's code.
            web = Checkout(ROOT).popen(["web", "--host", "127.0.0.1"], product_env(
                reference_url, redis_url, PORT=str(port), STRIPELINE_DELETED_CUSTOMERS=args.mode))
            try:
                await wait_for_http(port, web)
                want = await observe(port, account.customers)
            finally:
                stop([web])

        async with fresh_database(suffix="_live") as (_, live_url):
            env = product_env(live_url, redis_url, STRIPELINE_DELETED_CUSTOMERS=args.mode)
            migrate(checkout, env)
            port = free_port()
            processes = [checkout.popen(["web", "--host", "127.0.0.1"], {**env, "PORT": str(port)}),
                         checkout.popen(["worker"], env), checkout.popen(["worker"], env)]
            try:
                await wait_for_http(port, processes[0])
                late = rng.sample(payloads, k=len(payloads) // 20)
                started = time.perf_counter()
                refused = await send_all(port, bodies_of(payloads + late, False), args.concurrency)
                await wait_until_processed(port, args.timeout)
                seconds = time.perf_counter() - started
                print(f"live: {len(payloads) + len(late):,} webhooks ({len(late):,} again, late), {refused} not "
                      f"answered 200, two workers, {len(payloads) / seconds:,.0f} events/s end to end", flush=True)
                live = await observe(port, account.customers)
                problems += refused + report("live, two workers", live, want)
                stop(processes[1:])
                started = time.perf_counter()
                done = checkout.run(["replay", "--rebuild"], env)
                if done.returncode != 0:
                    raise SystemExit(f"replay --rebuild failed: {(done.stdout + done.stderr)[-800:]}")
                print(f"rebuild: {len(payloads) / (time.perf_counter() - started):,.0f} events/s (the command's "
                      "whole run)", flush=True)
                rebuilt = await observe(port, account.customers)
                problems += report("replay --rebuild", rebuilt, want)
                report("replay --rebuild, against the live answers", rebuilt, live)
            finally:
                stop(processes)

        shuffled = payloads + rng.sample(payloads, k=len(payloads) // 10)
        rng.shuffle(shuffled)
        in_order = sorted(payloads, key=lambda p: p["created"])  # a second's events in any order
        paths = (("shuffled, with repeats", shuffled), ("in Stripe order: applied by lane processes", in_order))
        for label, lines in paths:
            problems += await import_path(checkout, redis_url, args, label, lines, account.customers, want, live)
    print("every path gives the in-order model" if not problems else f"{problems} differences")
    return 1 if problems else 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=20000)
    parser.add_argument("--customers", type=int, default=2000)
    parser.add_argument("--per-second", type=int, default=60, help="events per second of created time")
    parser.add_argument("--mode", choices=("anonymize", "delete"), default="anonymize")
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--batch", type=int, default=500, help="batch size of the in-order reference")
    parser.add_argument("--timeout", type=float, default=1800)
    add_common_arguments(parser)
    sys.exit(asyncio.run(main(parser.parse_args())))
