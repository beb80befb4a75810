"""The write buffer: handlers stage row snapshots, one flush per batch writes them.

Handlers are projections: an event becomes row snapshots (pure Python), staged on
`ctx.writes`. `flush` (run by `apply_events` before the refreshers) chooses one snapshot per
(table, key) and writes each table with one multi-row upsert, so a batch of hundreds of
events costs a handful of round trips, not several per event.

Versions. Every row keeps (event_created, event_rank, event_id) of the event that wrote it;
a row changes only for a newer version. event_rank (see app/model/ordering.py) orders the
events of one object inside one second; a placeholder has event_created '-infinity'; rank 0
marks a snapshot embedded in another object's payload, so an object's own event beats it.

Ties. For tables with `evidence`, the events of one object in one second are ordered by
app/model/ordering.py. Inside a batch that needs no reading. When the stored row comes from
the same second as the batch's snapshot (and the batch brings more than that very event),
the upsert reports it; the flush then orders every stored event of that object in that second
(pending ones included) with the batch's, and writes the winner's snapshot, even when the
winner is an event processed earlier. Once all of a second's events are in, the row is a
function of that set, whatever the order and grouping they came in. Other tables (prices, products,
payments) use the context-free order (created, rank, event id). Rows of a customer are only
written under that customer's advisory lock (taken by stripeline.processing.engine); shared rows are
upserted in key order, table by table, with the version guard inside the statement.

Deleted objects. A deleted row (an invoice, a discount, a price) keeps its version and a terminal
flag; no later or older event revives it. A customer deleted in Stripe is not a row flag but a
policy laid over its rows after each batch (handlers/deletion.py).
"""

from __future__ import annotations

import time
import typing
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from typing import Annotated, Any

import asyncpg
import orjson

from stripeline.logging import log
from stripeline.model.events import EventRecord, record_from_row
from stripeline.model.locks import customer_lock_key
from stripeline.model.ordering import Candidate, last_of, restore

# The version of a placeholder row (written as '-infinity').
NEG_INFINITY = datetime.min.replace(tzinfo=timezone.utc)

# Every stored event of the tied objects in the tied seconds, but those already in hand.
LOAD_TIES = """
SELECT e.id, e.type, e.account, e.livemode, e.api_version, e.created, e.object_type, e.object_id,
       e.customer_id, e.payload
FROM unnest($1::text[], $2::timestamptz[]) AS tie(object_id, created)
JOIN stripe_events AS e ON e.object_id = tie.object_id AND e.created = tie.created
WHERE e.type = ANY($3::text[]) AND NOT (e.id = ANY($4::text[]))
"""

# The customers of invoices named by invoice payments (whose payload has no customer), to be
# touched. Every touched customer must be locked by this transaction; the lock is only tried:
# waiting for it while holding other customers' locks could deadlock. A customer locked
# elsewhere loses nothing: an invoice payment changes no derived state that the invoice's own
# events do not (the invoice carries its paid amount and time).
LOCK_INVOICE_CUSTOMERS = f"""
SELECT customer_id, pg_try_advisory_xact_lock({customer_lock_key("customer_id")}) AS locked
FROM (SELECT DISTINCT customer_id FROM invoices
      WHERE id = ANY($1::text[]) AND customer_id IS NOT NULL AND NOT (customer_id = ANY($2::text[]))
      ORDER BY customer_id) AS owners
"""


@dataclass(frozen=True)
class Projection:
    """The event types of one Stripe object, what each means to us, and the handler that
    applies them. Each handler module declares its own; handlers/__init__.py gathers them."""

    events: Mapping[str, str]
    handler: Any  # stripeline.processing.engine.Handler


# The PostgreSQL type of each field of a row type (a NamedTuple), as its annotation says.
# jsonb values travel as JSON text and are cast in the statement.
Text = Annotated[str | None, "text"]
Bool = Annotated[bool | None, "bool"]
Timestamp = Annotated[datetime | None, "timestamptz"]
BigInt = Annotated[int | None, "int8"]
Int = Annotated[int | None, "int4"]
Json = Annotated[Any, "jsonb"]

# Every written row keeps the version of the event that wrote it.
VERSION_COLUMNS = (("event_created", "timestamptz"), ("event_rank", "int2"), ("event_id", "text"))


