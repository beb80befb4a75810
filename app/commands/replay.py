"""`stripeline replay`: its options read into a Selection, and the run with progress and a summary.

A rebuild's lanes run as processes of this same command (`replay --lane N --connections C`,
hidden options): each builds its pool and registry and runs its lane (`rebuild_lane`).
"""

from __future__ import annotations

import sys
from datetime import datetime, timezone
from typing import Any

from stripeline import event_loop
from stripeline.commands.progress import refuse, run_command, run_lane
from stripeline.handlers import registry
from stripeline.processing.lanes import has_parent
from stripeline.processing.replay import MAX_BATCH_SIZE, ReplayRefused, Selection, rebuild_lane, replay
from stripeline.processing.runs import Tally
from stripeline.settings import Settings


def parse_time(option: str, text: str) -> datetime:
    """An ISO 8601 time or date; one without a zone is UTC."""
    try:
        value = datetime.fromisoformat(text.strip())
    except ValueError:
        raise ReplayRefused(
            f"{option} must be an ISO 8601 time such as 2024-05-01 or 2024-05-01T12:00:00Z, got {text!r}"
        ) from None
    return value if value.tzinfo else value.replace(tzinfo=timezone.utc)


def selection_from_args(args: Any) -> Selection:
    selection = Selection(
        since=parse_time("--since", args.since) if args.since else None,
        until=parse_time("--until", args.until) if args.until else None,
        type_pattern=args.type_pattern,
        customer=args.customer,
    )
    selection.type_regex()
    if selection.since and selection.until and selection.since >= selection.until:
        raise ReplayRefused("--since must be earlier than --until")
    if args.rebuild and selection.filtered:
        raise ReplayRefused("--rebuild replays every stored event and takes no filters")
    if not 1 <= args.batch_size <= MAX_BATCH_SIZE:
        raise ReplayRefused(f"--batch-size must be between 1 and {MAX_BATCH_SIZE}")
    return selection


def lane_argv(batch_size: int):
    """How this command starts the process of a rebuild's lane: the same interpreter and command."""

    def argv(lane: int, lanes: int, connections: int) -> list[str]:
        return [sys.executable, "-m", "stripeline", "replay", "--lane", str(lane), "--connections", str(connections),
                "--batch-size", str(batch_size)]

    return argv


def lane_command(args: Any, settings: Settings) -> int:
    """One lane of the pending rebuild, in a process that `replay --rebuild` started."""
    if not has_parent():
        return refuse("replay", "--lane is internal: `stripeline replay --rebuild` starts the lanes of a rebuild itself")

    async def work(pool, stop) -> int:
        return await rebuild_lane(pool, settings, args.lane, batch_size=args.batch_size, stop=stop,
                                  registry=registry())

    return event_loop.run(run_lane("replay", settings, args.connections, work))


def replay_command(args: Any, settings: Settings) -> int:
    settings.require("DATABASE_URL")
    if args.lane is not None:
        return lane_command(args, settings)
    try:
        selection = selection_from_args(args)
    except ReplayRefused as problem:
        return refuse("replay", str(problem))

    async def work(pool, tally, progress, stop) -> None:
        await replay(
            pool,
            settings,
            selection,
            rebuild=args.rebuild,
            tally=tally,
            batch_size=args.batch_size,
            progress=progress,
            stop=stop,
            registry=registry(),
            lane_process=lane_argv(args.batch_size),
        )

    def summary(tally: Tally) -> dict[str, int]:
        return {"applied": tally.applied, "skipped": tally.skipped, "failed": tally.failed}

    return event_loop.run(run_command("replay", settings, work, summary))
