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
writes its progress, failed events and its end. End of file (or a reset: a parent killed with
messages of ours unread) means the other side is gone: a
lane whose parent died (even by SIGKILL: the kernel closes its socket) aborts its open batch,
which rolls back, and exits; a lane that ended without saying so stops the whole rebuild, as
the first failure of any lane does in one process. Each lane commits its batches with its
cursor, so whatever killed whom, the next `stripeline replay` resumes every lane where it
stopped.

`stripeline import` runs its apply lanes the same way (`LaneProcesses`): the parent reads the
file and sends each lane the JSON text of its customers' events, a chunk at a time (event
lines, then `apply`), and `done` once the file is read; the lane stores and applies them and
acknowledges what it did, so the parent keeps each lane at most a chunk behind.

An import of a file starts its lanes by forking itself (`fork_lanes`) before its event loop
starts, rather than running the command anew: a new process spent 0.2-0.3 s of CPU importing
and setting up what the command had already, which was a tenth of the CPU of a 20,000-event
import, and the first chunk waited for it. The forked lane runs the very code `import --lane`
runs, on the same socket protocol, in a session of its own; it is named `import-lane-N` where
`ps` and `top` show process names. Nothing runs yet when it forks (no event loop, no thread, no
connection), so it shares nothing but what it inherited read-only.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import stat
import sys
import traceback
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field

import asyncpg
import orjson

from stripeline.logging import log
from stripeline.processing.runs import Reporter, RunError, Tally, run_error_of

# How long a lane asked to abort (its socket closed) may take to exit before it is killed.
ABORT_SECONDS = 10.0
STOP = b"stop\n"
# From an import's parent: apply the event lines sent since the last `apply`; no more lines.
APPLY = b"apply\n"
DONE = b"done\n"
# The longest line a lane reads from its parent: one event's JSON text (the web takes bodies of
# at most a few MB; an import line may be longer, and a longer one fails the import plainly).
MAX_LINE = 1 << 28
REBUILD_LANE_ENDED = ("rebuild lane {number} ended unexpectedly ({how}); "
                      "run `stripeline replay` to finish the rebuild")


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
        # What the parent sent besides `stop` (an import's event lines, `apply`, `done`); a
        # `stop` is put here too, so that a lane waiting for lines wakes up to it.
        self.inbox: asyncio.Queue[bytes] = asyncio.Queue()

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

    def applied(self, n: int, *, stored: int, already: list[str]) -> None:
        """An import's lane: n more of the events sent are done with (applied, skipped or failed),
        of which it stored `stored` and found `already` (ids) stored before."""
        self._send({"applied": n, "stored": stored, "already": already,
                    "counts": [self._tally.applied, self._tally.skipped, self._tally.failed]})

    def failure(self, message: str) -> None:
        self._send({"failure": message})

    def malformed(self, where: str, reason: str) -> None:
        """An import's lane: one of the events sent is malformed, skipped (and done with)."""
        self._send({"malformed": [where, reason]})

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


async def parent_speaks() -> bool:
    """Wait for the parent's first message; False if it ended first. A lane forked as its command
    starts connects to PostgreSQL only once its parent has (or the parent's failure to connect
    would be reported by every lane too)."""
    loop = asyncio.get_running_loop()
    readable = loop.create_future()
    loop.add_reader(0, lambda: readable.done() or readable.set_result(None))
    try:
        await readable
    finally:
        loop.remove_reader(0)
    with socket.socket(fileno=os.dup(0)) as channel:
        try:
            return channel.recv(1, socket.MSG_PEEK) != b""
        except ConnectionError:
            return False


@contextlib.asynccontextmanager
async def parent_channel(tally: Tally, stop: asyncio.Event) -> AsyncIterator[LaneReporter]:
    """In a lane process: the socket on standard input, as a Reporter. `stop` from the parent
    sets `stop`; its other lines go to the reporter's inbox; its end (the parent is gone)
    cancels the task that entered this context."""
    reader, writer = await asyncio.open_unix_connection(sock=socket.socket(fileno=os.dup(0)), limit=MAX_LINE)
    task = asyncio.current_task()
    reporter = LaneReporter(writer, tally)

    async def listen() -> None:
        try:
            while line := await reader.readline():
                if line == STOP:
                    stop.set()
                reporter.inbox.put_nowait(line)
        except ValueError:  # a line over MAX_LINE: the lane cannot go on, the parent says so
            log.warning("lane_line_too_long")
        except ConnectionError:
            # A parent that died with our last messages unread resets the socket instead of
            # ending it: gone all the same (missing this left lanes waiting forever).
            pass
        log.warning("lane_orphaned")  # the parent died: roll the open batch back and go
        if task is not None:
            task.cancel()

    listener = asyncio.create_task(listen())
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


