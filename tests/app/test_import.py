"""`stripeline import FILE`: events from a file stored as if received, then processed in order."""

from __future__ import annotations

import asyncio
import io
import re

import orjson
import pytest

from stripeline.processing.engine import crc32_lane_of
from stripeline.processing.event_files import Malformed, Unparsed, read_events
from stripeline.processing.importing import APPLY_LANES, ImportCounts, import_events
from stripeline.processing.runs import Tally
from stripeline.settings import Settings
from tests.app.replay_helpers import (
    billing_is_settled,
    billing_model,
    command,
    doubles,
    generated_history,
    stripeline,
    summary_lines,
    with_handlers,
)
from tests.factories import customer_object, event, new_id


def jsonl(*values) -> bytes:
    return b"\n".join(v if isinstance(v, bytes) else orjson.dumps(v) for v in values) + b"\n"


async def run_import(pool, settings, data: bytes, registry=None, routed: bool = False):
    """Import through the stand-in handlers (the tests read what they wrote); `routed`: as the
    command reads a file (events of a customer parsed by whoever applies them)."""
    tally, counts = Tally(), ImportCounts()
    await import_events(pool, settings, read_events(io.BytesIO(data), routed=routed), tally, counts, chunk_size=7,
                        registry=registry or doubles())
    return tally, counts


def nested(levels: int) -> dict:
    value: dict = {}
    for _ in range(levels):
        value = {"a": value}
    return value


def malformed_inside(customer: str, created: int) -> list[dict]:
    """Events of `customer` whose id, created and customer are fine and which are malformed deeper
    in: what only a whole parse finds (an overlong reference, a value nested too deep)."""
    overlong = {"id": customer, "object": "customer", "invoice_settings": {"default_payment_method": "pm_" + "x" * 300}}
    deep = {"id": customer, "object": "customer", "metadata": nested(70)}
    return [event("customer.updated", overlong, created=created), event("customer.updated", deep, created=created)]


async def assert_applied_once_in_stripe_order(conn, payloads, tally, counts) -> None:
    """Every event stored and applied once; the order-sensitive invoice log (the stand-in
    handlers append each invoice event's id) shows (created, id) order."""
    assert (counts.stored, counts.duplicates, counts.malformed) == (len(payloads), 0, 0)
    assert tally.failed == 0 and tally.applied + tally.skipped == len(payloads)
    model = await billing_model(conn)
    for invoice_id, _, description in model["invoices"]:
        events = [p for p in payloads if p["data"]["object"]["id"] == invoice_id]
        expected = sorted(events, key=lambda p: (p["created"], p["id"]))
        assert description == " ".join(p["id"] for p in expected)


async def test_import_stores_and_processes_a_history_as_live_processing_would(pool, conn, settings):
    payloads = generated_history(seed=11, customers=15)
    tally, counts = await run_import(pool, settings, jsonl(*payloads))

    await assert_applied_once_in_stripe_order(conn, payloads, tally, counts)
    statuses = {r["status"] for r in await conn.fetch("SELECT status FROM stripe_events")}
    assert statuses == {"processed", "ignored"}


async def test_a_chronological_file_is_applied_as_it_is_read_in_stripe_order(pool, conn, settings):
    # Sorted by `created` only (ids within a second in any order), as a chronological export
    # is: each chunk is applied while the next is stored, a second's events wait for the rest
    # of their second in the next chunk, and the order stays (created, id).
    payloads = sorted(generated_history(seed=12, customers=15), key=lambda p: p["created"])
    tally, counts = await run_import(pool, settings, jsonl(*payloads))

    await assert_applied_once_in_stripe_order(conn, payloads, tally, counts)
    assert await conn.fetchval("SELECT count(*) FROM stripe_events WHERE status = 'pending'") == 0


