"""Webhook ingest throughput: signed, distinct, real-sized Stripe events at a given concurrency.

By default it starts everything itself on this machine: a fresh PostgreSQL database (created,
migrated by the checkout under test, dropped afterwards), a Redis db number claimed as the
tests claim theirs, that checkout's `stripeline web` (--code DIR, default this repository),
and a bare Starlette+uvicorn endpoint as the ceiling. Both get the same events: a simulated
account's stream (tests/simulation.py, real sizes). It prints the payload sizes,
acknowledged events/s, p50/p99 latency and errors for both, stripeline's share of the ceiling,
then checks that every acknowledged event is stored and queued for the worker (no worker runs
meanwhile).

    .venv/bin/python bench/ingest.py                    # 64 connections, 30,000 events
    .venv/bin/python bench/ingest.py --connections 16 --count 10000 --code /work/wt/baseline
    .venv/bin/python bench/ingest.py --url http://127.0.0.1:8000 --secret whsec_...

The client is this process: raw asyncio streams on uvloop, HTTP/1.1 keep-alive, requests
signed before the clock starts, so that it takes as little as possible of the CPU it shares
with the server. Traffic goes to 127.0.0.1 only, bounded in count and time.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import pickle
import socket
import statistics
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlparse

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import (  # noqa: E402
    SCHEMAS,
    SECRET,
    add_common_arguments,
    checkout_of,
    claimed_redis_db,
    cpu_seconds,
    free_port,
    fresh_database,
    migrate,
    product_env,
    profiled,
    simulated_account,
    size_line,
)
from stripeline.signature import sign  # noqa: E402

LOOPBACK = {"127.0.0.1", "localhost", "::1"}
WARMUP_REQUESTS = 1000


# --- events -------------------------------------------------------------------------------


def build_requests(payloads: list[dict], host: str, port: int, secret: str) -> tuple[list[str], list[bytes]]:
    """(event ids, raw HTTP/1.1 requests), signed now: the run must end within the tolerance.
    Each run gets its own event ids, so that a server that already saw the stream stores it again."""
    run = uuid.uuid4().hex[:6]
    ids, requests = [], []
    for n, payload in enumerate(payloads):
        payload = {**payload, "id": f"evt_{run}{n:018d}"}
        body = orjson.dumps(payload)
        head = (
            f"POST /webhooks/stripe HTTP/1.1\r\nHost: {host}:{port}\r\n"
            f"User-Agent: Stripe/1.0 (+https://stripe.com/docs/webhooks)\r\n"
            f"Content-Type: application/json; charset=utf-8\r\nStripe-Signature: {sign(body, secret)}\r\n"
            f"Content-Length: {len(body)}\r\n\r\n"
        )
        ids.append(payload["id"])
        requests.append(head.encode() + body)
    return ids, requests


# --- client -------------------------------------------------------------------------------


@dataclass
class Result:
    latencies: list[float] = field(default_factory=list)
    acknowledged: list[int] = field(default_factory=list)
    errors: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0
    server_cpu_seconds: float | None = None
    client_cpu_seconds: float = 0.0

    def error(self, kind: str) -> None:
        self.errors[kind] = self.errors.get(kind, 0) + 1


async def _connection(host, port, requests, indexes, deadline, result: Result, measure: bool) -> None:
    reader, writer = await asyncio.open_connection(host, port)
    sock = writer.get_extra_info("socket")
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    try:
        for index in indexes:
            if time.perf_counter() > deadline:
                break
            started = time.perf_counter()
            writer.write(requests[index])
            try:
                head = await reader.readuntil(b"\r\n\r\n")
                lower = head.lower()
                at = lower.index(b"content-length:") + 15
                length = int(lower[at : lower.index(b"\r\n", at)])
                await reader.readexactly(length)
            except (asyncio.IncompleteReadError, ConnectionError, ValueError) as problem:
                result.error(type(problem).__name__)
                break
            status = int(head[9:12])
            if measure:
                result.latencies.append(time.perf_counter() - started)
            if status == 200:
                result.acknowledged.append(index)
            else:
                result.error(str(status))
            if b"connection: close" in lower:
                break
    finally:
        writer.close()
        with contextlib.suppress(Exception):
            await writer.wait_closed()


async def hammer(host, port, requests, indexes, connections: int, seconds: float, measure=True) -> Result:
    result = Result()
    shared = iter(indexes)  # every connection takes the next request from one iterator
    deadline = time.perf_counter() + seconds
    started = time.perf_counter()
    await asyncio.gather(*(_connection(host, port, requests, shared, deadline, result, measure) for _ in range(connections)))
    result.seconds = time.perf_counter() - started
    return result


def report(name: str, result: Result) -> None:
    lat = sorted(result.latencies)
    done = len(lat)
    if not done:
        print(f"{name:<12} no answers; errors {result.errors}")
        return
    p50 = lat[done // 2] * 1000
    p99 = lat[min(done - 1, int(done * 0.99))] * 1000
    rate = len(result.acknowledged) / result.seconds
    errors = sum(result.errors.values())
    cpu = f"   CPU µs/request: client {result.client_cpu_seconds / done * 1e6:3.0f}"
    if result.server_cpu_seconds is not None:
        cpu += f", server {result.server_cpu_seconds / done * 1e6:3.0f}"
    print(
        f"{name:<12} {rate:>8,.0f} acknowledged/s   p50 {p50:6.1f} ms   p99 {p99:6.1f} ms   "
        f"mean {statistics.fmean(lat) * 1000:6.1f} ms   {done:,} answers in {result.seconds:.1f} s{cpu}   "
        f"errors {errors}{' ' + str(result.errors) if errors else ''}"
    )


# --- servers ------------------------------------------------------------------------------


def wait_for_port(port: int, process: subprocess.Popen, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"server exited with code {process.returncode} before listening")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return
        time.sleep(0.1)
    raise SystemExit("server did not start listening in time")


@contextlib.contextmanager
def running(command: list[str], env: dict[str, str], port: int, cwd: Path | None = None):
    process = subprocess.Popen(command, env=env, cwd=cwd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
    try:
        wait_for_port(port, process)
        yield process
    finally:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()


def serve_bare(port: int) -> None:
    """The ceiling: Starlette+uvicorn reading the body and answering JSON, nothing else."""
    import uvicorn
    from starlette.applications import Starlette
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    async def receive(request):
        await request.body()
        return JSONResponse({"received": True, "duplicate": False})

    app = Starlette(routes=[Route("/webhooks/stripe", receive, methods=["POST"])])
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", access_log=False)


# --- verification ------------------------------------------------------------------------


async def verify(database_url: str, redis_url: str, queue_name: str, acknowledged: set[str]) -> bool:
    """Every acknowledged event is a stored row, and named by a queued arq job or carried by
    the queue's open job: one no worker has claimed yet, which takes every due pending event
    when it runs (app/store/queue.py; as this repository stores and queues them; another
    checkout may do it otherwise: then n/a)."""
    import asyncpg
    from redis.asyncio import Redis

    conn = await asyncpg.connect(database_url, server_settings={"search_path": SCHEMAS})
    try:
        stored = {row["id"] for row in await conn.fetch("SELECT id FROM stripe_events")}
        due_pending = {row["id"] for row in await conn.fetch(
            "SELECT id FROM stripe_events WHERE status = 'pending' AND next_attempt_at IS NULL")}
        pending = await conn.fetchval("SELECT count(*) FROM stripe_events WHERE status = 'pending'")
    except asyncpg.PostgresError as problem:
        print(f"verify       n/a: {type(problem).__name__} reading stripe_events")
        return True
    finally:
        await conn.close()
    redis = Redis.from_url(redis_url)
    job_ids = await redis.zrange(queue_name, 0, -1)
    queued: set[str] = set()
    for start in range(0, len(job_ids), 500):
        keys = [b"arq:job:" + job_id for job_id in job_ids[start : start + 500]]
        for raw in await redis.mget(keys):
            with contextlib.suppress(Exception):
                queued.update(pickle.loads(raw)["a"][0])
    unclaimed = [job_id for job_id in job_ids if not await redis.exists(b"arq:in-progress:" + job_id)]
    await redis.aclose()
    carried = (due_pending - queued) if unclaimed else set()
    missing_rows = acknowledged - stored
    missing_jobs = acknowledged - queued - carried if job_ids else set()
    print(
        f"verify       {len(acknowledged):,} acknowledged, {len(stored):,} stored ({pending:,} pending), "
        f"{len(queued):,} named by {len(job_ids):,} queued jobs, {len(carried & acknowledged):,} carried by the open job; "
        f"not stored: {len(missing_rows)}, not queued: {len(missing_jobs) if job_ids else 'n/a (no arq jobs)'}"
    )
    return not missing_rows and not missing_jobs


# --- main ---------------------------------------------------------------------------------


async def measure(name, host, port, requests, args, server_pid: int | None = None) -> Result:
    count = len(requests)
    warm = min(WARMUP_REQUESTS, count // 10)
    warmup = await hammer(host, port, requests, range(warm), args.connections, args.duration, measure=False)
    cpu_before, client_before = cpu_seconds(server_pid), time.process_time()
    result = await hammer(host, port, requests, range(warm, count), args.connections, args.duration)
    result.client_cpu_seconds = time.process_time() - client_before
    if cpu_before is not None:
        result.server_cpu_seconds = cpu_seconds(server_pid) - cpu_before
    result.acknowledged += warmup.acknowledged
    for kind, n in warmup.errors.items():
        result.errors[kind] = result.errors.get(kind, 0) + n
    report(name, result)
    return result


async def run(args) -> int:
    account = simulated_account(args.count, max(1, args.count // 10), 100, args.seed)
    payloads = account.events[: args.count]
    print(size_line(orjson.dumps(p) for p in payloads))
    print(
        f"{args.connections} connections, up to {len(payloads):,} events or {args.duration:.0f} s per target; "
        f"{os.cpu_count()} cores shared by client, server, PostgreSQL and Redis"
    )
    if args.url:
        target = urlparse(args.url)
        if target.hostname not in LOOPBACK:
            raise SystemExit("this benchmark only sends traffic to 127.0.0.1")
        ids, requests = build_requests(payloads, target.hostname, target.port or 80, args.secret)
        result = await measure("stripeline", target.hostname, target.port or 80, requests, args)
        if args.database_url and args.redis_url:
            ok = await verify(args.database_url, args.redis_url, args.queue, {ids[i] for i in result.acknowledged})
            return 0 if ok else 1
        return 0

    checkout = checkout_of(args)
    print(f"checkout under test: {checkout.describe()}")
    bare = None
    if not args.no_bare:
        port = free_port()
        _, requests = build_requests(payloads, "127.0.0.1", port, SECRET)
        env = {**os.environ, "LOG_LEVEL": args.log_level, "LOG_FORMAT": "json"}
        with running([sys.executable, __file__, "--serve-bare", str(port)], env, port) as server:
            bare = await measure("bare", "127.0.0.1", port, requests, args, server.pid)

    async with fresh_database() as (database_name, database_url), claimed_redis_db() as (redis_url, _):
        port = free_port()
        env = product_env(database_url, redis_url, STRIPELINE_QUEUE=args.queue, LOG_LEVEL=args.log_level)
        migrate(checkout, env)
        ids, requests = build_requests(payloads, "127.0.0.1", port, SECRET)
        command = checkout.command("web", "--host", "127.0.0.1", "--port", str(port))
        with running(command, env, port, cwd=checkout.root) as server:
            async with profiled(args.profile, {"web": server.pid}, database_name):
                result = await measure("stripeline", "127.0.0.1", port, requests, args, server.pid)
        ok = await verify(database_url, redis_url, args.queue, {ids[i] for i in result.acknowledged})
    if bare is not None and bare.seconds and result.seconds:
        ours, ceiling = len(result.acknowledged) / result.seconds, len(bare.acknowledged) / bare.seconds
        print(f"ceiling      stripeline acknowledged {ours:,.0f}/s = {ours / ceiling:.0%} of the bare Starlette "
              f"ceiling of this run ({ceiling:,.0f}/s)")
    return 0 if ok else 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--count", type=int, default=30_000, help="events per target (the first tenth warms up)")
    parser.add_argument("--duration", type=float, default=30, help="at most this many seconds per target")
    parser.add_argument("--url", help="a running `stripeline web` on 127.0.0.1 instead of starting one")
    parser.add_argument("--secret", default=os.environ.get("STRIPE_WEBHOOK_SECRET", SECRET).split(",")[0])
    parser.add_argument("--database-url", help="with --url: verify against this database")
    parser.add_argument("--redis-url", help="with --url: verify against this Redis")
    parser.add_argument("--queue", help="arq queue name (default: stripeline:bench, or arq:queue with --url)")
    parser.add_argument("--log-level", default="info", help="LOG_LEVEL of the server under test")
    parser.add_argument("--no-bare", action="store_true", help="skip the bare Starlette ceiling")
    parser.add_argument("--serve-bare", type=int, help=argparse.SUPPRESS)
    add_common_arguments(parser)
    args = parser.parse_args()
    args.queue = args.queue or ("arq:queue" if args.url else "stripeline:bench")
    if args.serve_bare:
        serve_bare(args.serve_bare)
        return 0
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    return asyncio.run(run(args))


if __name__ == "__main__":
    sys.exit(main())
