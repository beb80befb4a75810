"""`stripeline import FILE`: a file of Stripe events stored as if received, then processed in order.

Its apply lanes run as processes of this same command (`import --lane N -`, a hidden option:
the lane's events come on standard input, from the parent): each builds its pool and registry
and runs `import_lane`. A file large enough to want lanes has them forked before the command's
event loop starts (`processing.lanes.fork_lanes`), running the same `lane_command`: they are
ready when its first chunk is, at a few milliseconds of CPU each instead of 0.2-0.3 s.
"""

from __future__ import annotations

import os
import stat
import sys
from collections.abc import Callable
from typing import IO, Any

from stripeline import event_loop
from stripeline.commands.progress import refuse, run_command, run_lane
from stripeline.handlers import registry
from stripeline.processing.event_files import read_events
from stripeline.processing.importing import ImportCounts, LaneStarts, import_events, import_lane, lane_count
from stripeline.processing.lanes import (
    ForkedLane,
    abandon_forked,
    can_fork_lanes,
    end_forked,
    fork_lanes,
    has_parent,
    parent_speaks,
)
from stripeline.processing.runs import Tally
from stripeline.settings import Settings

# A file at least this large (about 300 real-sized events) has its lanes forked as the command
# starts, and applies its events in them; a file that turns out not in order ends them unused, a
# few milliseconds of CPU. Standard input starts them as commands once it is longer than a chunk.
FORK_LANES_BYTES = 1 << 20
# The command line's entry point: its arguments, its exit code.
Command = Callable[[list[str]], int]


def lane_argv(lane: int, lanes: int) -> list[str]:
    """How this command starts the process of an apply lane: the same interpreter and command."""
    return [sys.executable, "-m", "stripeline", "import", "--lane", str(lane), "-"]


def _forked_lanes(stream: IO[bytes], settings: Settings, command: Command) -> list[ForkedLane]:
    """The lanes of a regular file of FORK_LANES_BYTES or more, forked now (none for standard
    input: its size is unknown, and its lanes start as commands when its second chunk comes).
    Each runs `command` (cli.main) as `import --lane N -`: as if started anew, its errors told the
    same way."""
    if stream is sys.stdin.buffer or not can_fork_lanes():
        return []
    status = os.fstat(stream.fileno())
    count = lane_count(settings)
    if not stat.S_ISREG(status.st_mode) or status.st_size < FORK_LANES_BYTES or not count:
        return []
    return fork_lanes(count, lambda lane: command(["import", "--lane", str(lane), "-"]), name="import-lane",
                      close=[stream.fileno()])


def lane_command(settings: Settings) -> int:
    """One apply lane of an import, in a process that `stripeline import` started."""
    if not has_parent():
        return refuse("import", "--lane is internal: `stripeline import FILE` starts its lanes itself")

    async def work(pool, stop) -> int:
        return await import_lane(pool, settings, stop=stop, registry=registry())

    async def lane() -> int:
        # Connect once the parent sends its first events (it has connected by then).
        return await run_lane("import", settings, 1, work) if await parent_speaks() else 1

    return event_loop.run(lane())


def import_command(args: Any, settings: Settings, command: Command | None = None) -> int:
    """`stripeline import`; `command`: the command line's entry point (what forked lanes run)."""
    settings.require("DATABASE_URL")
    if args.lane is not None:
        return lane_command(settings)
    counts = ImportCounts()
    try:
        stream = sys.stdin.buffer if args.file == "-" else open(args.file, "rb")  # noqa: SIM115 - closed below
    except OSError as problem:
        return refuse("import", f"cannot read {args.file}: {problem.strerror}")

    forked = _forked_lanes(stream, settings, command) if command is not None else []

    async def work(pool, tally, progress, stop) -> None:
        try:
            await import_events(pool, settings, read_events(stream, routed=True), tally, counts, progress=progress,
                                stop=stop, registry=registry(), lane_process=LaneStarts(lane_argv, forked))
        except BaseException:
            abandon_forked(forked)
            raise
        await end_forked(forked)

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
