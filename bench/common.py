"""What the benches share: the checkout they measure, the real-sized stream, and the meters.

- `Checkout` (`--code DIR`, default this repository): the measured processes (`stripeline
  web`, `worker`, `migrate`, `import`, `replay`) run as DIR's `.venv/bin/python -m stripeline`
  with cwd=DIR, so that two checkouts can be compared on the same stream and machine. The
  benches drive the product only through those processes and HTTP; the stream, the in-order
  reference state and the figures come from this checkout's code.
- `simulated_account` / `simulated_events`: tests/simulation.py's accounts, cached under
  ~/.cache/stripeline-bench (keyed by the parameters and the simulation's source), because a
  200,000-event stream takes minutes to generate. `--small` sends `slim(payload)`: the events
  as the test factories shaped them before real-sized objects (median about 1.3 KB).
- `size_line`: the median, p10 and p90 compact payload size every bench prints.
- `CpuMeter`: CPU seconds of given processes and of the PostgreSQL backends serving one
  database, sampled while the bench runs (backends come and go with the pools).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import inspect
import itertools
import os
import pickle
import random
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, AsyncIterator, Iterable
from urllib.parse import urlparse, urlunparse

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import asyncpg  # noqa: E402
import orjson  # noqa: E402

from tests.simulation import Account  # noqa: E402

ADMIN_URL = os.environ.get("BENCH_DATABASE_URL", "postgresql://root@127.0.0.1:5432/postgres")
REDIS_BASE = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379")
# Where the measured checkout keeps its tables: stripeline's own schema, or `public` for
# checkouts from before STRIPELINE_SCHEMA.
SCHEMAS = "stripeline, public"
SECRET = "whsec_bench_secret"
TOKEN = "bench-token"
CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "stripeline-bench"
SIMULATION_SOURCES = ("tests/simulation.py", "tests/stripe_objects.py", "tests/factories.py")
# Events per account when a stream is made of several (one account's generation slows down
# as it grows: some actions scan all its objects).
EVENTS_PER_ACCOUNT = 20_000


# --- the checkout under test -------------------------------------------------------------------


@dataclass(frozen=True)
class Checkout:
    root: Path

    @property
    def python(self) -> Path:
        return self.root / ".venv" / "bin" / "python"

    def command(self, *args: str) -> list[str]:
        # The installed command: the same in every checkout, whatever its packages are called.
        return [str(self.root / ".venv" / "bin" / "stripeline"), *args]

    def popen(self, args: list[str], env: dict[str, str], **kwargs: Any) -> subprocess.Popen:
        kwargs.setdefault("stdout", subprocess.DEVNULL)
        kwargs.setdefault("stderr", subprocess.DEVNULL)
        return subprocess.Popen(self.command(*args), env=env, cwd=self.root, stdin=subprocess.DEVNULL, **kwargs)

    def run(self, args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
        return subprocess.run(self.command(*args), env=env, cwd=self.root, stdin=subprocess.DEVNULL,
                              capture_output=True, text=True)

    def describe(self) -> str:
        head = subprocess.run(["git", "-C", str(self.root), "log", "-1", "--format=%h %s"], capture_output=True,
                              text=True).stdout.strip()
        return f"{self.root} ({head or 'not a git checkout'})"


def quiet_logs() -> None:
    """This process's own log lines (the in-order reference pass) at warning only."""
    import logging

    import structlog

    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))


def add_common_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--code", type=Path, default=ROOT,
                        help="checkout to measure: its .venv/bin/python runs stripeline (default: this repository)")
    parser.add_argument("--seed", type=int, default=1, help="seed of the simulated stream")
    parser.add_argument("--profile", type=Path, metavar="DIR",
                        help="record py-spy profiles (speedscope JSON) of the measured processes into DIR")


def checkout_of(args: argparse.Namespace) -> Checkout:
    checkout = Checkout(args.code.resolve())
    if not checkout.python.exists():
        raise SystemExit(f"--code {args.code}: no {checkout.python}; create its venv first "
                         "(python3 -m venv .venv && .venv/bin/pip install -e '.[test,embedded]')")
    return checkout


