"""Webhook ingest throughput: signed, distinct Stripe events at a given concurrency.

By default it starts everything itself on this machine: a fresh PostgreSQL database (created,
migrated, dropped afterwards), a Redis db number claimed as the tests claim theirs, a
`stripeline web` process, and a bare Starlette+uvicorn endpoint as the ceiling. It prints
acknowledged events/s, p50/p99 latency and errors for both, then checks that every
acknowledged event is stored and queued for the worker (no worker runs meanwhile).

    .venv/bin/python bench/ingest.py                    # 64 connections, 30,000 events
    .venv/bin/python bench/ingest.py --connections 16 --count 10000
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
from urllib.parse import urlparse, urlunparse

import orjson

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from app.signature import sign  # noqa: E402

SECRET = "whsec_bench_secret"
TOKEN = "bench-token"
LOOPBACK = {"127.0.0.1", "localhost", "::1"}
WARMUP_REQUESTS = 1000


# --- events -------------------------------------------------------------------------------


def subscription_event(n: int, run: str) -> dict:
    """A customer.subscription.updated event with one item (about 1.5 KB of JSON)."""
    now = int(time.time())
    customer = f"cus_bench{run}{n % 5000:05d}"
    price = {
        "id": "price_1PbenchMonthly",
        "object": "price",
        "active": True,
        "currency": "usd",
        "nickname": "Pro monthly",
        "product": "prod_Pbench",
        "recurring": {"interval": "month", "interval_count": 1, "usage_type": "licensed"},
        "type": "recurring",
        "unit_amount": 4900,
    }
    subscription = {
        "id": f"sub_bench{run}{n:07d}",
        "object": "subscription",
        "application": None,
        "billing_cycle_anchor": now - 86400 * 3,
        "cancel_at": None,
        "cancel_at_period_end": False,
        "canceled_at": None,
        "collection_method": "charge_automatically",
        "created": now - 86400 * 40,
        "currency": "usd",
        "customer": customer,
        "default_payment_method": "pm_1PbenchCard",
        "discount": None,
        "ended_at": None,
        "items": {
            "object": "list",
            "data": [
                {
                    "id": f"si_bench{run}{n:07d}",
                    "object": "subscription_item",
                    "created": now - 86400 * 40,
                    "current_period_start": now - 86400 * 3,
                    "current_period_end": now + 86400 * 27,
                    "metadata": {},
                    "price": price,
                    "quantity": 1 + n % 3,
                    "subscription": f"sub_bench{run}{n:07d}",
                }
            ],
            "has_more": False,
            "url": f"/v1/subscription_items?subscription=sub_bench{run}{n:07d}",
        },
        "latest_invoice": f"in_bench{run}{n:07d}",
        "livemode": False,
        "metadata": {"plan": "pro", "seats": str(1 + n % 3)},
        "pause_collection": None,
        "start_date": now - 86400 * 40,
        "status": "active",
        "trial_end": None,
        "trial_start": None,
    }
    return {
        "id": f"evt_bench{run}{n:08d}",
        "object": "event",
        "api_version": "2025-03-31.basil",
        "created": now,
        "data": {"object": subscription, "previous_attributes": {"metadata": {"seats": "1"}}},
        "livemode": False,
        "pending_webhooks": 1,
        "request": {"id": f"req_bench{n:08d}", "idempotency_key": str(uuid.uuid4())},
        "type": "customer.subscription.updated",
    }


def build_requests(count: int, host: str, port: int, secret: str) -> tuple[list[str], list[bytes]]:
    """(event ids, raw HTTP/1.1 requests), signed now: the run must end within the tolerance."""
    run = uuid.uuid4().hex[:6]
    ids, requests = [], []
    for n in range(count):
        payload = subscription_event(n, run)
        body = orjson.dumps(payload)
        head = (
            f"POST /webhooks/stripe HTTP/1.1\r\nHost: {host}:{port}\r\nUser-Agent: Stripe/1.0 (+https://stripe.com/docs/webhooks)\r\n"
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


def cpu_seconds(pid: int | None) -> float | None:
    """User+system CPU time of a process so far (Linux), to compare servers whatever the load."""
    if pid is None:
        return None
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


# --- servers ------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


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
def running(command: list[str], env: dict[str, str], port: int):
    process = subprocess.Popen(command, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
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


# --- the fresh database and Redis db ------------------------------------------------------


def with_database(url: str, name: str) -> str:
    return urlunparse(urlparse(url)._replace(path=f"/{name}"))


@contextlib.asynccontextmanager
async def fresh_database(admin_url: str):
    import asyncpg

    from app.db import connect
    from app.migrate import migrate

    name = f"stripeline_bench_{os.getpid()}"
    admin = await asyncpg.connect(admin_url)
    await admin.execute(f'CREATE DATABASE "{name}"')
    try:
        url = with_database(admin_url, name)
        conn = await connect(url)
        await migrate(conn)
        await conn.close()
        yield url
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


@contextlib.asynccontextmanager
async def claimed_redis_db(base_url: str):
    """A Redis db number (1-15) claimed the way the test sessions claim theirs, flushed after."""
    from redis.asyncio import Redis

    claimer = Redis.from_url(f"{base_url}/0")
    token = f"bench-{os.getpid()}"
    for number in range(15, 0, -1):
        if await claimer.set(f"stripeline:test-db:{number}", token, nx=True, ex=3600):
            break
    else:
        raise SystemExit("no free Redis db number (1-15)")
    url = f"{base_url}/{number}"
    own = Redis.from_url(url)
    await own.flushdb()
    try:
        yield url
    finally:
        await own.flushdb()
        await own.aclose()
        await claimer.delete(f"stripeline:test-db:{number}")
        await claimer.aclose()


async def verify(database_url: str, redis_url: str, queue_name: str, acknowledged: set[str]) -> bool:
    """Every acknowledged event is a stored row and named by a queued arq job."""
    from redis.asyncio import Redis

    from app.db import connect

    conn = await connect(database_url)
    stored = {row["id"] for row in await conn.fetch("SELECT id FROM stripe_events")}
    pending = await conn.fetchval("SELECT count(*) FROM stripe_events WHERE status = 'pending'")
    await conn.close()
    redis = Redis.from_url(redis_url)
    job_ids = await redis.zrange(queue_name, 0, -1)
    queued: set[str] = set()
    for start in range(0, len(job_ids), 500):
        keys = [b"arq:job:" + job_id for job_id in job_ids[start : start + 500]]
        for raw in await redis.mget(keys):
            if raw is not None:
                queued.update(pickle.loads(raw)["a"][0])
    await redis.aclose()
    missing_rows = acknowledged - stored
    missing_jobs = acknowledged - queued
    print(
        f"verify       {len(acknowledged):,} acknowledged, {len(stored):,} stored ({pending:,} pending), "
        f"{len(queued):,} queued in {len(job_ids):,} jobs; "
        f"not stored: {len(missing_rows)}, not queued: {len(missing_jobs)}"
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
    print(
        f"{args.connections} connections, up to {args.count:,} events or {args.duration:.0f} s per target; "
        f"{os.cpu_count()} cores shared by client, server, PostgreSQL and Redis"
    )
    if args.url:
        target = urlparse(args.url)
        if target.hostname not in LOOPBACK:
            raise SystemExit("this benchmark only sends traffic to 127.0.0.1")
        ids, requests = build_requests(args.count, target.hostname, target.port or 80, args.secret)
        result = await measure("stripeline", target.hostname, target.port or 80, requests, args)
        if args.database_url and args.redis_url:
            ok = await verify(args.database_url, args.redis_url, args.queue, {ids[i] for i in result.acknowledged})
            return 0 if ok else 1
        return 0

    env = {**os.environ, "LOG_LEVEL": args.log_level, "LOG_FORMAT": "json"}
    if not args.no_bare:
        port = free_port()
        _, requests = build_requests(args.count, "127.0.0.1", port, SECRET)
        with running([sys.executable, __file__, "--serve-bare", str(port)], env, port) as server:
            await measure("bare", "127.0.0.1", port, requests, args, server.pid)

    async with fresh_database(args.admin_url) as database_url, claimed_redis_db(args.redis) as redis_url:
        port = free_port()
        env |= {
            "DATABASE_URL": database_url,
            "REDIS_URL": redis_url,
            "STRIPE_WEBHOOK_SECRET": SECRET,
            "STRIPELINE_API_TOKEN": TOKEN,
            "STRIPELINE_QUEUE": args.queue,
            "PYTHONPATH": str(ROOT),
        }
        ids, requests = build_requests(args.count, "127.0.0.1", port, SECRET)
        command = [sys.executable, "-m", "app.cli", "web", "--host", "127.0.0.1", "--port", str(port)]
        with running(command, env, port) as server:
            result = await measure("stripeline", "127.0.0.1", port, requests, args, server.pid)
        ok = await verify(database_url, redis_url, args.queue, {ids[i] for i in result.acknowledged})
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
    parser.add_argument("--admin-url", default="postgresql://root@127.0.0.1:5432/test")
    parser.add_argument("--redis", default="redis://127.0.0.1:6379")
    parser.add_argument("--log-level", default="info", help="LOG_LEVEL of the server under test")
    parser.add_argument("--no-bare", action="store_true", help="skip the bare Starlette ceiling")
    parser.add_argument("--serve-bare", type=int, help=argparse.SUPPRESS)
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
