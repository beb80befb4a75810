"""GET /api/openapi.json: an OpenAPI 3.1 document of every /api route, built from the routes.

Paths, methods and path parameters come from the app's own routes; what a route takes and
answers (query parameters, body, answer schemas) is described below, keyed by its endpoint
function. Building the document fails for a route without a description or a description
without a route, and tests/app/test_openapi.py checks it against the routes and runs
schemathesis against it, so the two cannot drift apart.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from importlib import metadata
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from stripeline.http import api, api_customers, api_events, api_segments, api_user_data
from stripeline.http.api_input import MAX_TEXT
from stripeline.http.responses import JSONResponse

Schema = dict[str, Any]

MEANINGS = {
    400: "malformed input; the message says what to fix",
    401: "missing or wrong bearer token",
    404: "no such customer, segment or event",
    409: "the event is not failed",
    413: "body too large",
    503: "PostgreSQL unreachable; try again",
}


def ref(name: str) -> Schema:
    return {"$ref": f"#/components/schemas/{name}"}


def maybe(schema: Schema) -> Schema:
    return {"anyOf": [schema, {"type": "null"}]}


def obj(required: tuple[str, ...] = (), **properties: Schema) -> Schema:
    return {"type": "object", "required": list(required), "properties": properties}


STRING = {"type": "string"}
TIME = {"type": "string", "format": "date-time"}
INTEGER = {"type": "integer"}
BOOLEAN = {"type": "boolean"}
STRINGS = {"type": "array", "items": STRING}
NEXT = maybe({"type": "string", "description": "pass back as `after` for the next page"})
STATUS = {"type": "string", "enum": ["pending", "processed", "ignored", "failed"]}
TIME_INPUT = {
    "anyOf": [{"type": "string", "description": "ISO 8601"}, {"type": "number", "description": "Unix seconds"}]
}

SCHEMAS: dict[str, Schema] = {
    "Error": obj(("error",), error=STRING),
    "Sync": obj(
        ("status", "events", "oldest_pending_age_seconds", "last_event_at", "customers_in_sync"),
        status={"type": "string", "enum": ["healthy", "lagging", "failing"]},
        events=obj(
            ("received", "processed", "ignored", "failed", "pending"),
            received=INTEGER,
            processed=INTEGER,
            ignored=INTEGER,
            failed=INTEGER,
            pending=INTEGER,
        ),
        oldest_pending_age_seconds=maybe({"type": "number"}),
        last_event_at=maybe(TIME),
        customers_in_sync=INTEGER,
        rebuild=maybe({"type": "object"}),
    ),
    "SyncHistory": obj(
        ("interval_seconds", "history"),
        interval_seconds=INTEGER,
        history={
            "type": "array",
            "items": obj(
                ("at", "received", "processed", "failed"), at=TIME, received=INTEGER, processed=INTEGER, failed=INTEGER
            ),
        },
    ),
    "EventSummary": obj(
        ("id", "type", "status", "attempts", "last_error", "created", "received_at", "customer"),
        id=STRING,
        type=STRING,
        status=STATUS,
        attempts=INTEGER,
        last_error=maybe(STRING),
        created=TIME,
        received_at=TIME,
        processed_at=maybe(TIME),
        customer=maybe(STRING),
        customer_name=maybe(STRING),
        customer_email=maybe(STRING),
        object_id=maybe(STRING),
    ),
    "EventPage": obj(("events", "next"), events={"type": "array", "items": ref("EventSummary")}, next=NEXT),
    "Event": obj(
        ("id", "type", "status", "attempts", "last_error", "received_at", "processed_at", "payload"),
        id=STRING,
        type=STRING,
        status=STATUS,
        attempts=INTEGER,
        last_error=maybe(STRING),
        received_at=TIME,
        processed_at=maybe(TIME),
        payload={"type": "object", "description": "the Stripe event as received"},
    ),
    "RetryFilter": {
        **obj(
            type={"type": "string", "description": "an event type or a glob such as invoice.*"},
            customer=STRING,
            since=TIME_INPUT,
            until=TIME_INPUT,
        ),
        "additionalProperties": False,
    },
    "CustomerSummary": obj(
        ("id", "email", "name", "mrr"),
        id=STRING,
        email=maybe(STRING),
        name=maybe(STRING),
        mrr=INTEGER,
        currency=maybe(STRING),
        created_at=maybe(TIME),
        delinquent=maybe(BOOLEAN),
        deleted_in_stripe=BOOLEAN,
    ),
    "Customer": obj(
        ("id", "email", "name", "mrr", "subscriptions", "segments", "tags", "attributes"),
        id=STRING,
        email=maybe(STRING),
        name=maybe(STRING),
        phone=maybe(STRING),
        description=maybe(STRING),
        address=maybe({"type": "object"}),
        delinquent=maybe(BOOLEAN),
        currency=maybe(STRING),
        mrr=INTEGER,
        created_at=maybe(TIME),
        deleted_in_stripe=BOOLEAN,
        last_activity_at=maybe(TIME),
        last_synced_at=maybe(TIME),
        last_payment=maybe(obj(("amount", "currency", "at"), amount=INTEGER, currency=STRING, at=maybe(TIME))),
        subscriptions={
            "type": "array",
            "items": obj(
                ("id", "status", "items"),
                id=STRING,
                status=STRING,
                items={"type": "array", "items": {"type": "object"}},
            ),
        },
        segments=STRINGS,
        tags=STRINGS,
        attributes={"type": "object"},
    ),
    "Member": obj(
        ("id", "name", "email", "mrr", "entered_at"),
        id=STRING,
        name=maybe(STRING),
        email=maybe(STRING),
        mrr=maybe(INTEGER),
        currency=maybe(STRING),
        deleted_in_stripe=maybe(BOOLEAN),
        entered_at=TIME,
    ),
    "Activity": {
        "oneOf": [obj(("customer",), customer=STRING, at=TIME_INPUT), obj(("email",), email=STRING, at=TIME_INPUT)]
    },
}


def query(name: str, description: str, schema: Schema | None = None) -> Schema:
    return {"name": name, "in": "query", "required": False, "description": description, "schema": schema or STRING}


def limit(maximum: int) -> Schema:
    return query("limit", f"page size, 1-{maximum}", {"type": "integer", "minimum": 1, "maximum": maximum})


AFTER = query("after", "the `next` cursor of the previous page")


async def serve(request: Request) -> Response:
    state = request.app.state
    if getattr(state, "openapi", None) is None:
        state.openapi = document(request.app.routes)
    return JSONResponse(state.openapi)


@dataclass(frozen=True)
class Operation:
    summary: str
    answer: Schema
    statuses: tuple[int, ...] = (200,)
    parameters: tuple[Schema, ...] = ()
    body: Schema | None = None
    # Besides 401 (no token) and 503 (PostgreSQL unreachable), which every route may answer,
    # and 400 for a malformed path id.
    errors: tuple[int, ...] = ()


OPERATIONS: dict[Any, Operation] = {
    api.sync_health: Operation("Sync health: events by status, lag, last event", ref("Sync")),
    api.sync_history: Operation(
        "Events received, processed and failed per minute",
        ref("SyncHistory"),
        parameters=(
            query(
                "minutes",
                f"window, 1-{api.MAX_HISTORY_MINUTES} (default {api.DEFAULT_HISTORY_MINUTES})",
                {"type": "integer", "minimum": 1, "maximum": api.MAX_HISTORY_MINUTES},
            ),
        ),
        errors=(400,),
    ),
    serve: Operation("This document", {"type": "object"}),
    api_events.list_events: Operation(
        "Stored events, newest first, filtered and paginated",
        ref("EventPage"),
        parameters=(
            query("status", "pending, processed, ignored or failed; several comma separated"),
            query("type", "an event type, or a glob such as invoice.*"),
            query("customer", "a customer id"),
            query("since", "created at or after (ISO 8601 or Unix seconds)"),
            query("until", "created before (ISO 8601 or Unix seconds)"),
            limit(api_events.MAX_LIMIT),
            AFTER,
        ),
        errors=(400,),
    ),
    api_events.retry_events: Operation(
        "Re-enqueue every failed event matching a filter",
        obj(("retried",), retried=INTEGER, enqueued=BOOLEAN),
        statuses=(202,),
        body=ref("RetryFilter"),
        errors=(400, 413),
    ),
    api.get_event: Operation("One stored event with its processing state", ref("Event"), errors=(404,)),
    api.retry_event: Operation(
        "Re-enqueue one failed event",
        obj(("id", "status"), id=STRING, status=STRING),
        statuses=(202,),
        errors=(404, 409),
    ),
    api_customers.find_customers: Operation(
        "Customers whose id, email or name starts with q (any case)",
        obj(("customers", "next"), customers={"type": "array", "items": ref("CustomerSummary")}, next=NEXT),
        parameters=(query("q", "a prefix of the id, email or name"), limit(api_customers.MAX_LIMIT), AFTER),
        errors=(400,),
    ),
    api_customers.get_customer: Operation(
        "A customer with subscriptions, segments, tags and attributes", ref("Customer"), errors=(404,)
    ),
    api_customers.customer_events: Operation(
        "A customer's billing timeline, newest first",
        obj(
            ("events", "next"),
            events={
                "type": "array",
                "items": obj(
                    ("event_id", "type", "at", "kind"),
                    event_id=STRING,
                    type=STRING,
                    at=TIME,
                    kind=STRING,
                    event_status=STATUS,
                ),
            },
            next=NEXT,
        ),
        parameters=(limit(api_customers.MAX_LIMIT), AFTER),
        errors=(400, 404),
    ),
    api_segments.list_segments: Operation(
        "Every segment with its member count",
        {"type": "array", "items": obj(("key", "name", "count"), key=STRING, name=STRING, count=INTEGER)},
    ),
    api_segments.segment_customers: Operation(
        "Members of a segment: ids, or objects with expand=customer",
        obj(
            ("customers", "next"),
            segment=STRING,
            customers={"type": "array", "items": {"anyOf": [STRING, ref("Member")]}},
            next=NEXT,
        ),
        parameters=(
            limit(api_segments.MAX_LIMIT),
            AFTER,
            query(
                "expand",
                "customer: name, email, MRR and entered_at of each member",
                {"type": "string", "enum": ["customer"]},
            ),
        ),
        errors=(400, 404),
    ),
    api_segments.segment_history: Operation(
        "Entries and exits of a segment, oldest first",
        obj(
            ("history", "next"),
            segment=STRING,
            next=NEXT,
            history={
                "type": "array",
                "items": obj(
                    ("customer", "change", "at", "cause"),
                    customer=STRING,
                    change={"type": "string", "enum": ["entered", "exited"]},
                    at=TIME,
                    cause=STRING,
                ),
            },
        ),
        parameters=(query("since", "from this time (ISO 8601 or Unix seconds)"), limit(api_segments.MAX_LIMIT), AFTER),
        errors=(400, 404),
    ),
    api_segments.record_activity: Operation(
        "Record product activity of customers (by id or email)",
        obj(("recorded", "duplicates", "customers"), recorded=INTEGER, duplicates=INTEGER, customers=STRINGS),
        body={"anyOf": [ref("Activity"), {"type": "array", "items": ref("Activity")}]},
        errors=(400, 404, 413),
    ),
    api_user_data.get_attributes: Operation(
        "A customer's custom attributes",
        obj(("customer", "attributes"), customer=STRING, attributes={"type": "object"}),
        errors=(404,),
    ),
    api_user_data.put_attributes: Operation(
        "Replace a customer's custom attributes",
        obj(("customer", "attributes"), customer=STRING, attributes={"type": "object"}),
        body={"type": "object", "additionalProperties": {"type": ["string", "number", "boolean", "null"]}},
        errors=(400, 404),
    ),
    api_user_data.get_tags: Operation(
        "A customer's tags", obj(("customer", "tags"), customer=STRING, tags=STRINGS), errors=(404,)
    ),
    api_user_data.add_tag: Operation(
        "Tag a customer (201 when the tag is new)",
        obj(("customer", "tags"), customer=STRING, tags=STRINGS),
        statuses=(201, 200),
        body=obj(("tag",), tag=STRING),
        errors=(400, 404),
    ),
    api_user_data.remove_tag: Operation(
        "Remove a tag",
        obj(("customer", "tags", "removed"), customer=STRING, tags=STRINGS, removed=BOOLEAN),
        errors=(404,),
    ),
}


def _responses(operation: Operation, errors: set[int]) -> dict[str, Any]:
    answers = {
        str(status): {"description": operation.summary, "content": {"application/json": {"schema": operation.answer}}}
        for status in operation.statuses
    }
    for status in sorted(errors):
        answers[str(status)] = {
            "description": MEANINGS[status],
            "content": {"application/json": {"schema": ref("Error")}},
        }
    return answers


def _operation(route: Route, endpoint: Any, operation: Operation) -> dict[str, Any]:
    path_parameters = [
        {"name": name, "in": "path", "required": True, "schema": {"type": "string", "maxLength": MAX_TEXT}}
        for name in route.param_convertors
    ]
    errors = {401, 503, *operation.errors, *([400] if path_parameters else [])}
    described: dict[str, Any] = {
        "operationId": endpoint.__name__,
        "summary": operation.summary,
        "parameters": path_parameters + list(operation.parameters),
        "responses": _responses(operation, errors),
    }
    if operation.body is not None:
        described["requestBody"] = {"required": False, "content": {"application/json": {"schema": operation.body}}}
    return described


def document(routes: list[BaseRoute]) -> dict[str, Any]:
    """The OpenAPI document of the /api routes among `routes`; every one must be described above."""
    paths: dict[str, dict[str, Any]] = {}
    described = set()
    for route in routes:
        if not isinstance(route, Route) or not route.path.startswith("/api/"):
            continue
        endpoint = inspect.unwrap(route.endpoint)
        operation = OPERATIONS.get(endpoint)
        if operation is None:
            raise LookupError(f"{route.path} ({endpoint.__name__}) has no description in app/http/openapi.py")
        described.add(endpoint)
        for method in sorted((route.methods or {"GET"}) - {"HEAD"}):
            paths.setdefault(route.path_format, {})[method.lower()] = _operation(route, endpoint, operation)
    stale = [endpoint.__name__ for endpoint in OPERATIONS if endpoint not in described]
    if stale:
        raise LookupError(f"app/http/openapi.py describes endpoints no /api route serves: {', '.join(stale)}")
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "stripeline",
            "version": metadata.version("stripeline"),
            "description": "Stripe webhooks as a billing model and lifecycle segments. Every /api route needs "
            "`Authorization: Bearer $STRIPELINE_API_TOKEN`. Times are ISO 8601 UTC; money is integer minor units "
            "with its currency.",
        },
        "security": [{"bearer": []}],
        "paths": paths,
        "components": {"schemas": SCHEMAS, "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}}},
    }


def query_names(endpoint: Any) -> frozenset[str] | None:
    """The query parameters an endpoint takes, as described here (None: not described)."""
    operation = OPERATIONS.get(inspect.unwrap(endpoint))
    if operation is None:
        return None
    return frozenset(parameter["name"] for parameter in operation.parameters if parameter["in"] == "query")
