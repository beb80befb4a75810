"""End to end: signed webhooks into `stripeline web`, processed by `stripeline worker`.

Generates a simulated Stripe account's real-sized stream (tests/simulation.py: N events for M
customers, about --per-second events per second of `created` time, same-second bursts with
Stripe's previous_attributes), migrates a fresh database and starts one web and one worker
process of the checkout under test (--code DIR) against it and a free Redis db number, sends
every event as a signed webhook over --concurrency keep-alive connections while the worker
runs, waits until /api/sync counts all of them processed, and prints:

- the payload sizes (median, p10, p90),
- acknowledgements/s and their latency p50/p99 as the client saw them (worker running),
- end-to-end events/s (first byte sent until the last event processed),
- CPU per event of web, worker, the PostgreSQL backends of this database and the Redis
  server (shared with anything else using it), and their total, counted until the last event
  is processed and the worker's queue is empty (jobs left queued are work the events caused),
- how many events the web stored per INSERT and the worker applied per transaction, how many
  jobs the worker ran, and how many were still queued when the last event was processed,
- processing lag p50/p99 (processed_at - received_at), when the schema has those columns,
- stale rows: the final model against applying the same events in Stripe order with this
  checkout's code (in a second database), and against the simulated account's own objects,
- after `stripeline replay --rebuild` over the same log, the number of customers whose answer
  (GET /api/customers/{id} and its timeline, and the segment counts) differs from the live one.

    .venv/bin/python bench/pipeline.py                         # 20,000 events, 2,000 customers, 16 connections
    .venv/bin/python bench/pipeline.py --code /work/wt/baseline --small --profile /tmp/profiles

Uses this machine's PostgreSQL (root@127.0.0.1:5432) and Redis (127.0.0.1:6379) unless
BENCH_DATABASE_URL / BENCH_REDIS_URL say otherwise. Everything it creates is removed at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import httpx  # noqa: E402
import orjson  # noqa: E402

from bench.common import (  # noqa: E402
    SCHEMAS,
    SECRET,
    TOKEN,
    CpuMeter,
    add_common_arguments,
    bodies_of,
    checkout_of,
    claimed_redis_db,
    cpu_report,
    free_port,
    fresh_database,
    migrate,
    observe,
    percentile,
    product_env,
    profiled,
    quiet_logs,
    simulated_account,
    size_line,
    stop,
    wait_for_http,
)
from stripeline.event_loop import run  # noqa: E402
from stripeline.handlers import registry
from stripeline.model.context import ProcessingContext
from stripeline.model.events import event_from_payload  # noqa: E402
from stripeline.processing.engine import apply_events  # noqa: E402
from stripeline.settings import Settings  # noqa: E402
from stripeline.signature import sign  # noqa: E402
from stripeline.store.db import connect  # noqa: E402
from stripeline.store.event_log import insert_events  # noqa: E402
from stripeline.store.migrate import migrate as migrate_here  # noqa: E402
from tests.handlers.billing_support import model_state  # noqa: E402
from tests.handlers.truth import mismatches  # noqa: E402
from tests.observed import differing  # noqa: E402
from tests.simulation import Account  # noqa: E402

LAG = """
SELECT percentile_cont(0.5) WITHIN GROUP (ORDER BY extract(epoch FROM processed_at - received_at)) AS p50,
       percentile_cont(0.99) WITHIN GROUP (ORDER BY extract(epoch FROM processed_at - received_at)) AS p99
