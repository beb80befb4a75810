"""`stripeline import FILE`: a file of Stripe events stored as if received, then processed in order."""

from __future__ import annotations

import sys
from typing import Any

from stripeline import event_loop
from stripeline.commands.progress import refuse, run_command
from stripeline.handlers import registry
from stripeline.processing.event_files import read_events
from stripeline.processing.importing import ImportCounts, import_events
from stripeline.processing.runs import Tally
from stripeline.settings import Settings


def import_command(args: Any, settings: Settings) -> int:
    settings.require("DATABASE_URL")
    counts = ImportCounts()
    try:
        stream = sys.stdin.buffer if args.file == "-" else open(args.file, "rb")  # noqa: SIM115 - closed below
    except OSError as problem:
        return refuse("import", f"cannot read {args.file}: {problem.strerror}")

    async def work(pool, tally, progress, stop) -> None:
        await import_events(pool, settings, read_events(stream), tally, counts, progress=progress, stop=stop,
                            registry=registry())

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