def columns_of(row_type: type) -> tuple[tuple[str, str], ...]:
    """(name, PostgreSQL type) of each field of a NamedTuple row type, in order."""
    hints = typing.get_type_hints(row_type, include_extras=True)
    return tuple((name, hints[name].__metadata__[0]) for name in row_type._fields)


def _unnest(columns: tuple[tuple[str, str], ...], first: int, alias: str) -> str:
    arrays = ", ".join(f"${first + i}::{'text' if kind == 'jsonb' else kind}[]" for i, (_, kind) in enumerate(columns))
    return f"unnest({arrays}) AS {alias}({', '.join(name for name, _ in columns)})"


def _names(columns: tuple[tuple[str, str], ...]) -> str:
    return ", ".join(name for name, _ in columns)


@dataclass(frozen=True, eq=False)
class Table:
    """How one table is written: its row type, its upsert and, for evidence tables, how to
    re-project ties.

    The upsert is written once as a template whose column lists and `unnest` parameters are
    derived from the row type: {incoming} (the rows and their versions as `i`), {columns} and
    {values} (what INSERT writes, jsonb cast), {updates} (every column but the key and the
    version, from `excluded`), and for a child row type (subscription items) {children} (as
    `it`), {child_ids} (the array of child keys), {child_columns}, {child_updates} and
    {child_changed}; evidence tables take {settled} last (a boolean: an equal version with
    another event id may be replaced) and return the keys whose stored version ties with the
    incoming one.
    """

    name: str
    row: type
    # Fixed flush order: concurrent batches lock shared rows table by table, in key order.
    order: int
    template: str
    # Rows no customer's lock covers (the catalog): written by a batch's last flush only, so
    # that a transaction locks them once, in that order; a mid-batch flush (a deletion's) that
    # wrote them too could lock some, then wait for others another batch holds while that one
    # waits for these: a deadlock, each costing a second of `deadlock_timeout` and a retry.
    shared: bool = False
    # Rows written with each row and replaced with it (subscription items), and their table.
    child: type | None = None
    child_table: str = ""
    # Own event types whose same-second ties are settled by app/model/ordering.py, and the
    # projection that turns such an event into this table's snapshot.
    evidence_types: frozenset[str] = frozenset()
    project: Callable[[EventRecord], Snapshot] | None = None
    upsert: str = field(init=False)
    # Positions of the jsonb fields of the row type, encoded to text before they are sent.
    jsonb_positions: tuple[int, ...] = field(init=False)

    def __post_init__(self) -> None:
        own = columns_of(self.row)
        written = own + VERSION_COLUMNS
        children = columns_of(self.child) if self.child is not None else ()
        after_rows = len(written) + 1
        parts = {
            "incoming": _unnest(written, 1, "i"),
            "columns": _names(written),
            "values": ", ".join(
                f"{name}::jsonb" if kind == "jsonb" else "coalesce(event_created, '-infinity')"
                if name == "event_created" else name
                for name, kind in written
            ),
            "updates": ", ".join(f"{name} = excluded.{name}" for name, _ in written[1:]),
            "children": _unnest(children, after_rows, "it") if children else "",
            "child_ids": f"${after_rows}::text[]",
            "child_columns": _names(children),
            "child_updates": ", ".join(f"{name} = excluded.{name}" for name, _ in children[1:]),
            "child_changed": (
                f"({', '.join(f'{self.child_table}.{name}' for name, _ in children[1:])}) IS DISTINCT FROM "
                f"({', '.join(f'excluded.{name}' for name, _ in children[1:])})" if children else ""
            ),
            "settled": f"${after_rows + len(children)}::bool",
        }
        object.__setattr__(self, "upsert", self.template.format(**parts))
        object.__setattr__(self, "jsonb_positions", tuple(i for i, (_, kind) in enumerate(own) if kind == "jsonb"))

    @property
    def evidence(self) -> bool:
        return bool(self.evidence_types)


