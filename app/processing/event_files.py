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
from typing import Any, BinaryIO

import orjson

from stripeline.model.events import EventRecord, InvalidEvent, event_from_payload, without_nul_escapes


@dataclass(frozen=True)
class Malformed:
    """Something in the file that is not a Stripe event: where it is and why."""

    where: str
    reason: str


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


def _lines(lines: Iterable[bytes]) -> Iterator[EventRecord | Malformed]:
    for number, line in enumerate(lines, 1):
        # U+0000 as the web stores it (its text is what a line is stored as).
        text = without_nul_escapes(line.strip())
        if not text:
            continue
        try:
            value = orjson.loads(text)
        except orjson.JSONDecodeError:
            yield Malformed(f"line {number}", "not valid JSON")
            continue
        yield from _values(value, f"line {number}", text)


def read_events(stream: BinaryIO) -> Iterator[EventRecord | Malformed]:
    """Events and malformed entries of a file, in file order, reading JSON Lines as a stream."""
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
            yield from _lines(itertools.chain(head, stream))
            return
    text = without_nul_escapes(b"".join(head) + stream.read())
    try:
        document = orjson.loads(text)
    except orjson.JSONDecodeError:
        # Not one document either: report line by line, so good lines still count.
        yield from _lines(text.splitlines())
        return
    yield from _values(document, "document")
