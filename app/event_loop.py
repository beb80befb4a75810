"""The event loop of stripeline's own processes (worker and commands): uvloop where it is
installed, asyncio's own otherwise.

uvloop comes with uvicorn[standard], and the web process already runs on it through uvicorn.
The worker and the commands spend most of their time in asyncpg's round trips, and on uvloop a
round trip costs the client about a third less CPU than on asyncio's selector loop (measured
here: 71-99 against 125-129 microseconds per statement).
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")


def run(main: Coroutine[Any, Any, T]) -> T:
    """asyncio.run on uvloop's loop when it is installed."""
    try:
        import uvloop
    except ImportError:  # a platform without uvloop's wheels (Windows, PyPy)
        return asyncio.run(main)
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(main)
