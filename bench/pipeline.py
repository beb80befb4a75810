"""End-to-end throughput: signed webhooks into `stripeline web`, processed by `stripeline worker`.

Generates a simulated Stripe account's stream (tests/simulation.py: N events for M customers,
about --per-second events per second of `created` time, same-second bursts with Stripe's
previous_attributes), starts one web and one worker process against a fresh database and a
free Redis db number, sends every event as a signed webhook over keep-alive connections,
waits until all are processed, and prints:

- end-to-end events/s (first byte sent until the last event processed),
- processing lag p50/p99 (processed_at - received_at),
- stale rows: the final model compared with the state of applying the same events in Stripe
  order (in a second database, in batches, which the tests show equal one at a time), and
  with the simulated account's own final objects,
- as a by-product, in-process apply_events throughput of that in-order pass (replay-like).

    .venv/bin/python bench/pipeline.py --events 20000 --customers 1000

Uses this machine's PostgreSQL (root@127.0.0.1:5432) and Redis (127.0.0.1:6379) unless
BENCH_DATABASE_URL / BENCH_REDIS_URL say otherwise. Everything it creates is removed at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import socket
import subprocess
import sys
import time
import uuid
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import asyncpg  # noqa: E402
import orjson  # noqa: E402
from redis.asyncio import Redis  # noqa: E402

from app.db import connect  # noqa: E402
from app.events import event_from_payload, insert_events  # noqa: E402
from app.migrate import migrate  # noqa: E402
from app.processing import ProcessingContext, apply_events  # noqa: E402
from app.settings import Settings  # noqa: E402
from app.signature import sign  # noqa: E402
from tests.handlers.billing_support import model_state  # noqa: E402
from tests.handlers.truth import mismatches  # noqa: E402
from tests.simulation import Account  # noqa: E402

ADMIN_URL = os.environ.get("BENCH_DATABASE_URL", "postgresql://root@127.0.0.1:5432/postgres")
REDIS_BASE = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379")
SECRET = "whsec_bench_secret"
TOKEN = "bench-token"


def with_database(url: str, name: str) -> str:
    base, _, _ = url.rpartition("/")
    return f"{base}/{name}"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def generate(events: int, customers: int, per_second: int, seed: int) -> Account:
    """A stream of about `events` events, about `per_second` of them per second of created time."""
    new_second = 1 / per_second
    for _ in range(6):  # how many events an action makes varies: measure, then adjust
        account = Account(random.Random(seed), int(time.time()) - 2 * events // per_second - 60,
                          new_second=new_second, max_customers=customers, jumps=(1,))
        while len(account.events) < events:
            account.act()
        rate = len(account.events) / (account.events[-1]["created"] - account.events[0]["created"] + 1)
        if abs(rate - per_second) < per_second * 0.1:
            break
        new_second = min(1.0, new_second * (rate / per_second) ** 1.5)
    return account


async def claim_redis_db() -> tuple[int, Redis]:
    claimer = Redis.from_url(f"{REDIS_BASE}/0")
    token = f"bench-{os.getpid()}-{uuid.uuid4().hex}"
    for number in range(15, 0, -1):
        if await claimer.set(f"stripeline:test-db:{number}", token, nx=True, ex=3600):
            return number, claimer
    raise SystemExit("no free Redis db number (1-15)")


async def send_all(port: int, bodies: list[bytes], concurrency: int) -> list[int]:
    """POST every body over `concurrency` keep-alive connections; return the status codes."""
    statuses: list[int] = []
    pending = iter(bodies)

    async def connection() -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        for body in pending:
            header = (
                f"POST /webhooks/stripe HTTP/1.1\r\nHost: bench\r\nContent-Type: application/json\r\n"
                f"Stripe-Signature: {sign(body, SECRET)}\r\nContent-Length: {len(body)}\r\n\r\n"
            ).encode()
            writer.write(header + body)
            await writer.drain()
            status_line = await reader.readline()
            length = 0
            while True:
                line = await reader.readline()
                if line in (b"\r\n", b""):
                    break
                name, _, value = line.decode().partition(":")
                if name.lower() == "content-length":
                    length = int(value)
            await reader.readexactly(length)
            statuses.append(int(status_line.split()[1]))
        writer.close()

    await asyncio.gather(*(connection() for _ in range(concurrency)))
    return statuses


async def wait_until_processed(conn: asyncpg.Connection, total: int, timeout: float) -> float:
    deadline = time.perf_counter() + timeout
    while time.perf_counter() < deadline:
        done = await conn.fetchval("SELECT count(*) FROM stripe_events WHERE status IN ('processed', 'ignored')")
        if done >= total:
            return time.perf_counter()
        failed = await conn.fetchval("SELECT count(*) FROM stripe_events WHERE status = 'failed'")
        if failed:
            raise SystemExit(f"{failed} events failed")
        await asyncio.sleep(0.05)
    raise SystemExit("timed out waiting for the worker")


async def in_order_state(admin: asyncpg.Connection, name: str, account: Account, batch: int) -> tuple[dict, float]:
    """The model after applying the stream in Stripe order, and the apply_events rate."""
    await admin.execute(f'CREATE DATABASE "{name}"')
    conn = await connect(with_database(ADMIN_URL, name))
    try:
        await migrate(conn)
        records = [event_from_payload(e) for e in account.events]
        await insert_events(conn, records)
        started = time.perf_counter()
        for start in range(0, len(records), batch):
            async with conn.transaction():
                ctx = ProcessingContext(settings=Settings(), now=datetime.now(timezone.utc))
                await apply_events(conn, records[start : start + batch], ctx)
        rate = len(records) / (time.perf_counter() - started)
        return await model_state(conn, account.customers, account.prices, account.products), rate
    finally:
        await conn.close()


def cpu_seconds(pid: int | None = None) -> float:
    """CPU time used by a process (user + system), or by the whole machine when pid is None."""
    ticks = os.sysconf("SC_CLK_TCK")
    if pid is None:
        fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
        return (sum(int(f) for f in fields) - int(fields[3]) - int(fields[4])) / ticks  # not idle, not iowait
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / ticks


async def backend_cpu(conn: asyncpg.Connection, database: str) -> dict[int, float]:
    """CPU seconds used so far by each PostgreSQL backend connected to the database."""
    found = {}
    for row in await conn.fetch("SELECT pid FROM pg_stat_activity WHERE datname = $1", database):
        try:
            found[row["pid"]] = cpu_seconds(row["pid"])
        except (FileNotFoundError, PermissionError):
            pass
    return found


def stale_rows(got: dict, want: dict) -> int:
    stale = 0
    for table in want:
        mine = {r["id"]: r for r in got[table]}
        theirs = {r["id"]: r for r in want[table]}
        stale += sum(1 for key in mine.keys() | theirs.keys() if mine.get(key) != theirs.get(key))
    return stale


async def main(args: argparse.Namespace) -> None:
    account = generate(args.events, args.customers, args.per_second, args.seed)
    events = list(account.events)  # Stripe's order stays in account.events
    seconds = len({e["created"] for e in events})
    print(f"stream: {len(events)} events, {len(account.customers)} customers, "
          f"{len(events) / seconds:.0f} events per second of created time")
    if args.shuffle:
        random.Random(args.seed).shuffle(events)
    bodies = [orjson.dumps(e) for e in events]

    name = f"stripeline_bench_{os.getpid()}"
    admin = await asyncpg.connect(ADMIN_URL)
    await admin.execute(f'CREATE DATABASE "{name}"')
    database_url = with_database(ADMIN_URL, name)
    conn = await connect(database_url)
    await migrate(conn)
    number, claimer = await claim_redis_db()
    redis_url = f"{REDIS_BASE}/{number}"
    redis = Redis.from_url(redis_url)
    await redis.flushdb()
    port = free_port()
    env = {
        **os.environ,
        "DATABASE_URL": database_url,
        "REDIS_URL": redis_url,
        "STRIPE_WEBHOOK_SECRET": SECRET,
        "STRIPELINE_API_TOKEN": TOKEN,
        "STRIPELINE_QUEUE": f"stripeline:bench:{os.getpid()}",
        "LOG_LEVEL": "warning",
        "PORT": str(port),
    }
    command = [sys.executable, "-m", "app.cli"]
    processes = [
        subprocess.Popen([*command, "web", "--host", "127.0.0.1"], env=env, cwd=ROOT, stdout=subprocess.DEVNULL,
                         stderr=subprocess.DEVNULL),
        subprocess.Popen([*command, "worker"], env=env, cwd=ROOT, stdout=subprocess.DEVNULL,
                         stderr=subprocess.DEVNULL),
    ]
    try:
        for _ in range(200):
            try:
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
                writer.close()
                break
            except OSError:
                await asyncio.sleep(0.05)
        await asyncio.sleep(1.0)  # let the worker connect too
        cpu_before = [cpu_seconds(p.pid) for p in processes] + [cpu_seconds(os.getpid()), cpu_seconds()]
        backends_before = await backend_cpu(conn, name)
        started = time.perf_counter()
        statuses = await send_all(port, bodies, args.concurrency)
        sent = time.perf_counter()
        finished = await wait_until_processed(conn, len(events), args.timeout)
        cpu_after = [cpu_seconds(p.pid) for p in processes] + [cpu_seconds(os.getpid()), cpu_seconds()]
        backends_after = await backend_cpu(conn, name)
        bad = len([s for s in statuses if s != 200])
        lag = await conn.fetchrow(
            """SELECT percentile_cont(0.5) WITHIN GROUP (ORDER BY extract(epoch FROM processed_at - received_at)) AS p50,
                      percentile_cont(0.99) WITHIN GROUP (ORDER BY extract(epoch FROM processed_at - received_at)) AS p99
               FROM stripe_events"""
        )
        print(f"sent {len(bodies)} webhooks in {sent - started:.2f}s ({len(bodies) / (sent - started):.0f}/s), "
              f"{bad} not answered 200")
        print(f"end to end: {len(events) / (finished - started):.0f} events/s "
              f"({finished - started:.2f}s from first send to last processed)")
        print(f"processing lag: p50 {lag['p50'] * 1000:.0f} ms, p99 {lag['p99'] * 1000:.0f} ms")
        web, worker, client, machine = (after - before for after, before in zip(cpu_after, cpu_before))
        postgres = sum(backends_after.get(pid, 0.0) - used for pid, used in backends_before.items())
        postgres += sum(used for pid, used in backends_after.items() if pid not in backends_before)
        print(f"CPU seconds: web {web:.1f}, worker {worker:.1f}, this client {client:.1f}, "
              f"PostgreSQL backends of this run {postgres:.1f}, everything else on the machine "
              f"{machine - web - worker - client - postgres:.1f}; {2 * (finished - started):.1f} on 2 cores")
        final = await model_state(conn, account.customers, account.prices, account.products)
    finally:
        for process in processes:
            process.terminate()
        for process in processes:
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        await conn.close()
        await redis.flushdb()
        await redis.aclose()
        await claimer.delete(f"stripeline:test-db:{number}")
        await claimer.aclose()
        if args.keep:
            print(f"kept database {name}")
        else:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    reference_name = f"{name}_in_order"
    try:
        expected, rate = await in_order_state(admin, reference_name, account, args.batch)
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{reference_name}" WITH (FORCE)')
        await admin.close()
    print(f"in-order apply_events (replay-like, batches of {args.batch}): {rate:.0f} events/s")
    print(f"stale rows vs in-order state: {stale_rows(final, expected)}; "
          f"differences from the account's truth: {len(mismatches(account, final))}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=20000)
    parser.add_argument("--customers", type=int, default=1000)
    parser.add_argument("--per-second", type=int, default=100, help="events per second of created time")
    parser.add_argument("--concurrency", type=int, default=64, help="webhook connections in flight")
    parser.add_argument("--batch", type=int, default=500, help="batch size of the in-order reference pass")
    parser.add_argument("--shuffle", action="store_true", help="send in random order instead of Stripe order")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--timeout", type=float, default=600)
    parser.add_argument("--keep", action="store_true", help="keep the pipeline's database (drop it yourself)")
    asyncio.run(main(parser.parse_args()))
