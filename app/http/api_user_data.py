"""Custom attributes and tags: the data users add to a customer themselves.

Stored in customer_attributes and customer_tags (sql/0003), apart from Stripe-derived rows,
so replay, import, backfill and `replay --rebuild` never touch them. Writes take the same
per-customer lock as event processing, so a customer being deleted in `delete` mode cannot
be given attributes in the same instant and keep them. Error messages name the problem and
the attribute, never a value (values may be personal data).
"""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from stripeline.http.body import API_BODY_MAX_BYTES, read_json
from stripeline.http.responses import BadInput, JSONResponse, error
from stripeline.processing.engine import lock_customers

MAX_ATTRIBUTES = 100
MAX_KEY_LENGTH = 100
MAX_VALUE_LENGTH = 1000
MAX_TAG_LENGTH = 100
MAX_TAGS = 100
MAX_TAG_BODY_BYTES = 4 * 1024


class BadRequest(BadInput):
    """The request body is not what this route accepts; the message says why (answered 400)."""


CUSTOMER_EXISTS = "SELECT EXISTS (SELECT 1 FROM customers WHERE id = $1)"
GET_ATTRIBUTES = "SELECT attributes FROM customer_attributes WHERE customer_id = $1"
PUT_ATTRIBUTES = """
INSERT INTO customer_attributes (customer_id, attributes) VALUES ($1, $2)
ON CONFLICT (customer_id) DO UPDATE SET attributes = EXCLUDED.attributes, updated_at = now()
"""
GET_TAGS = "SELECT coalesce(array_agg(tag ORDER BY tag), '{}') FROM customer_tags WHERE customer_id = $1"
COUNT_TAGS = "SELECT count(*) FROM customer_tags WHERE customer_id = $1"
ADD_TAG = "INSERT INTO customer_tags (customer_id, tag) VALUES ($1, $2) ON CONFLICT DO NOTHING RETURNING tag"
REMOVE_TAG = "DELETE FROM customer_tags WHERE customer_id = $1 AND tag = $2 RETURNING tag"


def _kind(value: Any) -> str:
    return {dict: "an object", list: "an array"}.get(type(value), type(value).__name__)


def validate_attributes(value: Any) -> dict[str, Any]:
    """A JSON object of at most MAX_ATTRIBUTES scalars (string, number, boolean or null)."""
    if not isinstance(value, dict):
        raise BadRequest(f'attributes must be a JSON object like {{"plan": "pro"}}, not {_kind(value)}')
    if len(value) > MAX_ATTRIBUTES:
        raise BadRequest(f"at most {MAX_ATTRIBUTES} attributes, got {len(value)}")
    for position, (key, item) in enumerate(value.items(), start=1):
        if not key.strip() or len(key) > MAX_KEY_LENGTH:
            raise BadRequest(f"attribute {position}: names must be 1 to {MAX_KEY_LENGTH} characters")
        if "\x00" in key or (isinstance(item, str) and "\x00" in item):
            # PostgreSQL's jsonb cannot hold U+0000.
            raise BadRequest(f"attribute {position}: names and values must not contain a NUL character")
        if isinstance(item, (dict, list)):
            raise BadRequest(
                f"attribute {key!r} is {_kind(item)}: values must be strings, numbers, booleans or null"
            )
        if isinstance(item, str) and len(item) > MAX_VALUE_LENGTH:
            raise BadRequest(f"attribute {key!r} is longer than {MAX_VALUE_LENGTH} characters")
    return value


def validate_tag(body: Any) -> str:
    """{"tag": "vip"}: 1 to MAX_TAG_LENGTH printable characters, no slash (tags go in URLs)."""
    if not isinstance(body, dict) or "tag" not in body:
        raise BadRequest('body must be a JSON object like {"tag": "vip"}')
    tag = body["tag"]
    if not isinstance(tag, str):
        raise BadRequest(f"tag must be a string, not {_kind(tag)}")
    tag = tag.strip()
    if not tag or len(tag) > MAX_TAG_LENGTH:
        raise BadRequest(f"tag must be 1 to {MAX_TAG_LENGTH} characters")
    if "/" in tag or not tag.isprintable():
        raise BadRequest("tag must not contain a slash or control characters")
    return tag


def _customer(request: Request) -> str:
    return request.path_params["customer_id"]


def _not_found() -> Response:
    return error(404, "no such customer")


async def get_attributes(request: Request) -> Response:
    customer_id = _customer(request)
    async with request.app.state.pool.acquire() as conn:
        if not await conn.fetchval(CUSTOMER_EXISTS, customer_id):
            return _not_found()
        attributes = await conn.fetchval(GET_ATTRIBUTES, customer_id)
    return JSONResponse({"customer": customer_id, "attributes": attributes or {}})


async def put_attributes(request: Request) -> Response:
    customer_id = _customer(request)
    attributes = validate_attributes(await read_json(request.scope, request.receive, API_BODY_MAX_BYTES))
    async with request.app.state.pool.acquire() as conn, conn.transaction():
        await lock_customers(conn, [customer_id])
        if not await conn.fetchval(CUSTOMER_EXISTS, customer_id):
            return _not_found()
        await conn.execute(PUT_ATTRIBUTES, customer_id, attributes)
    return JSONResponse({"customer": customer_id, "attributes": attributes})


async def get_tags(request: Request) -> Response:
    customer_id = _customer(request)
    async with request.app.state.pool.acquire() as conn:
        if not await conn.fetchval(CUSTOMER_EXISTS, customer_id):
            return _not_found()
        tags = await conn.fetchval(GET_TAGS, customer_id)
    return JSONResponse({"customer": customer_id, "tags": tags})


async def add_tag(request: Request) -> Response:
    customer_id = _customer(request)
    tag = validate_tag(await read_json(request.scope, request.receive, MAX_TAG_BODY_BYTES))
    async with request.app.state.pool.acquire() as conn, conn.transaction():
        await lock_customers(conn, [customer_id])
        if not await conn.fetchval(CUSTOMER_EXISTS, customer_id):
            return _not_found()
        if await conn.fetchval(COUNT_TAGS, customer_id) >= MAX_TAGS:
            tags = await conn.fetchval(GET_TAGS, customer_id)
            if tag not in tags:
                return error(400, f"a customer has at most {MAX_TAGS} tags")
        added = await conn.fetchval(ADD_TAG, customer_id, tag)
        tags = await conn.fetchval(GET_TAGS, customer_id)
    return JSONResponse({"customer": customer_id, "tags": tags}, status_code=201 if added else 200)


async def remove_tag(request: Request) -> Response:
    customer_id = _customer(request)
    async with request.app.state.pool.acquire() as conn, conn.transaction():
        await lock_customers(conn, [customer_id])
        if not await conn.fetchval(CUSTOMER_EXISTS, customer_id):
            return _not_found()
        removed = await conn.fetchval(REMOVE_TAG, customer_id, request.path_params["tag"])
        tags = await conn.fetchval(GET_TAGS, customer_id)
    return JSONResponse({"customer": customer_id, "tags": tags, "removed": removed is not None})


ROUTES: list[Route] = [
    Route("/api/customers/{customer_id}/attributes", get_attributes, methods=["GET"]),
    Route("/api/customers/{customer_id}/attributes", put_attributes, methods=["PUT"]),
    Route("/api/customers/{customer_id}/tags", get_tags, methods=["GET"]),
    Route("/api/customers/{customer_id}/tags", add_tag, methods=["POST"]),
    Route("/api/customers/{customer_id}/tags/{tag}", remove_tag, methods=["DELETE"]),
]