def product_env(database_url: str, redis_url: str, **extra: str) -> dict[str, str]:
    """The environment of a measured process: ours minus any DATABASE_URL/REDIS_URL, plus these.

    Without PYTHONDONTWRITEBYTECODE (set on this machine): an installed stripeline runs from
    compiled bytecode (pip compiles what it installs, the Docker image and Heroku's build too),
    while the checkout under test is installed editable, and each process it started compiled
    our 12,000 lines anew (about 50 ms of CPU; an import starts three)."""
    dropped = ("DATABASE_URL", "REDIS_URL", "PYTHONPATH", "PYTHONDONTWRITEBYTECODE")
    env = {k: v for k, v in os.environ.items() if k not in dropped}
    env.update(DATABASE_URL=database_url, REDIS_URL=redis_url, STRIPE_WEBHOOK_SECRET=SECRET,
               STRIPELINE_API_TOKEN=TOKEN, STRIPELINE_QUEUE=f"stripeline:bench:{os.getpid()}", LOG_LEVEL="warning",
               LOG_FORMAT="json")
    env.update(extra)
    return env


def migrate(checkout: Checkout, env: dict[str, str]) -> None:
    done = checkout.run(["migrate"], env)
    if done.returncode != 0:
        raise SystemExit(f"stripeline migrate failed ({done.returncode}): {(done.stdout + done.stderr)[-800:]}")


# --- the stream ----------------------------------------------------------------------------------


def _cache_key(*parts: Any) -> str:
    """A digest of the parameters and of all the code that makes a stream."""
    digest = hashlib.sha256(repr(parts).encode())
    for source in SIMULATION_SOURCES:
        digest.update((ROOT / source).read_bytes())
    for function in (_generate, simulated_events):
        digest.update(inspect.getsource(function).encode())
    return digest.hexdigest()[:16]


def _cached(name: str, key: str, make):
    path = CACHE / f"{name}-{key}.pickle"
    if path.exists():
        with path.open("rb") as cached:
            return pickle.load(cached)
    value = make()
    CACHE.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(f".{os.getpid()}.tmp")
    with partial.open("wb") as out:
        pickle.dump(value, out, protocol=pickle.HIGHEST_PROTOCOL)
    partial.replace(path)
    return value


def _generate(events: int, customers: int, per_second: int, seed: int, start: int) -> Account:
    """One account of about `events` events, about `per_second` of them per second of created time.
    How many events an action makes varies, so the clock's pace is found by trying; the
    simulation moves the clock itself too (an object never returns to a state within a second),
    which caps the pace near 65 events per second."""

    def account(new_second: float, size: int) -> tuple[Account, float]:
        made = Account(random.Random(seed), start, new_second=new_second, max_customers=customers, jumps=(1,))
        while len(made.events) < size:
            made.act()
        return made, len(made.events) / (made.events[-1]["created"] - made.events[0]["created"] + 1)

    new_second, best, best_miss = 1 / per_second, None, float("inf")
    for _ in range(5):
        made, rate = account(new_second, events)
        miss = abs(rate - per_second) / per_second
        if miss > best_miss * 0.95:  # no closer: the forced ticks of the simulation set the pace
            break
        best, best_miss = made, miss
        if miss < 0.1:
            break
        new_second = min(1.0, new_second * (rate / per_second) ** 1.5)
    return best


