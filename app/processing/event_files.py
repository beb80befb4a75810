"""Reading files of Stripe events for `stripeline import`.

Accepted: JSON Lines (one event per line, as `stripe events list ... | jq -c '.data[]'` gives),
a JSON array of events, or a list object as the API and `stripe events list` print it
(`{"object": "list", "data": [...]}`, on one line or pretty-printed). A line or item that is
not a valid event is reported with where it was and skipped; it never stops the rest.
"""

from __future__ import annotations

import codecs
import itertools
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, BinaryIO

import msgspec
import orjson

from stripeline.model.events import (
    EventRecord,
    InvalidEvent,
    customer_of,
    event_from_payload,
    is_stripe_id,
    is_timestamp,
    without_nul_escapes,
)


@dataclass(frozen=True)
class Malformed:
    """Something in the file that is not a Stripe event: where it is and why."""

    where: str
    reason: str


@dataclass(frozen=True, slots=True)
class Unparsed:
    """A line holding an event of a customer, read only as far as an import routes it: its id,
    `created` and customer, found valid. The rest is parsed and checked by whoever applies it
    (`parsed`), which may still find the line malformed (a value nested too deep, an overlong
    id inside): a lane process, which parses its events anyway, so that the reading process
    does not parse them too."""

    id: str
    created: datetime
    customer_id: str
    raw: bytes
    line: int

    @property
    def where(self) -> str:
        return f"line {self.line}"


class _RoutedObject(msgspec.Struct):
    id: Any = None
    object: Any = None
    customer: Any = None

    def get(self, key: str, default: Any = None) -> Any:
        """As a dict's: `customer_of` reads it as it reads a whole object."""
        return getattr(self, key, default)


class _RoutedData(msgspec.Struct):
    object: _RoutedObject


class _Routed(msgspec.Struct):
    id: Any = None
    created: Any = None
    data: _RoutedData | None = None


# Decodes only what routing needs; msgspec checks the rest is JSON without building it: 3-4
# microseconds for a real-sized event, against 13-20 for orjson's whole payload and 12 more for
# the checks (event_from_payload).
_routing = msgspec.json.Decoder(_Routed)


def _unparsed(text: bytes, number: int) -> Unparsed | None:
    """The line's event as an Unparsed, when it is an event of a customer whose id, created and
    customer are valid; None for anything else (parsed whole, as before)."""
    try:
        event = _routing.decode(text)
    except msgspec.DecodeError:
        return None
    if event.data is None or not is_stripe_id(event.id) or not is_timestamp(event.created):
        return None
    customer = customer_of(event.data.object)
    if not is_stripe_id(customer):
        return None
    return Unparsed(event.id, datetime.fromtimestamp(event.created, timezone.utc), customer, text, number)


def parsed(item: EventRecord | Unparsed) -> EventRecord | Malformed:
    """An event as an EventRecord, its payload parsed and checked (or why it is malformed)."""
    if isinstance(item, EventRecord):
        return item
    return parsed_text(item.raw, item.where)


def parsed_text(text: bytes, where: str) -> EventRecord | Malformed:
    """The event in one JSON text (one object), or why it is malformed."""
    try:
        return _parse(orjson.loads(text), where, text)
    except orjson.JSONDecodeError:
        return Malformed(where, "not valid JSON")


def _parse(value: Any, where: str, raw: bytes | None = None) -> EventRecord | Malformed:
    """An event, kept with the JSON text it was read from when that is one line of its own: it
    is stored as received, as a webhook's body is, rather than encoded again."""
    try:
        return event_from_payload(value, raw)
    except InvalidEvent as problem:
        return Malformed(where, str(problem))


def _is_list_object(value: Any) -> bool:
    return isinstance(value, dict) and value.get("object") == "list" and isinstance(value.get("data"), list)


def _values(value: Any, where: str, raw: bytes | None = None) -> Iterator[EventRecord | Malformed]:
    """One decoded JSON value (`raw`: its text, for a line): an event, an array of events, or a
    list object of events."""
    if isinstance(value, list) or _is_list_object(value):
        items = value if isinstance(value, list) else value["data"]
        for number, item in enumerate(items, 1):
            yield _parse(item, f"{where} item {number}")
    else:
        yield _parse(value, where, raw)


def _lines(lines: Iterable[bytes], routed: bool = False) -> Iterator[EventRecord | Unparsed | Malformed]:
    for number, line in enumerate(lines, 1):
        # U+0000 as the web stores it (its text is what a line is stored as).
        text = without_nul_escapes(line.strip())
        if not text:
            continue
        if routed and (event := _unparsed(text, number)) is not None:
            yield event
            continue
        try:
            value = orjson.loads(text)
        except orjson.JSONDecodeError:
            yield Malformed(f"line {number}", "not valid JSON")
            continue
        yield from _values(value, f"line {number}", text)


def read_events(stream: BinaryIO, *, routed: bool = False) -> Iterator[EventRecord | Unparsed | Malformed]:
    """Events and malformed entries of a file, in file order, reading JSON Lines as a stream.
    `routed`: a line holding an event of a customer may come as an Unparsed (an import's)."""
    head = []
    for line in stream:
        # Editors on Windows start UTF-8 files with a byte order mark; JSON has no place for it.
        head.append(line.removeprefix(codecs.BOM_UTF8) if not head else line)
        if line.strip():
            break
    if not head or not head[-1].strip():
        return
    first = head[-1].strip()
    if first.startswith(b"{"):
        try:
            orjson.loads(first)
        except orjson.JSONDecodeError:
            pass  # an object spread over several lines: a pretty-printed document
        else:
            yield from _lines(itertools.chain(head, stream), routed)
            return
    text = without_nul_escapes(b"".join(head) + stream.read())
    try:
        document = orjson.loads(text)
    except orjson.JSONDecodeError:
        # Not one document either: report line by line, so good lines still count.
        yield from _lines(text.splitlines())
        return
    yield from _values(document, "document")
