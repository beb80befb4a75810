"""`stripeline import FILE`: store and apply a real-sized JSON Lines stream; events per second.

Writes the real-sized stream of simulated accounts (tests/simulation.py, 20,000 events per
account, as bench/replay.py stores them) as JSON Lines, migrates a fresh database with the checkout under test (--code DIR), runs its
`stripeline import FILE` and prints the payload sizes, events/s, the command's own summary
line, and CPU per event of the import process and of the PostgreSQL backends it used.

With --existing N the log already holds N processed events of other simulated accounts over
the same hours (stored with COPY, not measured), as when a history is imported into a live
install: what an event costs then depends on the log's size (a deletion's search of the stored
events that mention the customer reads the log since the customer was created).

    .venv/bin/python bench/import.py                       # 20,000 events, 2,000 customers
    .venv/bin/python bench/import.py --existing 200000     # the same, into a log of 200,000 events
    .venv/bin/python bench/import.py --code /work/wt/baseline --events 200000 --customers 20000

Uses this machine's PostgreSQL and Redis (BENCH_DATABASE_URL / BENCH_REDIS_URL to change);
everything it creates is removed at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import asyncpg

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import (  # noqa: E402
    SCHEMAS,
    CpuMeter,
    add_common_arguments,
    bodies_of,
    checkout_of,
    child_cpu_seconds,
    cpu_report,
    profiled,
    simulated_events,
    size_line,
    stream_in_fresh_database,
)
from stripeline.model.events import parse_event  # noqa: E402

# The event log's columns as every checkout since the first migration has them.
FILL_COLUMNS = ("id", "type", "account", "livemode", "api_version", "created", "object_type", "object_id",
                "customer_id", "payload", "status", "processed_at")


async def fill_log(database_url: str, events: int, customers: int, seed: int) -> None:
    """Store `events` processed events of other accounts (another seed) over the same hours."""
    bodies = bodies_of(simulated_events(events, customers, seed), small=False)
    started = time.perf_counter()
    conn = await asyncpg.connect(database_url, server_settings={"search_path": SCHEMAS})
    try:
        for start in range(0, len(bodies), 10_000):
            rows = []
            for body in bodies[start : start + 10_000]:
                e = parse_event(body)
                rows.append((e.id, e.type, e.account, e.livemode, e.api_version, e.created, e.object_type, e.object_id,
                             e.customer_id, body.decode(), "processed", e.created))
            await conn.copy_records_to_table("stripe_events", records=rows, columns=FILL_COLUMNS)
        await conn.execute("VACUUM ANALYZE")
        stored = await conn.fetchval("SELECT count(*) FROM stripe_events")
    finally:
        await conn.close()
    print(f"existing log: {stored:,} processed events ({size_line(bodies).removeprefix('payloads: ')}), "
          f"stored with COPY in {time.perf_counter() - started:.1f} s", flush=True)


async def timed_command(checkout, args: list[str], env: dict[str, str], database: str,
                        profile: Path | None) -> tuple[float, dict[str, float], int, str]:
    """Run a stripeline command to its end: (seconds, CPU by process, exit code, last output line)."""
    with tempfile.TemporaryFile("w+") as output:
        meter = CpuMeter(database, {})
        started = time.perf_counter()
        process = checkout.popen(args, env, stdout=output, stderr=subprocess.STDOUT)
        meter.parents[args[0]] = process.pid  # its processes (a rebuild's lanes), each apart
        await meter.start()
        async with profiled(profile, {args[0]: process.pid}, database):
            # py-spy must attach before the process ends; the wait itself runs off the loop.
            cpu = await asyncio.to_thread(child_cpu_seconds, process)
        seconds = time.perf_counter() - started
        used = {args[0]: cpu, **await meter.stop()}
        output.seek(0)
        lines = [line.strip() for line in output.read().splitlines() if line.strip()]
    return seconds, used, process.returncode, lines[-1] if lines else ""


async def main(args: argparse.Namespace) -> None:
    checkout = checkout_of(args)
    bodies = bodies_of(simulated_events(args.events, args.customers, args.seed), args.small)
    print(f"checkout under test: {checkout.describe()}")
    print(size_line(bodies))
    events = len(bodies)
    async with stream_in_fresh_database(checkout, bodies) as (stream, name, database_url, env):
        if args.existing:
            await fill_log(database_url, args.existing, max(1, args.existing // 10), args.seed + 1)
        seconds, used, code, summary = await timed_command(checkout, ["import", str(stream)], env, name, args.profile)
    print(f"import: {events:,} events in {seconds:.2f} s = {events / seconds:,.0f} events/s (exit code {code})")
    print(f"its summary: {summary[:300]}")
    print(cpu_report(used, events, ("import", "postgres")))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=20000)
    parser.add_argument("--customers", type=int, default=2000)
    parser.add_argument("--small", action="store_true", help="the events cut to the old factories' fields")
    parser.add_argument("--existing", type=int, default=0, metavar="N",
                        help="import into a log that already holds N processed events of other accounts")
    add_common_arguments(parser)
    asyncio.run(main(parser.parse_args()))
