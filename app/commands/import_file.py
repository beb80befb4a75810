"""`stripeline import FILE`: a file of Stripe events stored as if received, then processed in order.

Its apply lanes run as processes of this same command (`import --lane N -`, a hidden option:
the lane's events come on standard input, from the parent): each builds its pool and registry
and runs `import_lane`.
"""

from __future__ import annotations

import sys
from typing import Any

from stripeline import event_loop
from stripeline.commands.progress import refuse, run_command, run_lane
from stripeline.handlers import registry
from stripeline.processing.event_files import read_events
from stripeline.processing.importing import ImportCounts, import_events, import_lane
from stripeline.processing.lanes import has_parent
from stripeline.processing.runs import Tally
from stripeline.settings import Settings


def lane_argv(lane: int, lanes: int) -> list[str]:
    """How this command starts the process of an apply lane: the same interpreter and command."""
    return [sys.executable, "-m", "stripeline", "import", "--lane", str(lane), "-"]


def lane_command(settings: Settings) -> int:
    """One apply lane of an import, in a process that `stripeline import` started."""
    if not has_parent():
        return refuse("import", "--lane is internal: `stripeline import FILE` starts its lanes itself")

    async def work(pool, stop) -> int:
        return await import_lane(pool, settings, stop=stop, registry=registry())

    return event_loop.run(run_lane("import", settings, 1, work))


def import_command(args: Any, settings: Settings) -> int:
    settings.require("DATABASE_URL")
    if args.lane is not None:
        return lane_command(settings)
    counts = ImportCounts()
    try:
        stream = sys.stdin.buffer if args.file == "-" else open(args.file, "rb")  # noqa: SIM115 - closed below
    except OSError as problem:
        return refuse("import", f"cannot read {args.file}: {problem.strerror}")

    async def work(pool, tally, progress, stop) -> None:
        await import_events(pool, settings, read_events(stream), tally, counts, progress=progress, stop=stop,
                            registry=registry(), lane_process=lane_argv)

    def summary(tally: Tally) -> dict[str, int]:
        return {
            "stored": counts.stored,
            "duplicates": counts.duplicates,
            "malformed": counts.malformed,
            "applied": tally.applied,
            "skipped": tally.skipped,
            "failed": tally.failed,
        }

    try:
        code = event_loop.run(run_command("import", settings, work, summary))
    finally:
        if stream is not sys.stdin.buffer:
            stream.close()
    # A skipped line is data the user meant to load: the exit code says so too.
    return code or (1 if counts.malformed else 0)