async def test_an_outage_in_one_lane_stops_the_import_and_the_other_lane_with_it(pool, conn, settings):
    # The lanes apply side by side: when PostgreSQL fails one, the other's open batch is
    # cancelled (rolled back) and the import ends with the outage, nothing left running. One
    # customer per lane, two events a second, so that the first chunk applies both lanes.
    customers: dict[int, str] = {}
    while len(customers) < APPLY_LANES:
        customer_id = new_id("cus")
        customers.setdefault(crc32_lane_of(customer_id, APPLY_LANES), customer_id)
    payloads = [event("customer.updated", customer_object(customers[lane]), created=1_700_000_000 + second)
                for second in range(5) for lane in sorted(customers)]
    cancelled: list[str] = []
    lane_0_in_its_batch = asyncio.Event()

    async def lane_handler(conn, record, ctx):
        if crc32_lane_of(record.customer_id, APPLY_LANES) == 0:
            lane_0_in_its_batch.set()
            try:
                await asyncio.Event().wait()  # lane 0 is slow: still in its batch when lane 1 fails
            except asyncio.CancelledError:
                cancelled.append(record.id)
                raise
        await asyncio.wait_for(lane_0_in_its_batch.wait(), 10)
        raise OSError("connection refused")  # PostgreSQL went away under lane 1

    registry = with_handlers(doubles(), {kind: lane_handler for kind in doubles().handlers})
    with pytest.raises(OSError):
        await asyncio.wait_for(run_import(pool, settings, jsonl(*payloads), registry=registry), 30)

    assert len(cancelled) == 1
    assert await conn.fetchval("SELECT count(*) FROM stripe_events WHERE status <> 'pending'") == 0


async def test_bad_lines_are_reported_by_number_and_skipped(pool, conn, settings):
    customer = new_id("cus")
    good = [
        event("customer.updated", {"id": customer, "object": "customer", "email": f"{n}@x.com"}, created=1_700_000_000 + n)
        for n in range(3)
    ]
    data = jsonl(
        good[0],
        b"{not json",
        {"object": "charge", "id": "ch_1"},
        good[1],
        b"",
        {"id": "evt_x", "object": "event", "type": "customer.updated", "created": "yesterday", "data": {"object": {}}},
        good[1],
        good[2],
    )
    items = list(read_events(io.BytesIO(data)))
    malformed = [i for i in items if isinstance(i, Malformed)]
    assert [m.where for m in malformed] == ["line 2", "line 3", "line 6"]
    assert "not valid JSON" in malformed[0].reason and "created" in malformed[2].reason

    tally, counts = await run_import(pool, settings, data)

    assert (counts.stored, counts.duplicates, counts.malformed) == (3, 1, 3)
    assert (tally.applied, tally.failed) == (3, 0)
    assert await conn.fetchval("SELECT email FROM customers WHERE id = $1", customer) == "2@x.com"


@pytest.mark.parametrize("order", ["chronological", "newest first"])
async def test_a_line_malformed_deep_inside_is_skipped_by_whoever_parses_it(pool, conn, settings, order):
    customer = new_id("cus")
    good = [
        event("customer.updated", {"id": customer, "object": "customer", "email": f"{n}@x.com"}, created=1_700_000_000 + n)
        for n in range(3)
    ]
    lines = [good[0], *malformed_inside(customer, 1_700_000_000), good[1], good[2]]
    data = jsonl(*(lines if order == "chronological" else lines[::-1]))
    # Read as the command reads a file, the bad lines pass for events to route: they are found
    # out where they are parsed (here: before they are stored, or applied in this process).
    items = list(read_events(io.BytesIO(data), routed=True))
    assert all(isinstance(item, Unparsed) for item in items)

    tally, counts = await run_import(pool, settings, data, routed=True)

    assert (counts.stored, counts.duplicates, counts.malformed) == (3, 0, 2)
    assert (tally.applied, tally.failed) == (3, 0)
    assert await conn.fetchval("SELECT count(*) FROM stripe_events") == 3
    assert await conn.fetchval("SELECT email FROM customers WHERE id = $1", customer) == "2@x.com"