def simulated_account(events: int, customers: int, per_second: int, seed: int) -> Account:
    """A simulated Stripe account's stream of `events` events for up to `customers` customers,
    created over the last few hours (cached)."""
    start = int(time.time()) // 3600 * 3600 - 2 * events // per_second - 3600
    key = _cache_key("account", events, customers, per_second, seed, start // 86400)
    started = time.perf_counter()
    account = _cached("account", key, lambda: _generate(events, customers, per_second, seed, start))
    print(f"stream: {len(account.events):,} events, {len(account.customers):,} customers "
          f"(seed {seed}, {time.perf_counter() - started:.1f} s to generate or load)", flush=True)
    return account


def simulated_events(events: int, customers: int, seed: int, start: int = 1_700_000_000) -> list[dict[str, Any]]:
    """`events` events of several independent accounts (EVENTS_PER_ACCOUNT each, customers in
    proportion), in Stripe's order (cached)."""

    def make() -> list[dict[str, Any]]:
        merged: list[dict[str, Any]] = []
        share = max(1, customers * EVENTS_PER_ACCOUNT // events)
        for part, first in enumerate(range(0, events, EVENTS_PER_ACCOUNT)):
            size = min(EVENTS_PER_ACCOUNT, events - first)
            merged += _generate(size, share, 100, seed * 1000 + part, start).events
            print(f"  generated {len(merged):,} of {events:,} events", flush=True)
        merged.sort(key=lambda e: e["created"])
        return merged

    started = time.perf_counter()
    payloads = _cached("events", _cache_key("events", events, customers, seed, start), make)
    print(f"stream: {len(payloads):,} events of about {customers:,} customers "
          f"(seed {seed}, {time.perf_counter() - started:.1f} s to generate or load)", flush=True)
    return payloads


# The fields the test factories gave each object before they were real-sized (56e0d80):
# `--small` sends events cut down to them, the stream the README's first figures used.
SLIM_FIELDS = {
    "charge": ("amount amount_captured amount_refunded billing_details captured created currency customer description "
               "failure_code failure_message id invoice livemode metadata object paid payment_intent refunded status"),
    "coupon": ("amount_off currency duration duration_in_months id livemode max_redemptions metadata name object "
               "percent_off times_redeemed valid"),
    "customer": ("address balance created currency default_source delinquent description discount email id "
                 "invoice_prefix invoice_settings livemode metadata name object phone preferred_locales shipping "
                 "tax_exempt test_clock deleted"),
    "discount": ("checkout_session coupon customer end id invoice invoice_item object promotion_code start "
                 "subscription subscription_item source"),
    "invoice": ("account_country amount_due amount_paid amount_remaining attempt_count attempted auto_advance "
                "billing_reason charge collection_method created currency customer customer_email customer_name "
                "description discount due_date id lines livemode metadata next_payment_attempt number object paid "
                "paid_out_of_band parent payment_intent payments period_end period_start status status_transitions "
                "subscription subtotal total webhooks_delivered_at deleted"),
    "invoice_payment": ("amount_paid amount_requested created currency id invoice is_default livemode object payment "
                        "status status_transitions"),
    "line_item": "amount currency description id object",
    "list": "data has_more object total_count url",
    "plan": ("active amount amount_decimal billing_scheme created currency id interval interval_count livemode "
             "metadata nickname object product usage_type"),
    "price": ("active billing_scheme created currency id livemode lookup_key metadata nickname object product "
              "recurring tax_behavior type unit_amount unit_amount_decimal"),
    "product": "active created description id livemode metadata name object type updated",
    "subscription": ("billing_cycle_anchor cancel_at cancel_at_period_end canceled_at collection_method created "
                     "currency current_period_end current_period_start customer days_until_due default_payment_method "
                     "discount discounts ended_at id items latest_invoice livemode metadata object pause_collection "
                     "plan quantity start_date status trial_end trial_start"),
    "subscription_item": ("created current_period_end current_period_start discounts id metadata object plan price "
                          "quantity subscription tax_rates"),
}
_SLIM = {kind: frozenset(names.split()) for kind, names in SLIM_FIELDS.items()}


def _slim(value: Any, kind: str | None = None) -> Any:
    if isinstance(value, list):
        return [_slim(item) for item in value]
    if not isinstance(value, dict):
        return value
    kind = value.get("object", kind)
    keep = _SLIM.get(kind) if isinstance(kind, str) else None
    return {key: _slim(item) for key, item in value.items() if keep is None or key in keep}


def slim(payload: dict[str, Any]) -> dict[str, Any]:
    """The event with its objects cut down to the fields of the old, small factories."""
    data = payload["data"]
    kind = data["object"].get("object")
    out_data = {"object": _slim(data["object"])}
    if data.get("previous_attributes") is not None:
        out_data["previous_attributes"] = _slim(data["previous_attributes"], kind)
    return {**payload, "data": out_data, "request": {"id": None, "idempotency_key": None}}


def size_line(bodies: Iterable[bytes]) -> str:
    sizes = sorted(len(body) for body in bodies)
    at = lambda q: sizes[min(len(sizes) - 1, int(q * len(sizes)))]  # noqa: E731
    return (f"payloads: median {at(0.5) / 1000:.2f} KB compact (p10 {at(0.1) / 1000:.2f}, p90 {at(0.9) / 1000:.2f}) "
            f"over {len(sizes):,} events")


def bodies_of(payloads: list[dict[str, Any]], small: bool) -> list[bytes]:
    return [orjson.dumps(slim(p) if small else p) for p in payloads]


def write_jsonl(path: Path, bodies: list[bytes]) -> None:
    with path.open("wb") as out:
        for body in bodies:
            out.write(body + b"\n")


# --- servers -----------------------------------------------------------------------------------


def with_database(url: str, name: str) -> str:
    return urlunparse(urlparse(url)._replace(path=f"/{name}"))


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@contextlib.asynccontextmanager
async def fresh_database(
    keep: bool = False, suffix: str = "", template: str | None = None
) -> AsyncIterator[tuple[str, str]]:
    """(name, URL) of a new database, empty or a copy of `template`; dropped afterwards unless `keep`."""
    name = f"stripeline_bench_{os.getpid()}{suffix}"
    admin = await asyncpg.connect(ADMIN_URL)
    await admin.execute(f'CREATE DATABASE "{name}"' + (f' TEMPLATE "{template}"' if template else ""))
    try:
        yield name, with_database(ADMIN_URL, name)
    finally:
        if keep:
            print(f"kept database {name}")
        else:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


@contextlib.asynccontextmanager
async def stream_in_fresh_database(checkout: Checkout, bodies: list[bytes], keep: bool = False
                                   ) -> AsyncIterator[tuple[Path, str, str, dict[str, str]]]:
    """The bodies as a JSON Lines file, and a fresh database with a Redis db number, migrated by
    the checkout: (the file, the database's name and URL, the environment of a product process).
    The list is emptied once written (a 200,000-event stream is worth freeing)."""
    with tempfile.TemporaryDirectory() as scratch:
        stream = Path(scratch) / "events.jsonl"
        write_jsonl(stream, bodies)
        bodies.clear()
        async with fresh_database(keep=keep) as (name, database_url), claimed_redis_db() as (redis_url, _):
            env = product_env(database_url, redis_url)
            migrate(checkout, env)
            yield stream, name, database_url, env


@contextlib.asynccontextmanager
async def claimed_redis_db() -> AsyncIterator[tuple[str, int | None]]:
    """(URL, server pid) of a Redis db number (1-15) claimed as the test sessions claim theirs,
    flushed before and after."""
    from redis.asyncio import Redis

    claimer = Redis.from_url(f"{REDIS_BASE}/0")
    token = f"bench-{os.getpid()}-{uuid.uuid4().hex}"
    for number in range(15, 0, -1):
        if await claimer.set(f"stripeline:test-db:{number}", token, nx=True, ex=3600):
            break
    else:
        raise SystemExit("no free Redis db number (1-15)")
    url = f"{REDIS_BASE}/{number}"
    own = Redis.from_url(url)
    await own.flushdb()
    server = await own.info("server")
    try:
        yield url, server.get("process_id")
    finally:
        await own.flushdb()
        await own.aclose()
        await claimer.delete(f"stripeline:test-db:{number}")
        await claimer.aclose()


async def wait_for_http(port: int, process: subprocess.Popen, path: str = "/readyz", timeout: float = 60) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise SystemExit(f"the web process exited with code {process.returncode} before answering")
            with contextlib.suppress(httpx.HTTPError):
                if (await client.get(path)).status_code == 200:
                    return
            await asyncio.sleep(0.1)
    raise SystemExit(f"the web process did not answer {path} in {timeout:.0f} s")


async def observe(port: int, customers: list[str]) -> dict[str, Any]:
    """What a user sees of these customers through the web process's API (tests/observed.py)."""
    import httpx

    from tests.observed import observed

    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=120,
                                 headers={"authorization": f"Bearer {TOKEN}"}) as client:
        return await observed(client, customers)


def stop(processes: Iterable[subprocess.Popen]) -> None:
    processes = list(processes)
    for process in processes:
        if process.poll() is None:
            process.terminate()
    for process in processes:
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


# --- meters --------------------------------------------------------------------------------------


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU seconds of a process so far (Linux /proc), None once it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def machine_cpu_seconds() -> float:
    """CPU seconds the whole machine has spent busy (not idle, not waiting on I/O)."""
    fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    return (sum(int(f) for f in fields) - int(fields[3]) - int(fields[4])) / os.sysconf("SC_CLK_TCK")


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


@dataclass
class CpuMeter:
    """CPU used between `start()` and `stop()` by named processes and by the PostgreSQL
    backends connected to `database`. /proc is read every 50 ms and the backends are looked
    up every 0.1 s, so that a backend that exits with its command still counts (almost) whole."""

    database: str
    processes: dict[str, int | None]
    _first: dict[int, float] = field(default_factory=dict)
    _last: dict[int, float] = field(default_factory=dict)
    _backends: set[int] = field(default_factory=set)
    _owner: dict[int, str] = field(default_factory=dict)  # backend pid -> name of its client process
    _task: asyncio.Task | None = None
    # The child processes of these (name: pid), counted apart (a rebuild's lane processes): what
    # each used, under "NAME child N" in the order they appeared.
    parents: dict[str, int] = field(default_factory=dict)
    _children: dict[int, str] = field(default_factory=dict)

    async def start(self) -> None:
        self._conn = await asyncpg.connect(ADMIN_URL)
        await self._find_backends()
        self._read(first=True)
        self._machine = machine_cpu_seconds()
        self._task = asyncio.create_task(self._poll())

    async def stop(self) -> dict[str, float]:
        assert self._task is not None
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        self._read()
        await self._conn.close()
        used = {name: self._used(pid) for name, pid in self.processes.items() if pid is not None}
        used |= {name: self._used(pid) for pid, name in self._children.items()}
        used["postgres"] = sum(self._used(pid) for pid in self._backends)
        for name in self.processes:
            share = sum(self._used(pid) for pid in self._backends if self._owner.get(pid) == name)
            if share:
                used[f"postgres for {name}"] = share
        used["machine"] = machine_cpu_seconds() - self._machine
        return used

    def _used(self, pid: int) -> float:
        return self._last.get(pid, 0.0) - self._first.get(pid, 0.0)

    async def _find_backends(self) -> None:
        rows = await self._conn.fetch(
            "SELECT pid, client_port FROM pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid()",
            self.database,
        )
        fresh = {row["pid"]: row["client_port"] for row in rows if row["pid"] not in self._backends}
        self._backends |= fresh.keys()
        if fresh and self.processes:
            owners = _socket_owners({pid for pid in self.processes.values() if pid is not None})
            names = {pid: name for name, pid in self.processes.items()}
            for backend, port in fresh.items():
                if port is not None and port in owners:
                    self._owner[backend] = names[owners[port]]

    def _find_children(self) -> None:
        for name, parent in self.parents.items():
            with contextlib.suppress(OSError):
                for child in Path(f"/proc/{parent}/task/{parent}/children").read_text().split():
                    self._children.setdefault(int(child), f"{name} child {len(self._children) + 1}")

    def _read(self, first: bool = False) -> None:
        self._find_children()
        for pid in [p for p in self.processes.values() if p is not None] + sorted(self._backends) + list(self._children):
            used = cpu_seconds(pid)
            if used is None:
                continue
            if pid not in self._first:
                # A backend that connects later did all its work inside the window.
                self._first[pid] = used if first else 0.0
            self._last[pid] = used

    async def _poll(self) -> None:
        for tick in itertools.count(1):
            await asyncio.sleep(0.05)
            if tick % 2 == 0:
                await self._find_backends()
            self._read()


def _socket_owners(pids: set[int]) -> dict[int, int]:
    """Local TCP port -> pid, for the sockets these processes hold (to tell whose a PostgreSQL
    backend is: pg_stat_activity.client_port is the client's local port)."""
    inode_port: dict[str, int] = {}
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError):
            for line in Path(table).read_text().splitlines()[1:]:
                columns = line.split()
                inode_port[columns[9]] = int(columns[1].rsplit(":", 1)[1], 16)
    owners: dict[int, int] = {}
    for pid in pids:
        with contextlib.suppress(OSError):
            for fd in Path(f"/proc/{pid}/fd").iterdir():
                with contextlib.suppress(OSError):
                    target = os.readlink(fd)
                    if target.startswith("socket:["):
                        port = inode_port.get(target[8:-1])
                        if port is not None:
                            owners[port] = pid
    return owners


