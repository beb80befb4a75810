"""`stripeline import FILE`: store and apply a real-sized JSON Lines stream; events per second.

Writes the real-sized stream of simulated accounts (tests/simulation.py, 20,000 events per
account, as bench/replay.py stores them) as JSON Lines, migrates a fresh database with the checkout under test (--code DIR), runs its
`stripeline import FILE` and prints the payload sizes, events/s, the command's own summary
line, and CPU per event of the import process and of the PostgreSQL backends it used.

    .venv/bin/python bench/import.py                       # 20,000 events, 2,000 customers
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

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import (  # noqa: E402
    CpuMeter,
    add_common_arguments,
    bodies_of,
    checkout_of,
    child_cpu_seconds,
    claimed_redis_db,
    cpu_report,
    fresh_database,
    migrate,
    product_env,
    profiled,
    simulated_events,
    size_line,
    write_jsonl,
)


async def timed_command(checkout, args: list[str], env: dict[str, str], database: str,
                        profile: Path | None) -> tuple[float, dict[str, float], int, str]:
    """Run a stripeline command to its end: (seconds, CPU by process, exit code, last output line)."""
    with tempfile.TemporaryFile("w+") as output:
        meter = CpuMeter(database, {})
        started = time.perf_counter()
        process = checkout.popen(args, env, stdout=output, stderr=subprocess.STDOUT)
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
    with tempfile.TemporaryDirectory() as scratch:
        stream = Path(scratch) / "events.jsonl"
        write_jsonl(stream, bodies)
        async with fresh_database() as (name, database_url), claimed_redis_db() as (redis_url, _):
            env = product_env(database_url, redis_url)
            migrate(checkout, env)
            seconds, used, code, summary = await timed_command(checkout, ["import", str(stream)], env, name,
                                                               args.profile)
    events = len(bodies)
    print(f"import: {events:,} events in {seconds:.2f} s = {events / seconds:,.0f} events/s (exit code {code})")
    print(f"its summary: {summary[:300]}")
    print(cpu_report(used, events, ("import", "postgres")))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=20000)
    parser.add_argument("--customers", type=int, default=2000)
    parser.add_argument("--small", action="store_true", help="the events cut to the old factories' fields")
    add_common_arguments(parser)
    asyncio.run(main(parser.parse_args()))
