"""Every bench under bench/ starts: the README's reproduce commands must not rot when code moves.

Each bench is run the way the README shows it (a script path, or `-m bench.NAME` for the ones
documented as modules) with --help, which imports everything it uses without touching a server.
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
BENCHES = sorted(p.stem for p in (ROOT / "bench").glob("*.py") if p.stem not in {"__init__", "common"})
RUN_AS_MODULE = {"deletion"}  # its docstring documents `python -m bench.deletion`


def test_every_bench_is_covered():
    assert {"pipeline", "replay", "import", "ingest", "soak"} <= set(BENCHES)


@pytest.mark.parametrize("name", BENCHES)
async def test_bench_starts(name: str):
    target = ["-m", f"bench.{name}"] if name in RUN_AS_MODULE else [str(ROOT / "bench" / f"{name}.py")]
    process = await asyncio.create_subprocess_exec(
        sys.executable, *target, "--help", cwd=ROOT, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
    )
    output, _ = await asyncio.wait_for(process.communicate(), timeout=60)
    assert process.returncode == 0, output.decode()[-2000:]
    assert b"usage:" in output