FROM stripe_events
"""


def signed_requests(bodies: list[bytes]) -> list[bytes]:
    """Each body as a whole signed request, made before the clock starts: the load generator
    shares the machine's two cores with what it measures, so it does no more per webhook than
    write one and read the answer. Signed at once: a run longer than the web's tolerance (300 s
    by default) would see its last webhooks refused, and print how many were not answered 200."""
    return [
        (
            f"POST /webhooks/stripe HTTP/1.1\r\nHost: bench\r\nContent-Type: application/json\r\n"
            f"Stripe-Signature: {sign(body, SECRET)}\r\nContent-Length: {len(body)}\r\n\r\n"
        ).encode()
        + body
        for body in bodies
    ]


async def send_all(port: int, requests: list[bytes], concurrency: int) -> tuple[list[int], list[float]]:
    """POST every request over `concurrency` keep-alive connections; (status codes, latencies)."""
    statuses: list[int] = []
    latencies: list[float] = []
    pending = iter(requests)

    async def connection() -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        for request in pending:
            started = time.perf_counter()
            writer.write(request)
            await writer.drain()
            head = await reader.readuntil(b"\r\n\r\n")
            lower = head.lower()
            at = lower.index(b"content-length:") + 15
            await reader.readexactly(int(lower[at : lower.index(b"\r\n", at)]))
            latencies.append(time.perf_counter() - started)
            statuses.append(int(head[9:12]))
        writer.close()

    await asyncio.gather(*(connection() for _ in range(concurrency)))
    return statuses, latencies


async def wait_until_processed(port: int, total: int, timeout: float) -> float:
    """The time /api/sync first counts `total` events processed or ignored."""
    deadline = time.perf_counter() + timeout
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}",
                                 headers={"Authorization": f"Bearer {TOKEN}"}) as client:
        while time.perf_counter() < deadline:
            counts = (await client.get("/api/sync")).json()["events"]
            if counts["failed"]:
                raise SystemExit(f"{counts['failed']} events failed")
            if counts["processed"] + counts["ignored"] >= total:
                return time.perf_counter()
            await asyncio.sleep(0.2)
    raise SystemExit("timed out waiting for the worker")


async def queued_jobs(redis_url: str, queue_name: str) -> int:
    """Jobs left in the queue once every event is processed: work the worker still has to do
    (jobs that will find their events done)."""
    from redis.asyncio import Redis

    redis = Redis.from_url(redis_url)
    try:
        return await redis.zcard(queue_name)
    finally:
        await redis.aclose()


async def wait_until_drained(redis_url: str, queue_name: str, timeout: float) -> None:
    deadline = time.perf_counter() + timeout
    while await queued_jobs(redis_url, queue_name):
        if time.perf_counter() > deadline:
            raise SystemExit("timed out waiting for the worker's queue to empty")
        await asyncio.sleep(0.1)


async def batch_sizes(port: int, total: int) -> str:
    """How many events the web stored per INSERT and the worker applied per transaction, from
    /metrics (the worker's figures arrive with its next push, up to 10 s later)."""
    wanted = {"stripeline_ingest_batch_events": "web", "stripeline_worker_batch_events": "worker"}
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}",
                                 headers={"Authorization": f"Bearer {TOKEN}"}) as client:
        for _ in range(60):
            sums: dict[str, dict[str, float]] = {}
            jobs = 0.0
            for line in (await client.get("/metrics")).text.splitlines():
                name, _, value = line.partition(" ")
                if name.startswith("stripeline_worker_job_duration_seconds_count") and 'job="process_events"' in name:
                    jobs += float(value)
                for metric, who in wanted.items():
                    if name.split("{")[0] in (f"{metric}_sum", f"{metric}_count"):
                        part = name.split("{")[0].rsplit("_", 1)[1]
                        sums.setdefault(who, {}).setdefault(part, 0.0)
                        sums[who][part] += float(value)
            if sums.get("worker", {}).get("sum", 0) >= total:
                break
            await asyncio.sleep(0.5)
    parts = [f"{who} {s.get('count', 0):,.0f} batches of {s.get('sum', 0) / max(s.get('count', 0), 1):.1f} events on average"
             for who, s in sums.items()]
    return "batches: " + ("; ".join(parts) or "n/a (no batch metrics)") + f"; {jobs:,.0f} worker jobs"



async def in_order_state(account: Account, payloads: list[dict], batch: int) -> tuple[dict, float]:
    """The model after applying the stream in Stripe order with this checkout's code, and the rate."""
    async with fresh_database(suffix="_in_order") as (_, url):
        conn = await connect(url)
        try:
            await migrate_here(conn)
            records = [event_from_payload(p) for p in payloads]
            await insert_events(conn, records)
            started = time.perf_counter()
            for start in range(0, len(records), batch):
                async with conn.transaction():
                    ctx = ProcessingContext(settings=Settings(), now=datetime.now(timezone.utc), registry=registry())
                    await apply_events(conn, records[start : start + batch], ctx)
            rate = len(records) / (time.perf_counter() - started)
            return await model_state(conn, account.customers, account.prices, account.products), rate
        finally:
            await conn.close()


def stale_rows(got: dict, want: dict) -> int:
    stale = 0
    for table in want:
        mine = {r["id"]: r for r in got[table]}
        theirs = {r["id"]: r for r in want[table]}
        stale += sum(1 for key in mine.keys() | theirs.keys() if mine.get(key) != theirs.get(key))
    return stale