async def serve_parent(tally: Tally, stop: asyncio.Event, schema: str,
                       body: Callable[[LaneReporter], Awaitable[None]]) -> int:
    """The whole of a lane process: `body` run with the parent's channel, its end or its error
    (one the user can act on) told to the parent; the exit code."""
    async with parent_channel(tally, stop) as parent:
        try:
            await body(parent)
        except (RunError, asyncpg.PostgresError, asyncpg.InterfaceError) as problem:
            error = run_error_of(problem, schema)
            parent.fail(error)
            return error.exit_code
        parent.end(tally.interrupted)
    return 0


# --- the parent's side ----------------------------------------------------------------------


def can_fork_lanes() -> bool:
    """Whether this platform lets us fork lanes and wait for them on the event loop: Linux 5.3 or
    later (pidfd_open; an older kernel has the call refused, and its lanes start as commands)."""
    if not hasattr(os, "fork") or not hasattr(os, "pidfd_open"):
        return False
    try:
        os.close(os.pidfd_open(os.getpid()))
    except OSError:
        return False
    return True


@dataclass(eq=False)
class ForkedLane:
    """A lane process this one forked (`fork_lanes`): its pid and our end of its socket, standing
    in for the asyncio process of a lane started as a command."""

    pid: int
    sock: socket.socket
    returncode: int | None = None
    taken: bool = False  # by a LaneProcesses, which ends it; one never taken is `end_forked`'s

    async def wait(self) -> int:
        """Its exit code once it has exited (minus the signal that killed it), reaped."""
        if self.returncode is None:
            loop = asyncio.get_running_loop()
            handle = os.pidfd_open(self.pid)
            try:
                exited = loop.create_future()
                loop.add_reader(handle, lambda: exited.done() or exited.set_result(None))
                try:
                    await exited
                finally:
                    loop.remove_reader(handle)
            finally:
                os.close(handle)
            if self.returncode is None:  # a wait cancelled at this point leaves it to the next
                _, status = os.waitpid(self.pid, 0)
                self.returncode = os.waitstatus_to_exitcode(status)
        return self.returncode

    def kill(self) -> None:
        if self.returncode is None:
            os.kill(self.pid, signal.SIGKILL)


def fork_lanes(count: int, body: Callable[[int], int], *, name: str, close: Sequence[int] = ()) -> list[ForkedLane]:
    """`count` lane processes forked from this one, lane i running `body(i)` (the lane's command,
    which reads its parent's socket on standard input) and exiting with its exit code. Call it
    before the event loop starts. `close`: file descriptors the lanes do not keep."""
    sys.stdout.flush()
    sys.stderr.flush()
    lanes: list[ForkedLane] = []
    for number in range(count):
        ours, theirs = socket.socketpair()
        pid = os.fork()
        if pid == 0:  # the lane
            code = 1
            try:
                ours.close()
                for lane in lanes:
                    lane.sock.close()
                for fd in close:
                    os.close(fd)
                # A session of its own, as a lane started as a command: a terminal's Ctrl-C
                # reaches the parent alone, which passes it on.
                os.setsid()
                os.dup2(theirs.fileno(), 0)
                theirs.close()
                _name_process(f"{name}-{number}")
                code = body(number)
            except SystemExit as exit_:
                code = exit_.code if isinstance(exit_.code, int) else 1
            except BaseException:
                traceback.print_exc()
            finally:
                with contextlib.suppress(Exception):
                    sys.stdout.flush()
                    sys.stderr.flush()
                os._exit(code)
        theirs.close()
        lanes.append(ForkedLane(pid, ours))
    return lanes