async def test_events_already_stored_are_counted_as_duplicates_and_not_applied_again(pool, conn, settings):
    payloads = generated_history(seed=12, customers=3)
    await run_import(pool, settings, jsonl(*payloads))
    before = await billing_model(conn)

    tally, counts = await run_import(pool, settings, jsonl(*payloads))

    assert (counts.stored, counts.duplicates) == (0, len(payloads))
    assert tally.applied == 0 and tally.skipped == len(payloads)
    assert await billing_model(conn) == before  # the order-sensitive log did not grow


async def test_an_import_shows_in_the_sync_counts_and_history_as_received_and_processed(pool, conn, settings, client):
    # Most events of an import in order are stored already processed, by the batch that applies
    # them: they count as received and processed all the same.
    payloads = sorted(generated_history(seed=17, customers=6), key=lambda p: p["created"])
    tally, counts = await run_import(pool, settings, jsonl(*payloads))
    assert (counts.stored, tally.failed) == (len(payloads), 0)
    # The path under test: most events were stored by the batch that applied them.
    assert await conn.fetchval("SELECT count(*) FROM stripe_events WHERE received_at = processed_at") > len(payloads) / 2

    events = (await client.get("/api/sync")).json()["events"]
    assert events["received"] == len(payloads) and events["pending"] == events["failed"] == 0
    assert events["processed"] + events["ignored"] == len(payloads) and events["processed"] == tally.applied
    history = (await client.get("/api/sync/history", params={"minutes": 5})).json()["history"]
    totals = {key: sum(point[key] for point in history) for key in ("received", "processed", "failed")}
    assert totals == {"received": len(payloads), "processed": len(payloads), "failed": 0}


@pytest.mark.parametrize("stopped", [False, True], ids=["to-its-end", "stopped-after-a-chunk"])
async def test_an_import_leaves_mrr_and_last_payment_settled_even_when_stopped(pool, conn, settings, registry,
                                                                                stopped):
    # Its batches leave MRR and last payment for its end, which recomputes each customer once;
    # a Ctrl-C stops it after a chunk, and what was applied is settled all the same.
    payloads = sorted(generated_history(seed=18, customers=12), key=lambda p: p["created"])
    stop = asyncio.Event()
    if stopped:
        stop.set()
    tally, counts = Tally(), ImportCounts()
    await import_events(pool, settings, read_events(io.BytesIO(jsonl(*payloads))), tally, counts, chunk_size=20,
                        stop=stop, registry=registry)

    assert tally.interrupted == stopped and 0 < counts.stored <= len(payloads)
    assert await conn.fetchval("SELECT count(*) FROM customers WHERE mrr > 0") > 0
    assert await billing_is_settled(conn)


@pytest.mark.parametrize("shape", ["array", "list object", "pretty list object"])
def test_arrays_and_list_objects_are_read_too(shape):
    payloads = generated_history(seed=13, customers=2)
    document = payloads if shape == "array" else {"object": "list", "data": payloads, "has_more": False, "url": "/v1/events"}
    option = orjson.OPT_INDENT_2 if shape.startswith("pretty") else 0
    items = list(read_events(io.BytesIO(orjson.dumps(document, option=option))))
    assert [i.id for i in items] == [p["id"] for p in payloads]


def test_a_broken_pretty_document_is_reported_without_a_crash():
    items = list(read_events(io.BytesIO(b'{\n  "object": "list",\n  "data": [\n')))
    assert items and all(isinstance(i, Malformed) for i in items)


def test_a_byte_order_mark_does_not_cost_the_first_line():
    payloads = generated_history(seed=16, customers=1)
    items = list(read_events(io.BytesIO(b"\xef\xbb\xbf" + jsonl(*payloads))))
    assert [i.id for i in items] == [p["id"] for p in payloads]


def test_an_empty_file_imports_nothing():
    assert list(read_events(io.BytesIO(b"\n  \n"))) == []


