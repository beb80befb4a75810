"""The projections of Stripe objects into the model, and the registry built from them.

Each handler module declares, once, the event types of its Stripe object with a line on why we
care about each (its `PROJECTIONS`), its table and its named row type; the registry below is
derived from those declarations, in the order of MODULES, and README's list of handled events
is checked against it (tests/handlers/test_registry.py). An event type missing here is stored
and marked `ignored`.

A handler is `async def on_<object>_event(conn, event, ctx) -> None`. It reads and writes
PostgreSQL through `conn` inside the caller's transaction and never commits, enqueues or
calls the network. The billing handlers are projections: they stage row snapshots on
`ctx.writes`, written in one flush per batch (app/model/writes.py) before the refreshers run.
"""

from __future__ import annotations

from stripeline.handlers import (
    billing,
    catalog,
    customers,
    deletion,
    discounts,
    invoices,
    payments,
    segments,
    subscriptions,
)
from stripeline.model.context import Handler, Refresher, Registry
from stripeline.model.writes import Projection

# Every Stripe object we project, one module each.
MODULES = (customers, deletion, subscriptions, invoices, payments, catalog, discounts)

PROJECTIONS: tuple[Projection, ...] = tuple(projection for module in MODULES for projection in module.PROJECTIONS)

HANDLERS: dict[str, Handler] = {
    event_type: projection.handler for projection in PROJECTIONS for event_type in projection.events
}

# What each handled event type means to us, in the order above (README's list).
WHY: dict[str, str] = {event_type: why for projection in PROJECTIONS for event_type, why in projection.events.items()}

# Run after the handlers of a batch, for every customer the batch touched, in this order.
REFRESHERS: list[Refresher] = [
    # The deletion policy first: lay the anonymization over (or purge) what this batch wrote for
    # customers deleted in Stripe, so that MRR and segments are computed from the result.
    deletion.settle_deletions,
    # MRR and last payment next: other derived state may read them.
    billing.refresh_billing,
    # Last: segments read what every other refresher (MRR, ...) has written.
    segments.refresh_customers,
]


def registry() -> Registry:
    """The product's registry: these handlers and refreshers, and the deletion policy's guard."""
    return Registry(
        handlers=HANDLERS,
        refreshers=tuple(REFRESHERS),
        prepare=deletion.load_tombstones,
        admit=deletion.admit_event,
        placeholder=customers.customer_placeholder,
    )
