"""Every table of the schema, by role: the one place that says what a rebuild wipes, what
`erase` empties and what a customer deleted in `delete` mode takes with it.

tests/app/test_tables.py checks that every table the migrations create is here, so a new table
cannot be forgotten by any of the three; the statements below are built from this list (table
and column names only, never input).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum


class Role(Enum):
    # The verified events themselves: the source of truth.
    EVENT_LOG = "event log"
    # Rows derived from Stripe's events alone: `replay --rebuild` wipes and refills them.
    STRIPE_DERIVED = "derived from Stripe events"
    # Derived from the model and settled by a rebuild's last pass rather than wiped (segments).
    MODEL_DERIVED = "derived from the model"
    # What users wrote through the API: no replay or rebuild touches it.
    USER_OWNED = "written by users"
    # Kept by the product for itself: counts, markers, cursors, delivery queues, tombstones.
    BOOKKEEPING = "bookkeeping"


@dataclass(frozen=True)
class Table:
    name: str
    role: Role
    # How a row belongs to one customer (what `delete` mode purges with it): the column holding
    # the customer's id, or the column naming a parent row of a table listed earlier.
    customer_column: str | None = None
    parent: tuple[str, str] | None = None  # (column here, parent table)
    # A second way a row can belong to a customer: basil's invoice payments name only their invoice.
    also_parent: tuple[str, str] | None = None


# Parents before their children.
TABLES: tuple[Table, ...] = (
    Table("stripe_events", Role.EVENT_LOG),
    Table("customers", Role.STRIPE_DERIVED, customer_column="id"),
    Table("products", Role.STRIPE_DERIVED),
    Table("prices", Role.STRIPE_DERIVED),
    Table("subscriptions", Role.STRIPE_DERIVED, customer_column="customer_id"),
    Table("subscription_items", Role.STRIPE_DERIVED, parent=("subscription_id", "subscriptions")),
    Table("invoices", Role.STRIPE_DERIVED, customer_column="customer_id"),
    Table("payments", Role.STRIPE_DERIVED, customer_column="customer_id", also_parent=("invoice_id", "invoices")),
    Table("discounts", Role.STRIPE_DERIVED, customer_column="customer_id"),
    Table("segment_memberships", Role.MODEL_DERIVED, customer_column="customer_id"),
    Table("segment_history", Role.MODEL_DERIVED, customer_column="customer_id"),
    Table("segment_evaluations", Role.MODEL_DERIVED, customer_column="customer_id"),
    Table("customer_attributes", Role.USER_OWNED, customer_column="customer_id"),
    Table("customer_tags", Role.USER_OWNED, customer_column="customer_id"),
    Table("customer_activity", Role.USER_OWNED, customer_column="customer_id"),
    # All that is left of a customer deleted in `delete` mode: what keeps a late event out.
    Table("customer_tombstones", Role.BOOKKEEPING),
    Table("stripe_event_counts", Role.BOOKKEEPING),
    Table("stripe_event_minutes", Role.BOOKKEEPING),
    Table("segment_refresh_state", Role.BOOKKEEPING),
    # Segment webhooks waiting for delivery; a deletion deletes or scrubs those naming the customer.
    Table("outbox", Role.BOOKKEEPING),
    Table("replay_rebuilds", Role.BOOKKEEPING),
    Table("backfill_runs", Role.BOOKKEEPING),
    Table("backfill_cursors", Role.BOOKKEEPING),
    Table("worker_metrics", Role.BOOKKEEPING),
    # Customers whose MRR and last payment an import left to be recomputed (handlers/billing.py).
    Table("billing_unsettled", Role.BOOKKEEPING, customer_column="customer_id"),
)

# The migrations' own bookkeeping: never erased.
MIGRATIONS_TABLE = "schema_migrations"

BY_NAME = {table.name: table for table in TABLES}

# What `replay --rebuild` wipes and refills.
STRIPE_DERIVED = tuple(t.name for t in TABLES if t.role is Role.STRIPE_DERIVED)
# What `erase` empties: everything but the migrations table.
ERASED = tuple(t.name for t in TABLES)
# What a customer deleted in `delete` mode takes with it.
OWNED_BY_CUSTOMER = tuple(t.name for t in TABLES if t.customer_column or t.parent)


def _owned_condition(table: Table) -> str:
    """Rows of `table` that belong to the customers of the CTE `gone`."""
    conditions = []
    if table.customer_column:
        conditions.append(f"{table.customer_column} IN (SELECT customer_id FROM gone)")
    for link in (table.parent, table.also_parent):
        if link is not None:
            column, parent = link
            conditions.append(f"{column} IN (SELECT id FROM {parent} WHERE {_owned_condition(BY_NAME[parent])})")
    return " OR ".join(conditions)


def purge_statement() -> str:
    """One statement deleting every row the customers in $1 own, counting them. Its parts share
    one snapshot, so a child finds its parent rows although the same statement deletes them."""
    parts = [
        f"gone_{t.name} AS (DELETE FROM {t.name} WHERE {_owned_condition(t)} RETURNING 1)"
        for t in TABLES
        if t.name in OWNED_BY_CUSTOMER
    ]
    total = " + ".join(f"(SELECT count(*) FROM gone_{name})" for name in OWNED_BY_CUSTOMER)
    return "WITH gone AS (SELECT unnest($1::text[]) AS customer_id),\n" + ",\n".join(parts) + f"\nSELECT {total}"
