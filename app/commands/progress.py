"""How long commands (replay, import, backfill) run and talk to the person running them.

A progress bar on a terminal; elsewhere (a platform's log drain, CI, a file) one plain line per
interval and one when a phase ends, never the same numbers twice; and one summary line at the
end. The exit code says whether events failed.
Ctrl-C asks for a clean stop: the current batch finishes and commits, the rest stays where a
rerun picks it up; a second Ctrl-C aborts at once, rolling back the open batch.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import signal
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import replace
from typing import TextIO

import asyncpg

from stripeline.garbage import quiet_garbage_collector
from stripeline.logging import configure_logging
from stripeline.processing.runs import RunError, Tally, run_error_of
from stripeline.settings import Settings
from stripeline.store.db import open_pool

# Plain (non-terminal) output: one line at most this often.
PLAIN_EVERY_SECONDS = 5.0
# Terminal: redraw at most this often.
REDRAW_EVERY_SECONDS = 0.1
# Failed events named one by one; beyond this they are only counted.
FAILURES_SHOWN = 10


def _count(n: int) -> str:
    return f"{n:,}"


def _clock(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


class Progress:
    """Counts work done in named phases and shows it; `total=None` when the amount is unknown."""

    def __init__(self, command: str, stream: TextIO | None = None):
        self.command = command
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty()
        self.phase_name = ""
        self.total: int | None = None
        self.done = 0
        self._phase_started = time.monotonic()
        self._shown_at = 0.0
        self._shown_done: int | None = None
        self._drawn = False
        self._failures_shown = 0
        self._done_before = 0

    def phase(self, name: str, total: int | None = None, done: int = 0) -> None:
        self.finish_phase()
        self.phase_name, self.total, self.done = name, total, done
        self._done_before = done  # a resumed phase: its rate counts this run's work only
        self._phase_started = time.monotonic()
        # A terminal draws the bar at once; a log gets its first line after one interval, so a
        # phase shorter than that is one line: its end.
        self._shown_at = 0.0 if self.tty else self._phase_started
        self._shown_done = None

    def advance(self, n: int = 1) -> None:
        self.done += n
        now = time.monotonic()
        every = REDRAW_EVERY_SECONDS if self.tty else PLAIN_EVERY_SECONDS
        if now - self._shown_at >= every:
            self._shown_at = now
            self._show()

    def note(self, message: str) -> None:
        """A line of its own (a warning, a resumed run), kept clear of the bar."""
        self._clear()
        print(f"{self.command}: {message}", file=self.stream, flush=True)

    def failure(self, message: str) -> None:
        """Name a failed event, up to FAILURES_SHOWN of them; the summary counts them all."""
        self._failures_shown += 1
        if self._failures_shown <= FAILURES_SHOWN:
            self.note(f"failed: {message}")
        elif self._failures_shown == FAILURES_SHOWN + 1:
            self.note("more events failed; the summary counts them all")

    def finish_phase(self) -> None:
        if self.phase_name and (self.done or self.total) and (self.tty or self.done != self._shown_done):
            self._show(final=True)
        self.phase_name = ""

    def _rate(self) -> float:
        elapsed = time.monotonic() - self._phase_started
        return (self.done - self._done_before) / elapsed if elapsed > 0 else 0.0

    def _text(self) -> str:
        rate = self._rate()
        if self.total:
            percent = min(100.0, 100.0 * self.done / self.total)
            eta = (self.total - self.done) / rate if rate > 0 else 0.0
            counted = f"{_count(self.done)}/{_count(self.total)} {percent:.0f}%"
            return f"{counted} {_count(round(rate))}/s eta {_clock(max(eta, 0))}"
        return f"{_count(self.done)} {_count(round(rate))}/s"

    def _label(self, separator: str) -> str:
        # `replay: 502/502`, not `replay: replay 502/502`, when the phase is the whole command.
        if self.phase_name in ("", self.command):
            return f"{self.command}{separator}"
        return f"{self.command}{separator}{self.phase_name} "

    def _show(self, final: bool = False) -> None:
        if not self.tty:
            if self.done != self._shown_done:
                self._shown_done = self.done
                print(f"{self._label(': ')}{self._text()}", file=self.stream, flush=True)
            return
        line = f"{self._label(' ')}{self._bar()}{self._text()}"
        width = shutil.get_terminal_size((80, 20)).columns
        self.stream.write("\r" + line[: width - 1].ljust(width - 1))
        if final:
            self.stream.write("\n")
            self._drawn = False
        else:
            self._drawn = True
        self.stream.flush()

    def _bar(self) -> str:
        if not self.total:
            return ""
        cells = 20
        filled = min(cells, cells * self.done // self.total)
        return "[" + "#" * filled + "." * (cells - filled) + "] "

    def _clear(self) -> None:
        if self.tty and self._drawn:
            self.stream.write("\r" + " " * (shutil.get_terminal_size((80, 20)).columns - 1) + "\r")
            self._drawn = False


def summary_line(command: str, counts: dict[str, int], seconds: float, interrupted: bool = False) -> str:
    """`replay: 1,000 applied, 3 skipped, 0 failed in 0.42 s` (counts in the order given)."""
    parts = ", ".join(f"{_count(n)} {name}" for name, n in counts.items())
    ending = " (interrupted: run it again to continue)" if interrupted else ""
    return f"{command}: {parts} in {seconds:.2f} s{ending}"


def quiet_logs_under_progress(settings: Settings, progress: Progress) -> None:
    """On a terminal the bar stands in for per-event info lines; warnings still show."""
    if progress.tty and settings.log_level == "info":
        configure_logging(replace(settings, log_level="warning"))


@contextlib.contextmanager
def clean_stop(progress: Progress | None = None) -> Iterator[asyncio.Event]:
    """Turn the first Ctrl-C (or SIGTERM, as Heroku sends) into a stop request.

    Long loops check the event between batches. A second signal cancels the running task,
    which rolls back the open transaction; everything committed stays. One that comes after the
    stop, while the command closes its connections, ends it at once with exit code 130 (without
    this, Python's default handler would print a KeyboardInterrupt traceback).
    """
    loop = asyncio.get_running_loop()
    task = asyncio.current_task()
    stop = asyncio.Event()

    def on_signal() -> None:
        if stop.is_set() and task is not None:
            task.cancel()
            return
        stop.set()
        if progress is not None:
            progress.note("stopping after the current batch (Ctrl-C again to abort it)")

    installed = []
    for sig in (signal.SIGINT, signal.SIGTERM):
        try:
            loop.add_signal_handler(sig, on_signal)
            installed.append(sig)
        except (NotImplementedError, RuntimeError, ValueError):
            pass  # not the main thread (tests) or no signal support: no clean stop, nothing breaks
    try:
        yield stop
    finally:
        for sig in installed:
            loop.remove_signal_handler(sig)
            if stop.is_set():
                signal.signal(sig, _exit_interrupted)


def _exit_interrupted(signum: int, frame: object) -> None:
    raise SystemExit(130)


def refuse(command: str, message: str) -> int:
    """One line on stderr for something the user can fix; exit code 2."""
    print(f"stripeline {command}: {message}", file=sys.stderr)
    return 2


Work = Callable[[asyncpg.Pool, Tally, Progress, asyncio.Event], Awaitable[None]]


async def run_command(command: str, settings: Settings, work: Work, summary: Callable[[Tally], dict[str, int]]) -> int:
    """Run `work` with a pool, progress and a clean Ctrl-C; print the summary line; return the exit code."""
    progress = Progress(command)
    quiet_logs_under_progress(settings, progress)
    quiet_garbage_collector()
    tally = Tally()
    error: RunError | None = None
    pool = None
    try:
        pool = await open_pool(settings, "command", name=command)
        with clean_stop(progress) as stop:
            await work(pool, tally, progress, stop)
    except (RunError, asyncpg.PostgresError, asyncpg.InterfaceError) as problem:
        error = run_error_of(problem, settings.schema)
    except asyncio.CancelledError:
        tally.interrupted = True
    finally:
        if pool is not None and tally.interrupted:
            pool.terminate()
        elif pool is not None:
            await pool.close()
    progress.finish_phase()
    if error is not None:
        refuse(command, str(error))
        if error.exit_code == 2:
            return 2
    print(summary_line(command, summary(tally), tally.seconds(), tally.interrupted), flush=True)
    return max(tally.exit_code(), error.exit_code if error else 0)


LaneWork = Callable[[asyncpg.Pool, asyncio.Event], Awaitable[int]]


async def run_lane(command: str, settings: Settings, connections: int, work: LaneWork) -> int:
    """The process of a command's lane (`replay --lane`, `import --lane`): `work` with a pool of
    `connections` and a clean stop; its exit code, 130 when aborted (a second Ctrl-C, or the
    parent gone), its open transaction rolled back."""
    quiet_garbage_collector()
    pool = await open_pool(settings, "command", name=command, max_size=connections)
    try:
        with clean_stop() as stop:
            return await work(pool, stop)
    except asyncio.CancelledError:
        pool.terminate()
        pool = None
        return 130
    finally:
        if pool is not None:
            await pool.close()
