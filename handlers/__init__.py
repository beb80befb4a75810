"""Event handlers, wired in one explicit list: event type -> handler.

A handler is `async def on_<object>_<verb>(conn, event, ctx) -> None`. It reads and writes
PostgreSQL through `conn` inside the caller's transaction and never commits, enqueues or
calls the network. An event type missing here is stored and marked `ignored`.
"""

from __future__ import annotations

from app.processing import Handler, Refresher
from handlers import segments

HANDLERS: dict[str, Handler] = {}

# Run after the handlers of a batch, for every customer the batch touched, in this order.
REFRESHERS: list[Refresher] = [
    # Last: segments read what every other refresher (MRR, ...) has written.
    segments.refresh_customers,
]