async def main(args: argparse.Namespace) -> None:
    checkout = checkout_of(args)
    quiet_logs()
    account = simulated_account(args.events, args.customers, args.per_second, args.seed)
    payloads = list(account.events)  # Stripe's order stays in account.events
    if args.shuffle:
        random.Random(args.seed).shuffle(payloads)
    bodies = bodies_of(payloads, args.small)
    sent_payloads = [orjson.loads(b) for b in bodies] if args.small else payloads
    print(f"checkout under test: {checkout.describe()}")
    print(f"{size_line(bodies)}{' (--small: the old factories fields)' if args.small else ''}")

    async with fresh_database(keep=args.keep) as (name, database_url), claimed_redis_db() as (redis_url, redis_pid):
        port = free_port()
        env = product_env(database_url, redis_url, PORT=str(port))
        migrate(checkout, env)
        web = checkout.popen(["web", "--host", "127.0.0.1"], env)
        worker = checkout.popen(["worker"], env)
        try:
            await wait_for_http(port, web)
            await asyncio.sleep(1.0)  # let the worker connect too
            meter = CpuMeter(name, {"web": web.pid, "worker": worker.pid, "redis": redis_pid})
            async with profiled(args.profile, {"web": web.pid, "worker": worker.pid}, name):
                requests = signed_requests(bodies)
                await meter.start()
                started, own_cpu = time.perf_counter(), time.process_time()
                statuses, latencies = await send_all(port, requests, args.concurrency)
                sent, own_cpu = time.perf_counter(), time.process_time() - own_cpu
                finished = await wait_until_processed(port, len(bodies), args.timeout)
                # Jobs still queued are work the events caused (each finds its events done):
                # the CPU figures count them too.
                left_queued = await queued_jobs(redis_url, env["STRIPELINE_QUEUE"])
                await wait_until_drained(redis_url, env["STRIPELINE_QUEUE"], args.timeout)
                used = await meter.stop()
            batches_line = await batch_sizes(port, len(bodies))
            batches_line += f"; {left_queued:,} jobs still queued when the last event was processed"
            live_view = await observe(port, account.customers)
            rebuild = checkout.run(["replay", "--rebuild"], env)
            if rebuild.returncode != 0:
                raise SystemExit(f"replay --rebuild failed: {(rebuild.stdout + rebuild.stderr)[-800:]}")
            rebuilt = differing(await observe(port, account.customers), live_view)
            conn = await connect(database_url, schema=SCHEMAS)
            try:
                try:
                    lag = await conn.fetchrow(LAG)
                    lag_line = f"processing lag: p50 {lag['p50'] * 1000:.0f} ms, p99 {lag['p99'] * 1000:.0f} ms"
                except Exception as problem:  # another checkout's schema may keep these elsewhere
                    lag_line = f"processing lag: n/a ({type(problem).__name__})"
                final = await model_state(conn, account.customers, account.prices, account.products)
            finally:
                await conn.close()
        finally:
            stop([web, worker])

    events = len(bodies)
    bad = len([s for s in statuses if s != 200])
    print(f"acknowledged {events:,} webhooks in {sent - started:.2f} s ({events / (sent - started):,.0f}/s) at "
          f"{args.concurrency} connections while the worker ran: latency p50 "
          f"{percentile(latencies, 0.5) * 1000:.1f} ms, p99 {percentile(latencies, 0.99) * 1000:.1f} ms; "
          f"{bad} not answered 200; the load generator used {own_cpu / events * 1000:.3f} ms of CPU per webhook")
    print(f"end to end: {events / (finished - started):,.0f} events/s "
          f"({finished - started:.2f} s from first send to last processed)")
    print(lag_line)
    print(batches_line)
    print(cpu_report(used, events, ("web", "worker", "postgres", "redis")) +
          f"; {2 * (finished - started):.1f} CPU s available on 2 cores")
    split = [f"{name.removeprefix('postgres for ')} {used[name] / events * 1000:.3f}" for name in used
             if name.startswith("postgres for ")]
    if split:
        print(f"PostgreSQL CPU ms per event by client: {', '.join(split)} (the rest: connections not matched)")

    expected, rate = await in_order_state(account, sent_payloads, args.batch)
    print(f"in-order apply_events with this checkout's code (batches of {args.batch}): {rate:,.0f} events/s")
    print(f"stale rows vs in-order state: {stale_rows(final, expected)}; "
          f"differences from the account's truth: {len(mismatches(account, final))}; "
          f"customers whose answer differs after `replay --rebuild`: "
          f"{len([key for key in rebuilt if key != 'segment counts'])} of {len(account.customers)}"
          f"{' (segment counts differ too)' if 'segment counts' in rebuilt else ''}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=20000)
    parser.add_argument("--customers", type=int, default=2000)
    parser.add_argument("--per-second", type=int, default=100, help="events per second of created time")
    parser.add_argument("--concurrency", type=int, default=16, help="webhook connections in flight")
    parser.add_argument("--small", action="store_true", help="send the events cut to the old factories' fields")
    parser.add_argument("--batch", type=int, default=500, help="batch size of the in-order reference pass")
    parser.add_argument("--shuffle", action="store_true", help="send in random order instead of Stripe order")
    parser.add_argument("--timeout", type=float, default=900)
    parser.add_argument("--keep", action="store_true", help="keep the pipeline's database (drop it yourself)")
    add_common_arguments(parser)
    run(main(parser.parse_args()))  # on uvloop, as the web and the worker run: a lighter load generator
