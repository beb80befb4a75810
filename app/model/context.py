"""What a handler is given beside its event, and the registry processing dispatches through.

The model's ground: handlers (stripeline.handlers) build on these types, and processing
(stripeline.processing) runs handlers through a `Registry` handed to it as a value, so it
never reaches up for a global list of handlers.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import asyncpg

from stripeline.model.events import EventRecord
from stripeline.model.writes import Snapshot, WriteBuffer
from stripeline.settings import Settings


@dataclass
class ProcessingContext:
    """What handlers may know beyond the event: settings, the clock, and what they touched."""

    settings: Settings
    now: datetime
    registry: Registry
    # Customers whose derived state (MRR, segments) must be recomputed after the handlers ran.
    touched: set[str] = field(default_factory=set)
    # The event being applied, recorded as the cause of segment changes.
    cause: str | None = None
    # Customers of this batch by whether Stripe deleted them (handlers.deletion: a Tombstone, or
    # None for one looked up and not deleted).
    tombstones: dict[str, Any] = field(default_factory=dict)
    # The deletions this batch applied, by customer (handlers.deletion): what the customer left
    # in the store is dealt with once the batch's rows are written, by its first refresher.
    deletions: dict[str, Any] = field(default_factory=dict)
    # Row snapshots staged by the handlers, written in one flush before the refreshers run
    # (stripeline.model.writes). A handler that writes SQL itself may flush it first.
    writes: WriteBuffer = field(default_factory=WriteBuffer)
    # A `replay --rebuild` is refilling the model: derived state that compares before and after
    # (segment entries and exits) waits for the rebuild's end, which settles it in one pass.
    rebuilding: bool = False
    # An import: MRR and last payment are recomputed once per customer at its end
    # (handlers.billing.settle_unsettled), not after each batch; the customers wait in
    # billing_unsettled meanwhile.
    billing_later: bool = False
    # The last event of the batch that named each customer: the cause of its segment changes.
    causes: dict[str, str] = field(default_factory=dict)

    def touch(self, event: EventRecord) -> None:
        """The event names a customer: its derived state is refreshed after the batch, and a
        placeholder row is staged for it (any of its own events overwrites one)."""
        if event.customer_id:
            self.touched.add(event.customer_id)
            if self.registry.placeholder is not None:
                self.writes.stage(self.registry.placeholder(event, event.customer_id))


Handler = Callable[[asyncpg.Connection, EventRecord, ProcessingContext], Awaitable[None]]
Refresher = Callable[[asyncpg.Connection, list[str], ProcessingContext], Awaitable[None]]
# Before a batch: load what `Admit` needs for all its events in one go.
Prepare = Callable[[asyncpg.Connection, list[EventRecord], ProcessingContext], Awaitable[None]]
# Before each event's handler: what of the event applies (the event to apply, its handler or None).
Admit = Callable[
    [asyncpg.Connection, EventRecord, "Handler | None", ProcessingContext],
    Awaitable[tuple[EventRecord, "Handler | None"]],
]
# The row of a customer known only as the owner of another object.
Placeholder = Callable[[EventRecord, str], Snapshot | None]


async def _admit_everything(conn, record, handler, ctx):  # noqa: ANN001, ARG001 - the Admit signature
    return record, handler


async def _prepare_nothing(conn, records, ctx):  # noqa: ANN001, ARG001 - the Prepare signature
    return None


@dataclass(frozen=True)
class Registry:
    """What processing dispatches to (stripeline.handlers.registry() is the product's)."""

    # Event type -> handler; a type missing here is stored and marked `ignored`.
    handlers: Mapping[str, Handler]
    # Run in order after each batch's staged rows are written, for the customers it touched.
    refreshers: Sequence[Refresher] = ()
    prepare: Prepare = _prepare_nothing
    admit: Admit = _admit_everything
    placeholder: Placeholder | None = None