def _name_process(name: str) -> None:
    """The name `ps` and `top` show for this process (Linux keeps 15 characters)."""
    with contextlib.suppress(OSError):
        with open("/proc/self/comm", "w") as comm:
            comm.write(name[:15])


async def end_forked(lanes: Sequence[ForkedLane]) -> None:
    """Forked lanes that no LaneProcesses took (their import needed none): told `done`, ended."""
    idle = [lane for lane in lanes if not lane.taken]
    if idle:
        async with LaneProcesses(idle, Tally(), None, None):
            pass  # at its end, each is told `done` and ends


def abandon_forked(lanes: Sequence[ForkedLane]) -> None:
    """Forked lanes that no LaneProcesses took, when the import failed: their socket closed, they
    exit (as when their parent dies)."""
    for lane in lanes:
        if not lane.taken:
            lane.sock.close()


@dataclass
class _Lane:
    """One lane process as the parent follows it."""

    number: int
    process: asyncio.subprocess.Process | ForkedLane
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    # Set whenever this lane acknowledges events or ends (shared by the lanes of a run).
    changed: asyncio.Event
    # What to say when it ends unannounced ({number}, {how}).
    unexpected_end: str
    counts: list[int] = field(default_factory=lambda: [0, 0, 0])
    ended: bool = False
    interrupted: bool = False
    gone: bool = False  # its follower is done: nothing more comes from it
    # An import's lane: events sent, and acknowledged as done with; of those, how many it stored,
    # the ids of those it found stored before, and how many it found malformed (the parent takes
    # them as it counts them).
    sent: int = 0
    acknowledged: int = 0
    stored: int = 0
    already: list[str] = field(default_factory=list)
    malformed: int = 0

    def stop(self) -> None:
        self._write(STOP)

    def done(self) -> None:
        """An import's lane: nothing more comes; end once what was sent is applied."""
        self._write(DONE)

    def abort(self) -> None:
        """Close its socket: the lane rolls its open batch back and exits."""
        self.writer.close()

    def _write(self, data: bytes) -> None:
        if not self.writer.is_closing():
            with contextlib.suppress(ConnectionError):
                self.writer.write(data)

    async def send(self, lines: Sequence[bytes]) -> None:
        """An import's lane: apply these events (the JSON text of each, on one line) after the rest."""
        if self.writer.is_closing():
            return
        with contextlib.suppress(ConnectionError):
            self.writer.write(b"".join(line + b"\n" for line in lines) + APPLY)
            self.sent += len(lines)
            await self.writer.drain()

    async def _next_line(self) -> bytes:
        """Its next message; b"" once it closed its end (or its process died)."""
        try:
            return await self.reader.readline()
        except ConnectionError:
            return b""

    async def follow(self, tally: Tally, progress: Reporter | None, stopping: asyncio.Event) -> None:
        try:
            await self._follow(tally, progress, stopping)
        finally:
            self.gone = True
            self.changed.set()

    async def _follow(self, tally: Tally, progress: Reporter | None, stopping: asyncio.Event) -> None:
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
            elif "applied" in message:
                self.acknowledged += message["applied"]
                self.stored += message["stored"]
                self.already += message["already"]
                self.changed.set()
            elif "malformed" in message:
                self.acknowledged += 1
                self.malformed += 1
                self.changed.set()
                if progress is not None:
                    where, reason = message["malformed"]
                    progress.note(f"{where}: skipped, {reason}")
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
            raise LaneFailed(self.unexpected_end.format(number=self.number, how=how))


async def _start(number: int, argv: Sequence[str] | ForkedLane, changed: asyncio.Event,
                 unexpected_end: str) -> _Lane:
    if isinstance(argv, ForkedLane):
        argv.taken = True
        reader, writer = await asyncio.open_unix_connection(sock=argv.sock)
        return _Lane(number, argv, reader, writer, changed, unexpected_end)
    ours, theirs = socket.socketpair()
    try:
        # A session of its own: a Ctrl-C reaches the whole process group of the terminal's
        # command, and one reaching a lane still starting up would kill it; we pass it on.
        process = await asyncio.create_subprocess_exec(*argv, stdin=theirs, start_new_session=True)
    finally:
        theirs.close()
    reader, writer = await asyncio.open_unix_connection(sock=ours)
    return _Lane(number, process, reader, writer, changed, unexpected_end)


