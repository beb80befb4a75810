"""One model at scale: live delivery with two workers, `replay --rebuild` and `import` against in-order processing.

Generates a simulated account (tests/simulation.py: same-second bursts, both API shapes,
customers deleted in Stripe with events of theirs before and after the deletion, backfill
snapshot events) of about --events events, then builds its model four ways, each in a
database of its own, and reads every customer through the HTTP API (`GET /api/customers/{id}`
and its timeline, plus the segment counts) as a user would:

1. reference: the stream applied in Stripe order, in-process, in batches (the tests show
   batches equal one event at a time);
2. live: signed webhooks in Stripe order (plus a share delivered again, late) over
   --concurrency connections into `stripeline web`, processed by two `stripeline worker`s;
3. rebuild: `stripeline replay --rebuild` over the live database's own log;
4. import: `stripeline import` of the stream (shuffled, with repeats) into an empty database.

It prints the number of customers whose answer differs from the reference after each path
(each must be 0), and how long each took.

    .venv/bin/python bench/one_model.py [--events 20000] [--mode anonymize|delete]

Uses this machine's PostgreSQL (root@127.0.0.1:5432) and Redis (127.0.0.1:6379) unless
BENCH_DATABASE_URL / BENCH_REDIS_URL say otherwise. Everything it creates is removed at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import random
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import asyncpg  # noqa: E402
import httpx  # noqa: E402
import orjson  # noqa: E402
from redis.asyncio import Redis  # noqa: E402

from app.db import connect, create_pool  # noqa: E402
from app.events import event_from_payload, insert_events  # noqa: E402
from app.migrate import migrate  # noqa: E402
from app.processing import REPLAY, Batch, Engine, default_registry  # noqa: E402
from app.settings import Settings  # noqa: E402
from app.signature import sign  # noqa: E402
from tests.observed import differing, observed  # noqa: E402
from tests.simulation import generate  # noqa: E402

ADMIN_URL = os.environ.get("BENCH_DATABASE_URL", "postgresql://root@127.0.0.1:5432/postgres")
REDIS_BASE = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379")
SECRET = "whsec_bench_secret"
TOKEN = "bench-token"
COMMAND = [sys.executable, "-m", "app.cli"]


def with_database(url: str, name: str) -> str:
    base, _, _ = url.rpartition("/")
    return f"{base}/{name}"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Run:
    """The databases, Redis db and processes of one bench run, all removed at the end."""

    def __init__(self, admin: asyncpg.Connection, mode: str) -> None:
        self.admin = admin
        self.mode = mode
        self.prefix = f"stripeline_onemodel_{os.getpid()}"
        self.databases: list[str] = []
        self.processes: list[subprocess.Popen] = []
        self.redis_number: int | None = None

    async def database(self, name: str) -> str:
        full = f"{self.prefix}_{name}"
        await self.admin.execute(f'CREATE DATABASE "{full}"')
        self.databases.append(full)
        url = with_database(ADMIN_URL, full)
        conn = await connect(url)
        try:
            await migrate(conn)
        finally:
            await conn.close()
        return url

    async def claim_redis(self) -> str:
        claimer = Redis.from_url(f"{REDIS_BASE}/0")
        try:
            for number in range(15, 0, -1):
                if await claimer.set(f"stripeline:test-db:{number}", f"bench-{uuid.uuid4().hex}", nx=True, ex=3600):
                    self.redis_number = number
                    redis = Redis.from_url(f"{REDIS_BASE}/{number}")
                    await redis.flushdb()
                    await redis.aclose()
                    return f"{REDIS_BASE}/{number}"
        finally:
            await claimer.aclose()
        raise SystemExit("no free Redis db number (1-15)")

    def env(self, database_url: str, redis_url: str, port: int | None = None) -> dict[str, str]:
        env = {
            **os.environ,
            "DATABASE_URL": database_url,
            "REDIS_URL": redis_url,
            "STRIPE_WEBHOOK_SECRET": SECRET,
            "STRIPELINE_API_TOKEN": TOKEN,
            "STRIPELINE_QUEUE": f"stripeline:bench:{os.getpid()}",
            "STRIPELINE_DELETED_CUSTOMERS": self.mode,
            "LOG_LEVEL": "warning",
        }
        if port is not None:
            env["PORT"] = str(port)
        return env

    def start(self, argv: list[str], env: dict[str, str]) -> subprocess.Popen:
        process = subprocess.Popen([*COMMAND, *argv], env=env, cwd=ROOT, stdout=subprocess.DEVNULL,
                                   stderr=subprocess.DEVNULL)
        self.processes.append(process)
        return process

    async def web(self, database_url: str, redis_url: str) -> int:
        port = free_port()
        self.start(["web", "--host", "127.0.0.1"], self.env(database_url, redis_url, port))
        for _ in range(400):
            with contextlib.suppress(OSError):
                _, writer = await asyncio.open_connection("127.0.0.1", port)
                writer.close()
                return port
            await asyncio.sleep(0.05)
        raise SystemExit("stripeline web did not start")

    def stop_processes(self) -> None:
        for process in self.processes:
            process.terminate()
        for process in self.processes:
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        self.processes.clear()

    async def close(self) -> None:
        self.stop_processes()
        for name in self.databases:
            await self.admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        if self.redis_number is not None:
            redis = Redis.from_url(f"{REDIS_BASE}/{self.redis_number}")
            await redis.flushdb()
            await redis.aclose()
            claimer = Redis.from_url(f"{REDIS_BASE}/0")
            await claimer.delete(f"stripeline:test-db:{self.redis_number}")
            await claimer.aclose()


async def send_all(port: int, bodies: list[bytes], concurrency: int) -> list[int]:
    statuses: list[int] = []
    pending = iter(bodies)
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=60) as client:

        async def connection() -> None:
            for body in pending:
                headers = {"stripe-signature": sign(body, SECRET), "content-type": "application/json"}
                statuses.append((await client.post("/webhooks/stripe", content=body, headers=headers)).status_code)

        await asyncio.gather(*(connection() for _ in range(concurrency)))
    return statuses


async def wait_until_processed(url: str, timeout: float) -> None:
    conn = await asyncpg.connect(url)
    try:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            left = await conn.fetchval("SELECT count(*) FROM stripe_events WHERE status IN ('pending', 'failed')")
            if not left:
                return
            await asyncio.sleep(0.2)
        raise SystemExit("timed out waiting for the workers")
    finally:
        await conn.close()


async def look(port: int, customers: list[str]) -> dict:
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=60,
                                 headers={"authorization": f"Bearer {TOKEN}"}) as client:
        return await observed(client, customers)


def cli(argv: list[str], env: dict[str, str], stdin: bytes | None = None) -> float:
    started = time.perf_counter()
    done = subprocess.run([*COMMAND, *argv], env=env, cwd=ROOT, input=stdin, capture_output=True)
    if done.returncode != 0:
        raise SystemExit(f"stripeline {argv[0]} failed: {done.stderr.decode()[-2000:]}")
    return time.perf_counter() - started


async def reference(url: str, records: list, settings: Settings, batch: int) -> None:
    """The stream in Stripe order, in-process, in batches (every event once)."""
    conn = await connect(url)
    try:
        await insert_events(conn, records)
    finally:
        await conn.close()
    pool = await create_pool(url, max_size=2)
    try:
        engine = Engine(pool, settings, default_registry())
        ordered = sorted(records, key=lambda r: (r.created, r.id))
        for start in range(0, len(ordered), batch):
            chunk = ordered[start : start + batch]
            await engine.run(Batch.read(chunk, ["pending"] * len(chunk)), REPLAY)
        async with pool.acquire() as conn:
            await conn.execute("UPDATE stripe_events SET status = 'processed' WHERE status = 'pending'")
    finally:
        await pool.close()


def report(name: str, got: dict, want: dict) -> int:
    different = differing(got, want)
    customers = [key for key in different if key != "segment counts"]
    print(f"{name}: {len(customers)} of {len(want['customers'])} customers differ from in-order processing"
          + ("; segment counts differ" if "segment counts" in different else ""), flush=True)
    for key in customers[:3]:
        print(f"  {key}: got {str(got['customers'].get(key))[:300]}", flush=True)
        print(f"  {key}: want {str(want['customers'].get(key))[:300]}", flush=True)
    return len(different)


async def main(args: argparse.Namespace) -> int:
    account = generate(args.seed, max(1, args.events // 3))
    while len(account.events) < args.events:
        account.act()
    events = account.events
    sizes = sorted(len(orjson.dumps(e)) for e in events)
    print(f"stream: {len(events)} events, {len(account.customers)} customers, {len(account.gone)} deleted in Stripe, "
          f"median payload {statistics.median(sizes) / 1024:.1f} KB (p10 {sizes[len(sizes) // 10] / 1024:.1f}, "
          f"p90 {sizes[len(sizes) * 9 // 10] / 1024:.1f}); mode {args.mode}", flush=True)
    records = [event_from_payload(e) for e in events]
    settings = Settings(deleted_customers=args.mode)
    admin = await asyncpg.connect(ADMIN_URL)
    run = Run(admin, args.mode)
    problems = 0
    try:
        redis_url = await run.claim_redis()

        started = time.perf_counter()
        reference_url = await run.database("reference")
        await reference(reference_url, records, settings, args.batch)
        print(f"reference: in-order, batches of {args.batch}, {time.perf_counter() - started:.1f} s", flush=True)
        port = await run.web(reference_url, redis_url)
        want = await look(port, account.customers)
        run.stop_processes()

        live_url = await run.database("live")
        port = await run.web(live_url, redis_url)
        for _ in range(2):
            run.start(["worker"], run.env(live_url, redis_url))
        rng = random.Random(args.seed)
        late = rng.sample(events, k=len(events) // 20)
        bodies = [orjson.dumps(e) for e in events + late]
        started = time.perf_counter()
        statuses = await send_all(port, bodies, args.concurrency)
        await wait_until_processed(live_url, args.timeout)
        seconds = time.perf_counter() - started
        bad = sum(1 for s in statuses if s != 200)
        print(f"live: {len(bodies)} webhooks ({len(late)} of them again, late), {bad} not answered 200, "
              f"two workers, {len(events) / seconds:.0f} events/s end to end", flush=True)
        problems += report("live", await look(port, account.customers), want) + bad

        seconds = cli(["replay", "--rebuild"], run.env(live_url, redis_url))
        print(f"rebuild: `stripeline replay --rebuild` {len(events) / seconds:.0f} events/s (process included)",
              flush=True)
        problems += report("replay --rebuild", await look(port, account.customers), want)
        run.stop_processes()

        import_url = await run.database("import")
        shuffled = events + rng.sample(events, k=len(events) // 10)
        rng.shuffle(shuffled)
        with tempfile.NamedTemporaryFile(suffix=".jsonl") as file:
            file.write(b"\n".join(orjson.dumps(e) for e in shuffled) + b"\n")
            file.flush()
            seconds = cli(["import", file.name], run.env(import_url, redis_url))
        print(f"import: `stripeline import` of {len(shuffled)} lines (shuffled, with repeats), "
              f"{len(events) / seconds:.0f} events/s (process included)", flush=True)
        port = await run.web(import_url, redis_url)
        problems += report("import", await look(port, account.customers), want)
    finally:
        await run.close()
        await admin.close()
    print(f"at {datetime.now(timezone.utc).isoformat(timespec='seconds')}: "
          f"{'every path gives the in-order model' if not problems else f'{problems} differences'}")
    return 1 if problems else 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=20000)
    parser.add_argument("--mode", choices=("anonymize", "delete"), default="anonymize")
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--batch", type=int, default=500, help="batch size of the in-order reference")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--timeout", type=float, default=1200)
    sys.exit(asyncio.run(main(parser.parse_args())))