@dataclass(slots=True)
class Snapshot:
    """A row as one event shows it, with that event's version."""

    table: Table
    key: str
    created: datetime
    rank: int
    event_id: str | None
    row: tuple  # the table's row type
    children: tuple = ()  # rows of its child row type
    # The object's own event, kept for evidence when ties are settled.
    event: EventRecord | None = None

    @property
    def version(self) -> tuple[datetime, int, str]:
        return (self.created, self.rank, self.event_id or "")

    def candidate(self) -> Candidate:
        event = self.event
        assert event is not None, "only an object's own events are ordered by evidence"
        previous = event.previous_attributes
        before = None
        if previous:
            data = {**event.payload["data"], "object": restore(event.object, previous)}
            earlier = self.table.project(replace(event, payload={**event.payload, "data": data}))
            before = (earlier.row, earlier.children) if earlier is not None else None
        return Candidate(event.id, self.rank, event.object, previous, (self.row, self.children), before)


def own_snapshot(table: Table, event: EventRecord, key: str, rank: int, row: tuple, children: tuple = ()) -> Snapshot:
    return Snapshot(table, key, event.created, rank, event.id, row, children, event)


def embedded_snapshot(table: Table, event: EventRecord, key: str, row: tuple, children: tuple = ()) -> Snapshot:
    """A snapshot of an object found inside another object's payload (rank 0)."""
    return Snapshot(table, key, event.created, 0, event.id, row, children)


def placeholder_snapshot(table: Table, key: str, row: tuple) -> Snapshot:
    """A row known only by reference: any real event overwrites it."""
    return Snapshot(table, key, NEG_INFINITY, 0, None, row)


@dataclass
class WriteBuffer:
    """Snapshots staged by the handlers of one batch, and what the flush learned."""

    _staged: dict[Table, dict[str, list[Snapshot]]] = field(default_factory=dict)
    # Invoices whose customer must be touched (named by payloads that lack the customer).
    _invoice_customers: set[str] = field(default_factory=set)
    rows_flushed: int = 0

    def touch_customer_of_invoice(self, invoice_id: str | None) -> None:
        if invoice_id:
            self._invoice_customers.add(invoice_id)

    def stage(self, snapshot: Snapshot | None) -> None:
        """Keep the snapshot if it is of the newest second seen for its row (all of that
        second's: the evidence rule reads them together)."""
        if snapshot is None:
            return
        entries = self._staged.setdefault(snapshot.table, {})
        held = entries.get(snapshot.key)
        if held is None or snapshot.created > held[0].created:
            entries[snapshot.key] = [snapshot]
        elif snapshot.created == held[0].created and all(s.event_id != snapshot.event_id for s in held):
            held.append(snapshot)

    def stage_all(self, snapshots: Iterable[Snapshot | None]) -> None:
        for snapshot in snapshots:
            self.stage(snapshot)

    async def flush(self, conn: asyncpg.Connection, ctx: Any, *, shared: bool = True) -> None:
        """Write every staged snapshot that is newer than its row; safe to call repeatedly.
        With `shared=False` (mid-batch) the shared tables' snapshots stay staged for the last flush."""
        staged, self._staged = self._staged, {}
        if not shared:
            self._staged = {table: entries for table, entries in staged.items() if table.shared}
            staged = {table: entries for table, entries in staged.items() if not table.shared}
        invoices, self._invoice_customers = self._invoice_customers, set()
        started = time.perf_counter()
        ties: list[tuple[Table, list[Snapshot]]] = []
        for table in sorted(staged, key=lambda t: t.order):
            chosen = {key: _choose(table, held) for key, held in staged[table].items()}
            same_second = await _write(conn, table, list(chosen.values()), settled=False)
            self.rows_flushed += len(chosen)
            for key, stored_event_id in same_second:
                held = staged[table][key]
                # The stored row was decided from the events of this second seen then; unless
                # this batch only repeats that very event, decide again from all of them.
                if stored_event_id != chosen[key].event_id or sum(1 for s in held if s.rank > 0) > 1:
                    ties.append((table, held))
        if ties:
            await _settle_ties(conn, ties)
        await _replan_as_tables_grow(conn, sum(len(entries) for entries in staged.values()))
        if invoices:
            await self._touch_invoice_customers(conn, ctx, invoices)
        if staged:
            log.debug(
                "billing_rows_flushed",
                rows=sum(len(entries) for entries in staged.values()),
                ties=len(ties),
                duration_ms=round((time.perf_counter() - started) * 1000, 2),
            )

    async def _touch_invoice_customers(self, conn: asyncpg.Connection, ctx: Any, invoice_ids: set[str]) -> None:
        # Runs after the invoices of this flush were written, so the query sees them too.
        rows = await conn.fetch(LOCK_INVOICE_CUSTOMERS, sorted(invoice_ids), sorted(ctx.touched))
        for row in rows:
            if row["locked"]:
                ctx.touched.add(row["customer_id"])