async def _ended(lane: _Lane) -> None:
    try:
        await asyncio.wait_for(lane.process.wait(), ABORT_SECONDS)
    except asyncio.TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            lane.process.kill()
        await lane.process.wait()


class LaneProcesses:
    """One process per argv (lane i is commands[i], or a lane forked already), followed while the
    block runs.

    Our stop request, or a lane's own stop (`stopping`), is passed on to every lane. The first
    lane to fail (or to end without saying so) stops the others, which roll back their open
    batch, and its error is raised, from the block's next wait on the lanes or at its end; so is
    the block's own exception or cancellation, after the same. The lanes' counts are added to
    `tally` at the end. `unexpected_end` is the error of a lane that ended without saying why.
    """

    def __init__(self, commands: Sequence[Sequence[str] | ForkedLane], tally: Tally, progress: Reporter | None,
                 stop: asyncio.Event | None, unexpected_end: str = REBUILD_LANE_ENDED):
        self._commands = commands
        self._unexpected_end = unexpected_end
        self._tally = tally
        self._progress = progress
        self._stop = stop
        self.lanes: list[_Lane] = []
        self.stopping = asyncio.Event()
        self._changed = asyncio.Event()
        self._helpers: list[asyncio.Task] = []
        self._followers: list[asyncio.Task] = []

    async def __aenter__(self) -> LaneProcesses:
        self._helpers = [asyncio.create_task(self._our_stop()), asyncio.create_task(self._pass_stops_on())]
        try:
            for number, argv in enumerate(self._commands):
                self.lanes.append(await _start(number, argv, self._changed, self._unexpected_end))
            self._followers = [asyncio.create_task(lane.follow(self._tally, self._progress, self.stopping))
                               for lane in self.lanes]
        except BaseException:
            await self._close()
            raise
        return self

    async def __aexit__(self, kind, problem, traceback) -> None:  # noqa: ANN001
        try:
            if problem is None:
                for lane in self.lanes:
                    lane.done()
                await self.ended()
        finally:
            await self._close()

    async def _our_stop(self) -> None:
        if self._stop is not None:
            await self._stop.wait()
            self.stopping.set()

    async def _pass_stops_on(self) -> None:
        await self.stopping.wait()
        for lane in self.lanes:
            lane.stop()

    def _raise_failure(self) -> None:
        for follower in self._followers:
            if follower.done() and not follower.cancelled() and follower.exception() is not None:
                raise follower.exception()

    async def _until(self, condition) -> None:  # noqa: ANN001
        """Wait until `condition()` holds, raising the first lane failure meanwhile."""
        while True:
            self._raise_failure()
            if condition():
                return
            self._changed.clear()
            await self._changed.wait()

    async def ended(self) -> None:
        """Wait until every lane has ended."""
        await self._until(lambda: all(lane.gone for lane in self.lanes))

    async def caught_up(self, behind: int = 0) -> None:
        """Wait until each lane has at most `behind` of the events sent to it still to do (or has
        ended: a stopped lane does no more)."""
        await self._until(lambda: all(lane.gone or lane.sent - lane.acknowledged <= behind for lane in self.lanes))

    async def _close(self) -> None:
        for lane in self.lanes:
            if not lane.ended:
                lane.abort()
        for task in (*self._followers, *self._helpers):
            task.cancel()
        await asyncio.gather(*self._followers, *self._helpers, return_exceptions=True)
        await asyncio.gather(*(_ended(lane) for lane in self.lanes))
        for lane in self.lanes:
            lane.writer.close()
            applied, skipped, failed = lane.counts
            tally = self._tally
            tally.applied, tally.skipped, tally.failed = (tally.applied + applied, tally.skipped + skipped,
                                                          tally.failed + failed)
            tally.interrupted = tally.interrupted or lane.interrupted


async def run_lane_processes(commands: Sequence[Sequence[str] | ForkedLane], tally: Tally, progress: Reporter | None,
                             stop: asyncio.Event | None) -> None:
    """Run one process per argv (lane i is commands[i]) to their end, counting into `tally`
    (`LaneProcesses`: the first failure stops the others and is raised)."""
    async with LaneProcesses(commands, tally, progress, stop) as lanes:
        await lanes.ended()
