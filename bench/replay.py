"""`stripeline replay --rebuild` over N stored real-sized events; events per second.

Stores N events of simulated accounts (tests/simulation.py, 20,000 events per account, real
sizes) in a fresh database of the checkout under test (--code DIR) with its own `stripeline
import` (as an old history would be: every event processed), then times its `stripeline replay
--rebuild` and prints the payload sizes, events/s, the command's summary line, CPU per event
of the replay process and of the PostgreSQL backends it used, and the segment counts at the end.

    .venv/bin/python bench/replay.py                       # 200,000 events, 20,000 customers
    .venv/bin/python bench/replay.py --code /work/wt/baseline --small --profile /tmp/profiles

The first run generates the stream (a few minutes for 200,000 events) and caches it under
~/.cache/stripeline-bench; the import that fills the store takes minutes too (it is printed,
not measured). Uses this machine's PostgreSQL and Redis (BENCH_DATABASE_URL / BENCH_REDIS_URL);
everything it creates is removed at the end unless --keep.

To compare checkouts quickly, keep one filled store and time only rebuilds of copies of it:

    .venv/bin/python bench/replay.py --events 50000 --customers 5000 --keep   # prints its name
    .venv/bin/python bench/replay.py --store stripeline_bench_1234 --code /work/main
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import asyncpg  # noqa: E402

from bench.common import (  # noqa: E402
    SCHEMAS,
    add_common_arguments,
    bodies_of,
    checkout_of,
    claimed_redis_db,
    cpu_report,
    fresh_database,
    migrate,
    product_env,
    simulated_events,
    size_line,
    stream_in_fresh_database,
)

timed_command = importlib.import_module("bench.import").timed_command

SEGMENTS = "SELECT segment, count(*) AS n FROM segment_memberships GROUP BY 1 ORDER BY 1"
SIZES = """
SELECT percentile_disc(0.1) WITHIN GROUP (ORDER BY octet_length(payload::text)) AS p10,
       percentile_disc(0.5) WITHIN GROUP (ORDER BY octet_length(payload::text)) AS p50,
       percentile_disc(0.9) WITHIN GROUP (ORDER BY octet_length(payload::text)) AS p90
FROM stripe_events
"""


def report_rebuild(events: int, seconds: float, batch_size: int, code: int, summary: str, used: dict) -> None:
    print(f"replay --rebuild: {events:,} events in {seconds:.2f} s = {events / seconds:,.0f} events/s "
          f"(batch {batch_size}, exit code {code})")
    print(f"its summary: {summary[:300]}")
    print(cpu_report(used, events, ("replay", "postgres")))
    if children := [name for name in used if name.startswith("replay child")]:
        print("of the replay's CPU, its lane processes: "
              + ", ".join(f"{used[name] / events * 1000:.3f}" for name in children) + " ms per event")


async def rebuild_a_copy(args: argparse.Namespace) -> None:
    """`replay --rebuild` of a copy of a kept store (--store), migrated by the checkout under test."""
    checkout = checkout_of(args)
    print(f"checkout under test: {checkout.describe()}")
    copy = fresh_database(suffix="_copy", template=args.store)
    async with copy as (name, database_url), claimed_redis_db() as (redis_url, _):
        env = product_env(database_url, redis_url)
        migrate(checkout, env)
        conn = await asyncpg.connect(database_url, server_settings={"search_path": SCHEMAS})
        events = await conn.fetchval("SELECT count(*) FROM stripe_events")
        sizes = await conn.fetchrow(SIZES)
        await conn.close()
        print(f"store {args.store}: {events:,} events; payloads: median {sizes['p50'] / 1000:.2f} KB compact "
              f"(p10 {sizes['p10'] / 1000:.2f}, p90 {sizes['p90'] / 1000:.2f}) as stored")
        command = ["replay", "--rebuild", "--batch-size", str(args.batch_size)]
        seconds, used, code, summary = await timed_command(checkout, command, env, name, args.profile)
    report_rebuild(events, seconds, args.batch_size, code, summary, used)


async def main(args: argparse.Namespace) -> None:
    if args.store:
        await rebuild_a_copy(args)
        return
    checkout = checkout_of(args)
    payloads = simulated_events(args.events, args.customers, args.seed)
    bodies = bodies_of(payloads, args.small)
    del payloads
    print(f"checkout under test: {checkout.describe()}")
    print(f"{size_line(bodies)}{' (--small: the old factories fields)' if args.small else ''}")
    events = len(bodies)
    async with stream_in_fresh_database(checkout, bodies, keep=args.keep) as (stream, name, database_url, env):
        seconds, _, code, summary = await timed_command(checkout, ["import", str(stream)], env, name, None)
        print(f"stored with `stripeline import` in {seconds:.1f} s ({events / seconds:,.0f} events/s, exit {code})")
        conn = await asyncpg.connect(database_url, server_settings={"search_path": SCHEMAS})
        await conn.execute("VACUUM ANALYZE")
        await conn.close()
        command = ["replay", "--rebuild", "--batch-size", str(args.batch_size)]
        seconds, used, code, summary = await timed_command(checkout, command, env, name, args.profile)
        conn = await asyncpg.connect(database_url, server_settings={"search_path": SCHEMAS})
        try:
            rows = await conn.fetch(SEGMENTS)
            segments = ", ".join(f"{r['segment']}={r['n']:,}" for r in rows) or "none"
        except asyncpg.PostgresError as problem:  # another checkout's schema
            segments = f"n/a ({type(problem).__name__})"
        finally:
            await conn.close()
    report_rebuild(events, seconds, args.batch_size, code, summary, used)
    print(f"segments: {segments}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--customers", type=int, default=20_000)
    parser.add_argument("--batch-size", type=int, default=1000)
    parser.add_argument("--small", action="store_true", help="the events cut to the old factories' fields")
    parser.add_argument("--keep", action="store_true", help="keep the database afterwards")
    parser.add_argument("--store", metavar="DATABASE",
                        help="time only the rebuild of a copy of this kept database (see --keep)")
    add_common_arguments(parser)
    asyncio.run(main(parser.parse_args()))
