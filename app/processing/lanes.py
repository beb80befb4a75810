"""A rebuild's lanes in processes of their own, so that more than one core runs their Python.

One process could not apply events faster than about 7,000 a second: the handlers, asyncpg's
encoding and decoding and the payloads' JSON take a core, while PostgreSQL idled half the time.
So `stripeline replay --rebuild` starts each lane as a subprocess of the installed command (a
hidden option of `replay` names the lane and its connections; the command line builds the
argv, this module only runs them). We chose a subprocess over multiprocessing's "spawn": the
child is exactly the command a user runs, with the same environment, logging, event loop and
signal handling, and nothing is pickled; the lane's code is the one `replay` runs in-process.

The parent and a lane talk over one Unix socket that is the lane's standard input, in JSON
lines. Each lane runs in a session of its own, so a terminal's Ctrl-C reaches the parent
alone (a lane still starting up would die of it); the parent writes `stop` to every lane on
its first Ctrl-C or SIGTERM (finish the batch, then stop), and closes their sockets on the
second (roll the open batch back). A lane signalled itself stops the same way. The lane
writes its progress, failed events and its end. End of file means the other side is gone: a
lane whose parent died (even by SIGKILL: the kernel closes its socket) aborts its open batch,
which rolls back, and exits; a lane that ended without saying so stops the whole rebuild, as
the first failure of any lane does in one process. Each lane commits its batches with its
cursor, so whatever killed whom, the next `stripeline replay` resumes every lane where it
stopped.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import stat
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field

import orjson

from stripeline.logging import log
from stripeline.processing.runs import Reporter, RunError, Tally

# How long a lane asked to abort (its socket closed) may take to exit before it is killed.
ABORT_SECONDS = 10.0
STOP = b"stop\n"


class LaneFailed(RunError):
    """A lane process stopped the rebuild; the message is the lane's own (or how it ended)."""

    def __init__(self, message: str, exit_code: int = 1):
        super().__init__(message)
        self.exit_code = exit_code


# --- the lane's side ------------------------------------------------------------------------


class LaneReporter:
    """The Reporter of a lane process: what it applied and failed, sent to the parent."""

    def __init__(self, writer: asyncio.StreamWriter, tally: Tally):
        self._writer = writer
        self._tally = tally

    def _send(self, message: dict) -> None:
        if not self._writer.is_closing():
            self._writer.write(orjson.dumps(message) + b"\n")

    def phase(self, name: str, total: int | None = None, done: int = 0) -> None:
        pass  # the parent shows the phases

    def advance(self, n: int = 1) -> None:
        # The lane's counts so far ride along: the parent's summary adds them up.
        self._send({"advance": n, "counts": [self._tally.applied, self._tally.skipped, self._tally.failed]})

    def note(self, message: str) -> None:
        self._send({"note": message})

    def failure(self, message: str) -> None:
        self._send({"failure": message})

    def end(self, interrupted: bool) -> None:
        self._send({"end": True, "interrupted": interrupted,
                    "counts": [self._tally.applied, self._tally.skipped, self._tally.failed]})

    def fail(self, error: RunError) -> None:
        self._send({"error": str(error), "exit_code": error.exit_code})

    async def drain(self) -> None:
        with contextlib.suppress(ConnectionError):
            await self._writer.drain()


def has_parent() -> bool:
    """Whether standard input is the socket of a parent that runs this process as a lane."""
    return stat.S_ISSOCK(os.fstat(0).st_mode)


@contextlib.asynccontextmanager
async def parent_channel(tally: Tally, stop: asyncio.Event) -> AsyncIterator[LaneReporter]:
    """In a lane process: the socket on standard input, as a Reporter. `stop` from the parent
    sets `stop`; its end (the parent is gone) cancels the task that entered this context."""
    reader, writer = await asyncio.open_unix_connection(sock=socket.socket(fileno=os.dup(0)))
    task = asyncio.current_task()

    async def listen() -> None:
        while line := await reader.readline():
            if line == STOP:
                stop.set()
        log.warning("rebuild_lane_orphaned")  # the parent died: roll the open batch back and go
        if task is not None:
            task.cancel()

    listener = asyncio.create_task(listen())
    reporter = LaneReporter(writer, tally)
    try:
        yield reporter
    finally:
        listener.cancel()
        await asyncio.gather(listener, return_exceptions=True)
        # Our end of file, then the parent's: closing with a `stop` of its unread would reset
        # the socket under our last messages.
        # The parent may have closed its end meanwhile (a second Ctrl-C): our socket is then
        # closed under us, and uvloop refuses an end of file on it (RuntimeError).
        with contextlib.suppress(ConnectionError, RuntimeError, asyncio.TimeoutError):
            await reporter.drain()
            if not writer.is_closing():
                writer.write_eof()
                await asyncio.wait_for(reader.read(), ABORT_SECONDS)
        writer.close()


# --- the parent's side ----------------------------------------------------------------------


