"""A whole stripeline on loopback, to break on purpose: for the fault suite and bench/soak.py.

- `Cluster`: our own PostgreSQL cluster and redis-server (tests/servers.py), a migrated
  database, and real `stripeline web` and `stripeline worker` processes writing their logs to
  files. Faults: kill, freeze or restart a server, terminate backends, SIGKILL a worker.
- `Sender`: delivers signed events as Stripe does, over keep-alive connections at a fixed
  rate, each event two or three times and out of order, and delivers again (after a pause)
  every event not yet acknowledged with a 2xx. Every answer is recorded.
- `check`: what must hold once the stream is in: every acknowledged event stored and
  processed, none pending or failed, the model equal to in-order processing of the stream,
  every process alive, every answer a 200 or a 503.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import asyncpg
import orjson

from stripeline.handlers import registry
from stripeline.model.context import ProcessingContext
from stripeline.model.events import event_from_payload
from stripeline.processing.engine import apply_events
from stripeline.settings import Settings
from stripeline.signature import sign
from stripeline.store.db import connect
from stripeline.store.event_log import insert_events
from stripeline.store.migrate import migrate
from tests.handlers.billing_support import model_state
from tests.servers import Servers, free_port
from tests.simulation import Account

ROOT = Path(__file__).resolve().parents[2]
SECRET = "whsec_faults_secret_5c2e"
TOKEN = "faults-api-token-0d9a71"
DATABASE = "stripeline"
REFERENCE = "in_order"


# --- processes --------------------------------------------------------------------------------


@dataclass
class Proc:
    """A `stripeline` process with its output in a file."""

    name: str
    command: list[str]
    env: dict[str, str]
    log_path: Path
    popen: subprocess.Popen | None = None
    exit_codes: list[int] = field(default_factory=list)

    def start(self) -> None:
        log = open(self.log_path, "ab")  # noqa: SIM115 - the child holds it
        self.popen = subprocess.Popen(self.command, env=self.env, cwd=ROOT, stdin=subprocess.DEVNULL, stdout=log,
                                      stderr=subprocess.STDOUT)
        log.close()

    @property
    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def signal(self, signum: int) -> None:
        if self.alive:
            self.popen.send_signal(signum)

    def wait(self, timeout: float = 30) -> int:
        try:
            code = self.popen.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            code = self.popen.wait()
        self.exit_codes.append(code)
        return code

    def kill(self) -> None:
        """SIGKILL: whatever it held is abandoned."""
        if self.alive:
            self.popen.kill()
            self.exit_codes.append(self.popen.wait())

    def rss_mb(self) -> float:
        try:
            for line in Path(f"/proc/{self.popen.pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
        except (FileNotFoundError, ProcessLookupError):
            pass
        return 0.0

    def lines(self) -> list[dict[str, Any]]:
        """Every line it wrote (JSON lines; anything else kept as {"text": ...})."""
        found = []
        for raw in self.log_path.read_bytes().splitlines():
            try:
                found.append(orjson.loads(raw))
            except orjson.JSONDecodeError:
                found.append({"text": raw.decode(errors="replace")})
        return found


class Cluster:
    """Servers of our own, one database, one web and `workers` worker processes."""

    def __init__(self, servers: Servers, log_dir: Path, *, workers: int = 2, log_level: str = "info",
                 env: dict | None = None):
        self.servers = servers
        self.port = free_port()
        self.log_dir = log_dir
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.env = {
            "PATH": os.environ.get("PATH", ""),
            "HOME": os.environ.get("HOME", "/"),
            "DATABASE_URL": servers.postgres.url(DATABASE),
            "REDIS_URL": servers.redis.url,
            "STRIPE_WEBHOOK_SECRET": SECRET,
            "STRIPELINE_API_TOKEN": TOKEN,
            "PORT": str(self.port),
            "LOG_LEVEL": log_level,
            **(env or {}),
        }
        self.web = self._proc("web", ["web", "--host", "127.0.0.1"])
        self.workers = [self._proc(f"worker{n}", ["worker"]) for n in range(1, workers + 1)]

    def _proc(self, name: str, arguments: list[str]) -> Proc:
        return Proc(name, [sys.executable, "-m", "stripeline", *arguments], self.env, self.log_dir / f"{name}.log")

    @property
    def processes(self) -> list[Proc]:
        return [self.web, *self.workers]

    async def start(self) -> None:
        admin = await asyncpg.connect(self.servers.postgres.url())
        try:
            for name in (DATABASE, REFERENCE):
                await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
                await admin.execute(f'CREATE DATABASE "{name}"')
        finally:
            await admin.close()
        for name in (DATABASE, REFERENCE):
            conn = await connect(self.servers.postgres.url(name))
            try:
                await migrate(conn)
            finally:
                await conn.close()
        for process in self.processes:
            process.start()
        await self.wait_until_answering()

    async def wait_until_answering(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while True:
            try:
                reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
                writer.close()
                return
            except OSError:
                if time.monotonic() > deadline or not self.web.alive:
                    raise RuntimeError(f"stripeline web did not start; see {self.web.log_path}") from None
                await asyncio.sleep(0.1)

    async def stop(self) -> dict[str, int]:
        """SIGTERM every process; their exit codes."""
        for process in self.processes:
            process.signal(signal.SIGTERM)
        return {process.name: await asyncio.to_thread(process.wait) for process in self.processes if process.popen}

    def kill_processes(self) -> None:
        for process in self.processes:
            process.kill()

    # --- faults ---------------------------------------------------------------------------

    async def kill_redis(self, seconds: float) -> None:
        self.servers.redis.kill()
        await asyncio.sleep(seconds)
        await asyncio.to_thread(self.servers.redis.start)

    async def freeze_redis(self, seconds: float) -> None:
        self.servers.redis.freeze()
        try:
            await asyncio.sleep(seconds)
        finally:
            self.servers.redis.thaw()

    async def kill_worker(self, index: int = 0, down_seconds: float = 0.5) -> None:
        """SIGKILL a worker (mid-batch while events stream in), then start a new one in its place."""
        worker = self.workers[index]
        worker.kill()
        await asyncio.sleep(down_seconds)
        worker.start()

    async def terminate_backends(self) -> int:
        admin = await asyncpg.connect(self.servers.postgres.url())
        try:
            return await admin.fetchval(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE datname = $1", DATABASE
            )
        finally:
            await admin.close()

    async def restart_postgres(self, seconds: float) -> None:
        await asyncio.to_thread(self.servers.postgres.stop, "fast")
        await asyncio.sleep(seconds)
        await asyncio.to_thread(self.servers.postgres.start)

    # --- reading the outcome --------------------------------------------------------------

    async def conn(self, database: str = DATABASE) -> asyncpg.Connection:
        return await connect(self.servers.postgres.url(database))


@contextlib.asynccontextmanager
async def running_cluster(log_dir: Path, **options: Any):
    """A started Cluster on servers of its own, torn down (files and all, logs kept) on exit.

    Raises Unavailable when this machine cannot run the servers (the tests then skip).
    """
    servers = await asyncio.to_thread(Servers.start)
    cluster = Cluster(servers, log_dir, **options)
    try:
        await cluster.start()
        yield cluster
    finally:
        cluster.kill_processes()
        await asyncio.to_thread(servers.stop)


FAULTS = ("kill_redis", "freeze_redis", "kill_worker", "terminate_backends", "restart_postgres")


async def inflict(cluster: Cluster, fault: str, seconds: float) -> None:
    if fault == "kill_redis":
        await cluster.kill_redis(seconds)
    elif fault == "freeze_redis":
        await cluster.freeze_redis(seconds)
    elif fault == "kill_worker":
        await cluster.kill_worker(random.randrange(len(cluster.workers)))
    elif fault == "terminate_backends":
        await cluster.terminate_backends()
    elif fault == "restart_postgres":
        await cluster.restart_postgres(seconds)
    else:
        raise ValueError(fault)


# --- delivering events ------------------------------------------------------------------------


def deliveries(events: list[dict[str, Any]], rng: random.Random, spread: int = 50,
               copies: tuple[int, ...] = (2, 3)) -> list[dict[str, Any]]:
    """Each event a number of times drawn from `copies`, each copy up to `spread` places late."""
    keyed = [(n + rng.uniform(0, spread), n, e) for n, e in enumerate(events) for _ in range(rng.choice(copies))]
    return [e for _, _, e in sorted(keyed, key=lambda k: (k[0], k[1]))]


@dataclass
class Answer:
    event_id: str
    status: int  # 0: no answer (connection refused, reset or timed out)
    at: float


class Sender:
    """Delivers events to the web process; what was not acknowledged goes again after a pause."""

    def __init__(self, port: int, *, rate: float, connections: int = 16, retry_after: float = 1.0,
                 timeout: float = 15.0):
        self.port = port
        self.rate = rate
        self.connections = connections
        self.retry_after = retry_after
        self.timeout = timeout
        self.answers: list[Answer] = []
        self.acknowledged: set[str] = set()
        self.sent = 0
        self._queue: asyncio.Queue[tuple[str, bytes] | None] = asyncio.Queue()
        self._unacknowledged: set[str] = set()
        self._retrying = 0

    async def deliver(self, planned: list[dict[str, Any]], deadline: float) -> None:
        """Send `planned` at the rate, then keep delivering until every event is acknowledged."""
        bodies = {e["id"]: orjson.dumps(e) for e in planned}
        self._unacknowledged = set(bodies)
        senders = [asyncio.create_task(self._connection()) for _ in range(self.connections)]
        try:
            started = time.monotonic()
            for n, item in enumerate(planned):
                pause = started + n / self.rate - time.monotonic()
                if pause > 0:
                    await asyncio.sleep(pause)
                self._queue.put_nowait((item["id"], bodies[item["id"]]))
            while (self._unacknowledged or not self._queue.empty() or self._retrying) and time.monotonic() < deadline:
                await asyncio.sleep(0.1)
        finally:
            for _ in senders:
                self._queue.put_nowait(None)
            await asyncio.gather(*senders, return_exceptions=True)

    def _again_later(self, event_id: str, body: bytes) -> None:
        self._retrying += 1

        def put() -> None:
            self._retrying -= 1
            if event_id in self._unacknowledged:
                self._queue.put_nowait((event_id, body))

        asyncio.get_running_loop().call_later(self.retry_after, put)

    async def _connection(self) -> None:
        stream = None
        while True:
            item = await self._queue.get()
            if item is None:
                break
            event_id, body = item
            try:
                if stream is None:
                    stream = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", self.port), self.timeout)
                status, closing = await asyncio.wait_for(self._post(stream, body), self.timeout)
            except (OSError, asyncio.TimeoutError, asyncio.IncompleteReadError, ValueError):
                status, closing = 0, True
            if closing and stream is not None:
                stream[1].close()
                stream = None
            self.sent += 1
            self.answers.append(Answer(event_id, status, time.monotonic()))
            if 200 <= status < 300:
                self.acknowledged.add(event_id)
                self._unacknowledged.discard(event_id)
            elif event_id in self._unacknowledged:
                self._again_later(event_id, body)
        if stream is not None:
            stream[1].close()

    async def _post(self, stream, body: bytes) -> tuple[int, bool]:
        """(status, whether the server closes the connection)."""
        reader, writer = stream
        head = (
            f"POST /webhooks/stripe HTTP/1.1\r\nHost: stripeline\r\nContent-Type: application/json\r\n"
            f"Stripe-Signature: {sign(body, SECRET)}\r\nContent-Length: {len(body)}\r\n\r\n"
        ).encode()
        writer.write(head + body)
        await writer.drain()
        status_line = await reader.readline()
        if not status_line:
            raise asyncio.IncompleteReadError(b"", None)
        length, closing = 0, False
        while (line := await reader.readline()) not in (b"\r\n", b""):
            name, _, value = line.decode("latin-1").partition(":")
            if name.lower() == "content-length":
                length = int(value)
            elif name.lower() == "connection" and value.strip().lower() == "close":
                closing = True
        await reader.readexactly(length)
        return int(status_line.split()[1]), closing

    def statuses(self) -> Counter:
        return Counter(answer.status for answer in self.answers)


# --- what must hold ---------------------------------------------------------------------------


async def in_order_state(cluster: Cluster, account: Account, batch: int = 500) -> dict:
    """The model after processing the stream once, in Stripe order, in a database of its own."""
    conn = await cluster.conn(REFERENCE)
    try:
        records = [event_from_payload(e) for e in account.events]
        await insert_events(conn, records)
        for start in range(0, len(records), batch):
            async with conn.transaction():
                ctx = ProcessingContext(settings=Settings(), now=datetime.now(timezone.utc), registry=registry())
                await apply_events(conn, records[start : start + batch], ctx)
        return await model_state(conn, account.customers, account.prices, account.products)
    finally:
        await conn.close()


async def wait_until_settled(cluster: Cluster, timeout: float) -> float:
    """Wait until no stored event is pending; return the seconds it took."""
    started = time.monotonic()
    conn = None
    while time.monotonic() - started < timeout:
        try:
            conn = conn or await cluster.conn()
            if not await conn.fetchval("SELECT EXISTS (SELECT FROM stripe_events WHERE status = 'pending')"):
                break
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError):
            conn = None
        await asyncio.sleep(0.2)
    if conn is not None:
        await conn.close()
    return time.monotonic() - started


def stale_customers(got: dict, want: dict) -> set[str]:
    """Customers any of whose model rows differ from in-order processing."""
    owner = {}
    for state in (got, want):
        owner |= {row["id"]: row["customer_id"] for row in state["subscriptions"]}
    stale = set()
    for table in want:
        mine = {r["id"]: r for r in got[table]}
        theirs = {r["id"]: r for r in want[table]}
        for key in mine.keys() | theirs.keys():
            row = mine.get(key) or theirs.get(key)
            if mine.get(key) == theirs.get(key):
                continue
            if table == "customers":
                stale.add(key)
            elif table == "subscription_items":
                stale.add(owner.get(row["subscription_id"], f"subscription {row['subscription_id']}"))
            elif table in ("prices", "products"):
                stale.add(f"{table}:{key}")  # the catalog, no customer's
            else:
                stale.add(row.get("customer_id") or f"{table}:{key}")
    return stale


def stale_rows(got: dict, want: dict) -> list[str]:
    stale = []
    for table in want:
        mine = {r["id"]: r for r in got[table]}
        theirs = {r["id"]: r for r in want[table]}
        stale += [f"{table}:{key}" for key in sorted(mine.keys() | theirs.keys()) if mine.get(key) != theirs.get(key)]
    return stale


@dataclass
class Outcome:
    acknowledged: int
    stored: int
    lost: list[str]
    stuck: int
    failed: int
    stale: list[str]
    stale_customers: set[str]
    statuses: Counter
    dead: list[str]

    def problems(self) -> list[str]:
        found = []
        if self.lost:
            found.append(f"{len(self.lost)} acknowledged events not stored: {self.lost[:5]}")
        if self.stuck:
            found.append(f"{self.stuck} events still pending")
        if self.failed:
            found.append(f"{self.failed} events failed")
        if self.stale:
            found.append(f"{len(self.stale)} model rows differ from in-order processing: {self.stale[:5]}")
        unexpected = {status: n for status, n in self.statuses.items() if status not in (0, 200, 503)}
        if unexpected:
            found.append(f"answers other than 200 and 503: {unexpected}")
        if self.dead:
            found.append(f"processes that died: {self.dead}")
        return found


async def check(cluster: Cluster, account: Account, sender: Sender, expected: dict) -> Outcome:
    conn = await cluster.conn()
    try:
        rows = await conn.fetch("SELECT id, status FROM stripe_events")
        got = await model_state(conn, account.customers, account.prices, account.products)
    finally:
        await conn.close()
    status_of = {row["id"]: row["status"] for row in rows}
    return Outcome(
        acknowledged=len(sender.acknowledged),
        stored=len(status_of),
        lost=sorted(sender.acknowledged - status_of.keys()),
        stuck=sum(1 for status in status_of.values() if status == "pending"),
        failed=sum(1 for status in status_of.values() if status == "failed"),
        stale=stale_rows(got, expected),
        stale_customers=stale_customers(got, expected),
        statuses=sender.statuses(),
        dead=[process.name for process in cluster.processes if not process.alive],
    )


def log_excerpt(cluster: Cluster, lines: int = 15) -> str:
    """The last lines of every process's log, for a failure message."""
    parts = []
    for process in cluster.processes:
        tail = process.log_path.read_text(errors="replace").splitlines()[-lines:] if process.log_path.exists() else []
        parts.append(f"--- {process.name} ({process.log_path}) ---\n" + "\n".join(tail))
    return "\n".join(parts)