def _choose(table: Table, held: list[Snapshot]) -> Snapshot:
    """The batch's snapshot for one row: by evidence among the object's own events of its
    newest second, else the newest version."""
    own = [s for s in held if s.rank > 0] if table.evidence else []
    if not own:
        return max(held, key=lambda s: s.version)
    top = max(s.rank for s in own)
    if sum(1 for s in own if s.rank == top) == 1:  # rank alone decides: no evidence to read
        return next(s for s in own if s.rank == top)
    winner = last_of([s.candidate() for s in own]).id
    return next(s for s in own if s.event_id == winner)


async def _settle_ties(conn: asyncpg.Connection, ties: list[tuple[Table, list[Snapshot]]]) -> None:
    """Order each tied object's events of that second by evidence and write the last one."""
    types = sorted({t for table, _ in ties for t in table.evidence_types})
    in_hand = [s.event_id for _, held in ties for s in held]
    rows = await conn.fetch(LOAD_TIES, [held[0].key for _, held in ties], [held[0].created for _, held in ties],
                            types, in_hand)
    loaded: dict[tuple[str, datetime], list[EventRecord]] = {}
    for row in rows:
        loaded.setdefault((row["object_id"], row["created"]), []).append(record_from_row(row))
    winners: dict[Table, list[Snapshot]] = {}
    for table, held in ties:
        key = held[0].key
        snapshots = {s.event_id: s for s in held if s.rank > 0}
        for event in loaded.get((key, held[0].created), ()):
            if event.type not in table.evidence_types:
                continue
            try:
                snapshot = table.project(event)
            except Exception as error:  # noqa: BLE001 - one unreadable old event must not block the rest
                log.warning("tie_event_unreadable", event_id=event.id, error=type(error).__name__)
                continue
            if snapshot is not None and snapshot.key == key:
                snapshots[event.id] = snapshot
        winner = last_of([s.candidate() for s in snapshots.values()]).id
        winners.setdefault(table, []).append(snapshots[winner])
    for table in sorted(winners, key=lambda t: t.order):
        await _write(conn, table, winners[table], settled=True)


# PostgreSQL caches a prepared statement's plan, and the plan made while the model was a few
# rows big (a fresh install, a `replay --rebuild`) scans whole tables once they are large:
# replay went quadratic. Each connection drops its cached plans whenever the rows it has
# written double (from REPLAN_FROM on), so plans are always made for tables of about the
# size they run on, at a cost of a few replannings in all.
REPLAN_FROM = 1024
_rows_by_connection: dict[int, int] = {}


async def _replan_as_tables_grow(conn: asyncpg.Connection, rows: int) -> None:
    if not rows:
        return
    pid = conn.get_server_pid()
    before = _rows_by_connection.get(pid, 0)
    after = _rows_by_connection[pid] = before + rows
    if after >= REPLAN_FROM and after.bit_length() > before.bit_length():
        await conn.execute("DISCARD PLANS")


def _json(value: Any) -> str | None:
    return None if value is None else orjson.dumps(value).decode()


async def _write(
    conn: asyncpg.Connection, table: Table, snapshots: list[Snapshot], *, settled: bool
) -> list[tuple[str, str]]:
    """One upsert for the table; for evidence tables, returns (key, stored event id) of the
    rows stored from the same second as their incoming snapshot."""
    snapshots.sort(key=lambda s: s.key)
    columns = [list(column) for column in zip(*(s.row for s in snapshots))]
    for position in table.jsonb_positions:
        columns[position] = [_json(v) for v in columns[position]]
    columns.append([None if s.created is NEG_INFINITY else s.created for s in snapshots])
    columns.append([s.rank for s in snapshots])
    columns.append([s.event_id for s in snapshots])
    if table.child is not None:
        children = [child for s in snapshots for child in s.children]
        if children:
            columns.extend(list(column) for column in zip(*children))
        else:
            columns.extend([] for _ in table.child._fields)
    if not table.evidence:
        await conn.execute(table.upsert, *columns)
        return []
    return [(row[0], row[1]) for row in await conn.fetch(table.upsert, *columns, settled)]
