"""What a long run over stored events (replay, import, backfill) counts, and how it reports.

The commands show progress on a terminal or as plain lines (stripeline.commands.progress);
processing only needs a `Reporter`, so it never imports the command line.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Coroutine, Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol

import asyncpg


class RunError(Exception):
    """A long run cannot go on; the message says why and what to do."""

    exit_code = 1


def run_error_of(problem: BaseException, schema: str) -> RunError | None:
    """The RunError a command reports for this exception (None: not one the user can act on)."""
    if isinstance(problem, RunError):
        return problem
    if isinstance(problem, asyncpg.UndefinedTableError):
        return RunError(
            f"the schema {schema!r} is missing stripeline's tables or is not up to date:"
            " run `stripeline migrate` first (or check STRIPELINE_SCHEMA)"
        )
    if isinstance(problem, (asyncpg.PostgresError, asyncpg.InterfaceError)):
        return RunError(f"database error, stopped: {type(problem).__name__}: {problem}")
    return None


async def side_by_side(lanes: Iterable[Coroutine[Any, Any, None]]) -> None:
    """Run a run's lanes as tasks of this process. The first failure stops them all (batches in
    flight roll back) and is raised; so is a cancellation of the caller."""
    tasks = [asyncio.create_task(lane) for lane in lanes]
    if not tasks:
        return
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    for task in tasks:
        if not task.cancelled() and task.exception() is not None:
            raise task.exception()


@dataclass
class Tally:
    """What a long run did to events: its summary line and its exit code."""

    applied: int = 0
    skipped: int = 0
    failed: int = 0
    failures: list[str] = field(default_factory=list)
    interrupted: bool = False
    started: float = field(default_factory=time.monotonic)

    def add(self, other: Tally) -> None:
        self.applied += other.applied
        self.skipped += other.skipped
        self.failed += other.failed
        self.failures += other.failures

    def seconds(self) -> float:
        return time.monotonic() - self.started

    def exit_code(self) -> int:
        if self.interrupted:
            return 130
        return 1 if self.failed else 0


class Reporter(Protocol):
    """Where a long run says how far it is (stripeline.commands.progress.Progress)."""

    def phase(self, name: str, total: int | None = None, done: int = 0) -> None: ...

    def advance(self, n: int = 1) -> None: ...

    def note(self, message: str) -> None: ...

    def failure(self, message: str) -> None: ...