@dataclass
class _Lane:
    """One lane process as the parent follows it."""

    number: int
    process: asyncio.subprocess.Process
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    counts: list[int] = field(default_factory=lambda: [0, 0, 0])
    ended: bool = False
    interrupted: bool = False

    def stop(self) -> None:
        if not self.writer.is_closing():
            with contextlib.suppress(ConnectionError):
                self.writer.write(STOP)

    def abort(self) -> None:
        """Close its socket: the lane rolls its open batch back and exits."""
        self.writer.close()

    async def _next_line(self) -> bytes:
        """Its next message; b"" once it closed its end (or its process died)."""
        try:
            return await self.reader.readline()
        except ConnectionError:
            return b""

    async def follow(self, tally: Tally, progress: Reporter | None, stopping: asyncio.Event) -> None:
        """Pass its messages on until it ends; LaneFailed if it failed or ended unannounced
        (but for a SIGTERM or SIGINT, or any signal while the lanes stop). A lane that
        stopped (signalled itself) sets `stopping`."""
        error: LaneFailed | None = None
        while line := await self._next_line():
            message = orjson.loads(line)
            if "counts" in message:
                self.counts = message["counts"]
            if "failure" in message:
                tally.failures.append(message["failure"])
                if progress is not None:
                    progress.failure(message["failure"])
            elif "advance" in message and progress is not None:
                progress.advance(message["advance"])
            elif "note" in message and progress is not None:
                progress.note(message["note"])
            elif "error" in message:
                error = LaneFailed(message["error"], message["exit_code"])
            elif message.get("end"):
                self.ended, self.interrupted = True, message["interrupted"]
                if self.interrupted:
                    stopping.set()
        self.writer.close()  # the lane waits for our end of file before it exits
        code = await self.process.wait()
        if error is not None:
            raise error
        if not self.ended and (-code in (signal.SIGTERM, signal.SIGINT) or code < 0 and stopping.is_set()):
            # Asked to stop before it could say so (still starting up), or killed while the
            # lanes stop: its committed batches are behind its cursor, the open one rolled back.
            self.ended = self.interrupted = True
            stopping.set()
        if not self.ended:
            how = f"killed by {signal.Signals(-code).name}" if code < 0 else f"exit code {code}"
            raise LaneFailed(f"rebuild lane {self.number} ended unexpectedly ({how}); "
                             "run `stripeline replay` to finish the rebuild")


async def _start(number: int, argv: Sequence[str]) -> _Lane:
    ours, theirs = socket.socketpair()
    try:
        # A session of its own: a Ctrl-C reaches the whole process group of the terminal's
        # command, and one reaching a lane still starting up would kill it; we pass it on.
        process = await asyncio.create_subprocess_exec(*argv, stdin=theirs, start_new_session=True)
    finally:
        theirs.close()
    reader, writer = await asyncio.open_unix_connection(sock=ours)
    return _Lane(number, process, reader, writer)


async def _ended(lane: _Lane) -> None:
    try:
        await asyncio.wait_for(lane.process.wait(), ABORT_SECONDS)
    except asyncio.TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            lane.process.kill()
        await lane.process.wait()


async def run_lane_processes(commands: Sequence[Sequence[str]], tally: Tally, progress: Reporter | None,
                             stop: asyncio.Event | None) -> None:
    """Run one process per argv (lane i is commands[i]) to their end, counting into `tally`.

    Our stop request, or a lane's own stop, is passed on to every lane. The first lane to fail
    (or to end without saying so) stops the others, which roll back their open batch, and its
    error is raised; so is this task's cancellation, after the same.
    """
    lanes: list[_Lane] = []
    stopping = asyncio.Event()

    async def our_stop() -> None:
        if stop is not None:
            await stop.wait()
            stopping.set()

    async def pass_stops_on() -> None:
        await stopping.wait()
        for lane in lanes:
            lane.stop()

    helpers = [asyncio.create_task(our_stop()), asyncio.create_task(pass_stops_on())]
    followers: list[asyncio.Task] = []
    try:
        for number, argv in enumerate(commands):
            lanes.append(await _start(number, argv))
        followers = [asyncio.create_task(lane.follow(tally, progress, stopping)) for lane in lanes]
        done, _ = await asyncio.wait(followers, return_when=asyncio.FIRST_EXCEPTION)
        for follower in done:
            follower.result()  # the first failure, raised
    finally:
        for lane in lanes:
            if not lane.ended:
                lane.abort()
        for task in (*followers, *helpers):
            task.cancel()
        await asyncio.gather(*followers, *helpers, return_exceptions=True)
        await asyncio.gather(*(_ended(lane) for lane in lanes))
        for lane in lanes:
            lane.writer.close()
            applied, skipped, failed = lane.counts
            tally.applied, tally.skipped, tally.failed = (tally.applied + applied, tally.skipped + skipped,
                                                          tally.failed + failed)
            tally.interrupted = tally.interrupted or lane.interrupted
