"""Fuzzing POST /webhooks/stripe: any body, header, size, encoding, depth or number.

An unsigned request is refused (400 or 413) and stores nothing. A signed one is stored and
then shown by GET /api/events/{id}, or refused with a 4xx that says why; never a 5xx while
every server is up, never a traceback. Budget and long profile: tests/fuzzing.py.
"""

from __future__ import annotations

import json
import time
import uuid
from urllib.parse import quote

import pytest
from hypothesis import given
from hypothesis import strategies as st

from stripeline.http.body import WEBHOOK_MAX_BYTES as MAX_BODY_BYTES
from tests.conftest import WEBHOOK_SECRET
from tests.factories import body_of, ping_event, signed
from tests.fuzzing import assert_sound, fuzz_settings, fuzz_tally, odd_text, raw_numbers  # noqa: F401 - fuzz_tally by name

URL = "/webhooks/stripe"
pytestmark = pytest.mark.usefixtures("fuzz_tally")

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | odd_text,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(odd_text, children, max_size=4),
    max_leaves=15,
)


def nested(depth: int, leaf) -> object:
    value = leaf
    for n in range(depth):
        value = {"k": value} if n % 2 else [value]
    return value


@st.composite
def hostile_bodies(draw) -> bytes:
    kind = draw(st.sampled_from(["binary", "json", "deep", "size", "event", "text"]))
    if kind == "binary":
        return draw(st.binary(max_size=3000))
    if kind == "json":
        return json.dumps(draw(json_values)).encode()
    if kind == "deep":
        depth = draw(st.integers(min_value=50, max_value=3000))
        return b"[" * depth + b"]" * draw(st.sampled_from([depth, 0, depth - 1]))
    if kind == "size":
        return b"x" * draw(st.sampled_from([MAX_BODY_BYTES, MAX_BODY_BYTES + 1, 2 * MAX_BODY_BYTES]))
    if kind == "text":
        return draw(odd_text).encode("utf-8")
    return body_of(ping_event())


header_bytes = st.binary(max_size=200).map(lambda b: b.replace(b"\r", b"").replace(b"\n", b""))
signature_headers = st.one_of(
    st.none(),
    header_bytes,
    st.builds(
        lambda t, sigs: ",".join([f"t={t}", *(f"v1={s}" for s in sigs)]).encode("utf-8", "replace"),
        st.one_of(st.integers(), st.just(int(time.time())), odd_text),
        st.lists(st.one_of(odd_text, st.from_regex(r"[0-9a-f]{64}", fullmatch=True)), max_size=3),
    ),
)
extra_headers = st.dictionaries(
    st.sampled_from(["content-type", "content-encoding", "x-forwarded-for", "stripe-signature", "x-odd",
                     "transfer-encoding-ish", "accept"]),
    header_bytes,
    max_size=3,
)


@fuzz_settings("unsigned")
@given(body=hostile_bodies(), signature=signature_headers, extra=extra_headers)
async def test_unsigned_or_wrongly_signed_request_is_refused_and_stores_nothing(client, conn, body, signature, extra):
    before = await conn.fetchval("SELECT count(*) FROM stripe_events")
    headers = {**extra}
    if signature is not None:
        headers["stripe-signature"] = signature
    answer = await client.post(URL, content=body, headers=headers)
    assert_sound(answer)
    assert answer.status_code in (400, 413)
    assert await conn.fetchval("SELECT count(*) FROM stripe_events") == before


odd_ids = st.one_of(odd_text.map(lambda text: f"evt_{uuid.uuid4().hex[:8]}{text}"), st.integers(), st.none(), st.just(""))
references = st.one_of(st.none(), odd_text, st.builds(dict, id=odd_text), st.integers(), json_values)

# Each changes one field of a valid event; a signed example applies a few.
MUTATIONS = {
    "id": odd_ids,
    "type": odd_text,
    "created": st.one_of(st.integers(), st.booleans(), odd_text, st.floats(allow_nan=False, allow_infinity=False)),
    "api_version": st.one_of(st.none(), odd_text),
    "livemode": json_values,
    "account": st.one_of(st.just("acct_fuzz"), odd_text, st.integers()),
    "object": st.one_of(st.sampled_from(["event", "charge"]), json_values),
    "data": st.one_of(json_values, st.builds(dict, object=json_values)),
    "data.object.id": st.one_of(odd_text, st.integers(), st.none()),
    "data.object.object": st.one_of(odd_text, st.none()),
    "data.object.customer": references,
    "data.object.email": st.one_of(odd_text, st.integers(min_value=500, max_value=3000).map(lambda n: "e" * n)),
    "data.object.metadata": st.dictionaries(odd_text, odd_text, max_size=3),
    "data.object.extra": st.builds(nested, st.integers(min_value=0, max_value=300), json_values),
    "data.previous_attributes": json_values,
}


def customer_event() -> dict:
    payload = ping_event()
    payload["type"] = "customer.updated"
    payload["data"]["object"] = {"id": f"cus_{uuid.uuid4().hex[:10]}", "object": "customer", "email": "a@example.com",
                                 "metadata": {}, "amount": "NUMBER"}
    return payload


def mutate(payload: dict, path: str, value) -> None:
    *parents, last = path.split(".")
    target = payload
    for key in parents:
        if not isinstance(target, dict) or not isinstance(target.get(key), dict):
            return
        target = target[key]
    target[last] = value


@st.composite
def signed_events(draw) -> tuple[bytes, object]:
    """(raw body, the event id it carries): a valid event with a few fields fuzzed, as JSON text."""
    payload = customer_event()
    for path in draw(st.lists(st.sampled_from(sorted(MUTATIONS)), max_size=3, unique=True)):
        mutate(payload, path, draw(MUTATIONS[path]))
    number = draw(st.one_of(st.just("42"), raw_numbers))
    text = json.dumps(payload, ensure_ascii=draw(st.booleans())).replace('"NUMBER"', number)
    body = text.encode("utf-8", "surrogatepass")
    encoding = draw(st.sampled_from(["utf-8"] * 6 + ["bom", "nul", "spaces", "utf-16"]))
    body = {"utf-8": body, "bom": b"\xef\xbb\xbf" + body, "nul": body + b"\x00", "spaces": b" \n\t" + body + b"\n",
            "utf-16": text.encode("utf-16", "surrogatepass")}[encoding]
    return body, payload.get("id")


@fuzz_settings("signed")
@given(event=signed_events())
async def test_signed_event_of_any_shape_is_stored_and_shown_or_refused_with_a_reason(client, conn, event):
    body, event_id = event
    answer = await client.post(URL, content=body, headers=signed(body, WEBHOOK_SECRET)[1])
    assert_sound(answer)
    assert answer.status_code in (200, 400, 413)
    if answer.status_code != 200 or not isinstance(event_id, str) or "/" in event_id:
        return
    stored_id = event_id.replace("\x00", "\ufffd")  # PostgreSQL cannot hold U+0000 (stripeline.store.event_log)
    assert await conn.fetchval("SELECT count(*) FROM stripe_events WHERE id = $1", stored_id) == 1
    shown = await client.get(f"/api/events/{quote(stored_id, safe='')}")
    assert_sound(shown)
    assert shown.status_code == 200 and shown.json()["id"] == stored_id