def cpu_report(used: dict[str, float], events: int, order: Iterable[str]) -> str:
    """CPU ms per event of each named part and their total, and what the rest of the machine
    used meanwhile (other work on a shared machine; this bench's own client is part of it)."""
    names = [name for name in order if name in used]
    total = sum(used[name] for name in names)
    parts = ", ".join(f"{name} {used[name] / events * 1000:.3f}" for name in names)
    line = f"CPU ms per event: {parts}; total {total / events * 1000:.3f} ({total:.1f} CPU s)"
    if "machine" in used:
        line += f"; the rest of the machine used {used['machine'] - total:.1f} CPU s meanwhile"
    return line


@contextlib.asynccontextmanager
async def profiled(directory: Path | None, targets: dict[str, int], database: str | None = None):
    """While the block runs: py-spy recordings of each process in `targets` (speedscope JSON,
    plus NAME.top.txt, the functions by share of samples) and, given `database`, a sampling of
    what its PostgreSQL backends are running (postgres-activity.txt), all into `directory`."""
    if directory is None:
        yield
        return
    spy = Path(sys.executable).with_name("py-spy")
    if not spy.exists():
        raise SystemExit(f"--profile needs py-spy: {Path(sys.executable).parent}/pip install py-spy")
    directory.mkdir(parents=True, exist_ok=True)
    recorders = {
        name: subprocess.Popen([str(spy), "record", "--pid", str(pid), "--rate", "200", "--format", "speedscope",
                                "--output", str(directory / f"{name}.speedscope.json"), "--nonblocking",
                                "--subprocesses"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        for name, pid in targets.items()
    }
    sampler = asyncio.create_task(sample_postgres(database)) if database else None
    try:
        yield
    finally:
        for recorder in recorders.values():
            recorder.send_signal(signal.SIGINT)
        for name, recorder in recorders.items():
            try:
                recorder.wait(timeout=60)
            except subprocess.TimeoutExpired:
                recorder.kill()
            with contextlib.suppress(OSError, ValueError, KeyError):
                path = directory / f"{name}.speedscope.json"
                path.with_suffix("").with_suffix(".top.txt").write_text(speedscope_summary(path))
        if sampler is not None:
            sampler.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                (directory / "postgres-activity.txt").write_text(await sampler)
        print(f"profiles in {directory}: {', '.join(sorted(p.name for p in directory.iterdir()))}")


def speedscope_summary(path: Path, top: int = 40) -> str:
    """The functions of a py-spy speedscope profile by share of samples: self, and with callees."""
    document = orjson.loads(path.read_bytes())
    frames = document["shared"]["frames"]
    own: dict[int, float] = {}
    total: dict[int, float] = {}
    weight_sum = 0.0
    for profile in document["profiles"]:
        for stack, weight in zip(profile["samples"], profile["weights"]):
            weight_sum += weight
            if stack:
                own[stack[-1]] = own.get(stack[-1], 0.0) + weight
            for frame in set(stack):
                total[frame] = total.get(frame, 0.0) + weight

    def name(index: int) -> str:
        frame = frames[index]
        return f"{frame['name']} ({frame.get('file', '?')}:{frame.get('line', '?')})"

    def table(counts: dict[int, float]) -> list[str]:
        ranked = sorted(counts.items(), key=lambda item: -item[1])[:top]
        return [f"{count / weight_sum:6.1%}  {name(index)}" for index, count in ranked]

    return "\n".join([f"{path.name}: {weight_sum:,.1f} s of samples (py-spy samples a thread only while it runs)",
                      "", "self:", *table(own), "", "with callees:", *table(total), ""])


async def sample_postgres(database: str, interval: float = 0.02) -> str:
    """Until cancelled: what the backends of `database` are running, every `interval` s; then
    the statements and wait events by share of the samples in which a backend was active."""
    conn = await asyncpg.connect(ADMIN_URL)
    statements: dict[str, int] = {}
    waits: dict[str, int] = {}
    samples = active = 0
    try:
        while True:
            rows = await conn.fetch(
                "SELECT query, wait_event_type, wait_event FROM pg_stat_activity "
                "WHERE datname = $1 AND state = 'active' AND pid <> pg_backend_pid()", database)
            samples += 1
            for row in rows:
                active += 1
                text = " ".join((row["query"] or "").split())[:160]
                statements[text] = statements.get(text, 0) + 1
                wait = f"{row['wait_event_type']}:{row['wait_event']}" if row["wait_event_type"] else "on CPU"
                waits[wait] = waits.get(wait, 0) + 1
            await asyncio.sleep(interval)
    except asyncio.CancelledError:
        pass
    finally:
        await conn.close()
    lines = [f"{samples:,} samples every {interval * 1000:.0f} ms; {active:,} active backend-samples "
             f"(mean {active / max(samples, 1):.2f} backends busy)", "", "statements:"]
    lines += [f"{n / max(active, 1):6.1%}  {text}" for text, n in sorted(statements.items(), key=lambda i: -i[1])[:30]]
    lines += ["", "waiting on:"]
    lines += [f"{n / max(active, 1):6.1%}  {wait}" for wait, n in sorted(waits.items(), key=lambda i: -i[1])[:15]]
    return "\n".join(lines) + "\n"


def child_cpu_seconds(process: subprocess.Popen) -> float:
    """Wait for a child and return the CPU seconds it (and what it waited for) used."""
    _, status, usage = os.wait4(process.pid, 0)
    process.returncode = os.waitstatus_to_exitcode(status)
    return usage.ru_utime + usage.ru_stime