@pytest.mark.parametrize("order", ["shuffled", "chronological"])
async def test_a_failing_event_is_left_for_retry_and_the_rest_imports(pool, conn, settings, order):
    # In order, the failing event's batch was to store it: it is stored, pending, with its failure.
    payloads = generated_history(seed=14, customers=4)
    if order == "chronological":
        payloads.sort(key=lambda p: p["created"])
    bad = next(p for p in payloads if p["type"] == "customer.subscription.updated")

    async def fails(conn, record, ctx):
        if record.id == bad["id"]:
            raise ValueError("handler bug")

    buggy = with_handlers(doubles(), {"customer.subscription.updated": fails})
    tally, counts = await run_import(pool, settings, jsonl(*payloads), buggy)

    assert tally.failed == 1 and tally.failures[0].startswith(bad["id"])
    assert tally.applied + tally.skipped == len(payloads) - 1
    assert (counts.stored, counts.duplicates) == (len(payloads), 0)
    assert await conn.fetchval("SELECT count(*) FROM stripe_events") == len(payloads)
    row = await conn.fetchrow("SELECT status, attempts, last_error FROM stripe_events WHERE id = $1", bad["id"])
    assert row["attempts"] == 1 and row["last_error"] == "ValueError: handler bug"
    assert row["status"] in ("pending", "failed")  # retried later with backoff, as a received event is


def test_import_command_reads_stdin_reports_lines_and_exits_nonzero(db_url):
    payloads = generated_history(seed=15, customers=2)

    done = stripeline("import", "-", env={"DATABASE_URL": db_url}, stdin=jsonl(payloads[0], b"garbage", *payloads[1:]))

    assert done.returncode == 1
    [summary] = summary_lines(done.stdout)
    pattern = rf"import: {len(payloads)} stored, 0 duplicates, 1 malformed, \d+ applied, \d+ skipped, 0 failed in [\d.]+ s"
    assert re.fullmatch(pattern, summary)
    assert "import: line 2: skipped, not valid JSON" in done.stderr.decode()


def test_import_command_names_a_missing_file(capsys):
    assert command(["import", "/no/such/file.jsonl"], Settings(database_url="postgresql://nobody@127.0.0.1:1/none")) == 2
    assert capsys.readouterr().err.strip() == "stripeline import: cannot read /no/such/file.jsonl: No such file or directory"


async def test_a_line_is_stored_as_it_was_read_and_a_nul_escape_as_the_web_stores_it(pool, conn, settings):
    customer = new_id("cus")
    spaced = event("customer.updated", {"id": customer, "object": "customer", "email": "a@x.com"}, created=1_700_000_000)
    nul = event("customer.updated", {"id": customer, "object": "customer", "email": "b\u0000@x.com"},
                created=1_700_000_001)
    line = orjson.dumps(spaced).replace(b'"email":', b'"email": ')  # not orjson's own spelling

    tally, counts = await run_import(pool, settings, jsonl(line, nul))

    assert (counts.stored, counts.malformed, tally.failed) == (2, 0, 0)
    assert await conn.fetchval("SELECT payload::text FROM stripe_events WHERE id = $1", spaced["id"]) == line.decode()
    assert await conn.fetchval("SELECT email FROM customers WHERE id = $1", customer) == "b\ufffd@x.com"


@pytest.mark.parametrize("shape", ["array", "list object"])
async def test_a_nul_escape_in_a_whole_document_is_stored_as_the_web_stores_it(pool, conn, settings, shape):
    customer = new_id("cus")
    nul = event("customer.updated", {"id": customer, "object": "customer", "email": "c\u0000@x.com"})
    document = [nul] if shape == "array" else {"object": "list", "data": [nul]}

    tally, counts = await run_import(pool, settings, orjson.dumps(document, option=orjson.OPT_INDENT_2))

    assert (counts.stored, counts.malformed, tally.failed) == (1, 0, 0)
    assert await conn.fetchval("SELECT email FROM customers WHERE id = $1", customer) == "c\ufffd@x.com"
