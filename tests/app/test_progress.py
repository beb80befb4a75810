"""What long commands show: a bar on a terminal, plain lines elsewhere, one summary line."""

from __future__ import annotations

import asyncio
import io
import os
import signal
import time

import pytest

from stripeline.commands import progress as progress_module
from stripeline.commands.progress import FAILURES_SHOWN, Progress, clean_stop, summary_line


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_a_terminal_gets_a_bar_redrawn_in_place():
    screen = Terminal()
    shown = Progress("replay", stream=screen)
    shown.phase("rebuild", total=200)
    shown.advance(50)
    shown.finish_phase()
    lines = screen.getvalue().split("\r")
    assert "replay rebuild [#####...............] 50/200 25%" in lines[1]
    assert screen.getvalue().endswith("\n")


def test_elsewhere_plain_lines_come_at_most_every_few_seconds(monkeypatch):
    log = io.StringIO()
    shown = Progress("import", stream=log)
    shown.phase("store")
    for _ in range(1000):
        shown.advance(10)
    monkeypatch.setattr(progress_module, "PLAIN_EVERY_SECONDS", 0.0)
    shown.advance(10)
    shown.finish_phase()
    lines = log.getvalue().splitlines()
    # Nothing within the first interval; one line after it; the end of the phase says nothing
    # new, so it is not repeated.
    assert len(lines) == 1
    assert lines[0].startswith("import: store 10,010 ") and "\r" not in log.getvalue()


def test_a_log_gets_one_line_for_a_short_phase_and_never_the_same_numbers_twice():
    log = io.StringIO()
    shown = Progress("replay", stream=log)
    shown.phase("rebuild", total=502)
    shown.advance(500)
    shown.advance(2)
    shown.finish_phase()
    shown.phase("billing", total=58)
    shown.advance(58)
    shown.finish_phase()
    lines = log.getvalue().splitlines()
    assert [line.split(" 100%")[0] for line in lines] == ["replay: rebuild 502/502", "replay: billing 58/58"]


def test_a_phase_named_like_its_command_is_not_named_twice():
    log = io.StringIO()
    shown = Progress("replay", stream=log)
    shown.phase("replay", total=502)
    shown.advance(502)
    shown.finish_phase()
    assert log.getvalue().startswith("replay: 502/502 100% ")
    screen = Terminal()
    drawn = Progress("replay", stream=screen)
    drawn.phase("replay", total=4)
    drawn.advance(4)
    drawn.finish_phase()
    assert "replay [####################] 4/4 100%" in screen.getvalue()


def test_failures_are_named_up_to_a_limit_then_only_counted():
    log = io.StringIO()
    shown = Progress("replay", stream=log)
    for n in range(FAILURES_SHOWN + 5):
        shown.failure(f"evt_{n} (invoice.paid): ValueError: bad")
    lines = log.getvalue().splitlines()
    assert lines[0] == "replay: failed: evt_0 (invoice.paid): ValueError: bad"
    assert len(lines) == FAILURES_SHOWN + 1
    assert lines[-1] == "replay: more events failed; the summary counts them all"


def test_the_summary_is_one_line_with_counts_in_order():
    line = summary_line("backfill", {"listed": 1200, "applied": 1190, "skipped": 10, "failed": 0}, 3.14159)
    assert line == "backfill: 1,200 listed, 1,190 applied, 10 skipped, 0 failed in 3.14 s"
    assert summary_line("replay", {"applied": 5}, 1, interrupted=True).endswith("(interrupted: run it again to continue)")


async def test_a_ctrl_c_after_the_clean_stop_ended_exits_at_once_with_130_not_a_traceback():
    """The first Ctrl-C asks for a stop; one more that arrives while the command closes its
    connections (the stop is over) ends it with the interrupted exit code, quietly."""
    previous = signal.getsignal(signal.SIGINT)
    try:
        with clean_stop() as stop:
            os.kill(os.getpid(), signal.SIGINT)
            await asyncio.sleep(0.05)
            assert stop.is_set()
        try:
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(1)
        except KeyboardInterrupt:
            pytest.fail("Python's default handler ran: a KeyboardInterrupt traceback, exit by SIGINT")
        except SystemExit as exited:
            assert exited.code == 130
        else:
            pytest.fail("the second Ctrl-C did nothing")
    finally:
        signal.signal(signal.SIGINT, previous)
