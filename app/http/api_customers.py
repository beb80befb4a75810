"""GET /api/customers (search), /api/customers/{id} and its billing timeline.

Endpoints here are wrapped by `api.authorized`.

The customer answer carries every field Encharge maps (CONTRACT.md "Customer fields") at top
level, its subscriptions with items, prices and products, its segments, tags and attributes.
The timeline shows the customer's billing events as Encharge's person feed does:
subscription created/updated/canceled, trial started/ended, invoice created/paid/failed and
charges, newest first.
"""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from stripeline.handlers.customers import address_of
from stripeline.http import api_input
from stripeline.http.responses import JSONResponse, error

CUSTOMER = """
SELECT c.*,
       (SELECT max(a.at) FROM customer_activity AS a WHERE a.customer_id = c.id) AS last_activity,
       (SELECT coalesce(array_agg(m.segment ORDER BY m.segment), '{}') FROM segment_memberships AS m
        WHERE m.customer_id = c.id) AS segments,
       (SELECT coalesce(array_agg(t.tag ORDER BY t.tag), '{}') FROM customer_tags AS t
        WHERE t.customer_id = c.id) AS tags,
       (SELECT u.attributes FROM customer_attributes AS u WHERE u.customer_id = c.id) AS attributes
FROM customers AS c
WHERE c.id = $1
"""

SUBSCRIPTIONS = """
SELECT s.id, s.status, s.currency, s.created_at, s.trial_start, s.trial_end, s.canceled_at, s.ended_at, s.cancel_at,
       s.cancel_at_period_end, s.current_period_start, s.current_period_end, s.mrr, s.metadata,
       si.id AS item_id, si.quantity, si.current_period_start AS item_period_start,
       si.current_period_end AS item_period_end, si.price_id, p.unit_amount, p.currency AS price_currency,
       p.interval, p.interval_count, p.nickname, coalesce(si.product_id, p.product_id) AS product_id,
       pr.name AS product_name
FROM subscriptions AS s
LEFT JOIN subscription_items AS si ON si.subscription_id = s.id
LEFT JOIN prices AS p ON p.id = si.price_id
LEFT JOIN products AS pr ON pr.id = coalesce(si.product_id, p.product_id)
WHERE s.customer_id = $1
ORDER BY s.created_at DESC NULLS LAST, s.id, si.id
"""

CUSTOMER_EXISTS = "SELECT EXISTS (SELECT 1 FROM customers WHERE id = $1)"

# Search: one page of customers after a cursor id, by id; with `q`, those whose id, email or
# name starts with it, whatever the case (sql/0012 indexes the three for LIKE 'prefix%').
SEARCH_COLUMNS = "id, email, name, mrr, currency, created_at, delinquent, deleted_in_stripe"
ALL_CUSTOMERS = f"SELECT {SEARCH_COLUMNS} FROM customers WHERE id > $1 ORDER BY id LIMIT $2"
FIND_CUSTOMERS = f"""
SELECT {SEARCH_COLUMNS} FROM customers
WHERE (lower(id) LIKE $3 OR lower(email) LIKE $3 OR lower(name) LIKE $3) AND id > $1
ORDER BY id
LIMIT $2
"""

TIMELINE_TYPES = [
    "customer.subscription.created",
    "customer.subscription.updated",
    "customer.subscription.deleted",
    "invoice.created",
    "invoice.paid",
    "invoice.payment_succeeded",
    "invoice.payment_failed",
    "charge.succeeded",
    "charge.failed",
    "charge.refunded",
]

# Newest first; within one second a creation is older and a deletion newer than the rest.
# An invoice paid by a charge sends both invoice.paid and invoice.payment_succeeded: shown once.
# The cursor is the id of the last event of the previous page.
TIMELINE = """
WITH timeline AS (
    SELECT e.id, e.type, e.created, e.payload, e.status,
           CASE WHEN e.type LIKE '%.created' THEN 1 WHEN e.type LIKE '%.deleted' THEN 3 ELSE 2 END AS step
    FROM stripe_events AS e
    WHERE e.customer_id = $1 AND e.type = ANY($2::text[])
      AND NOT (e.type = 'invoice.payment_succeeded'
               AND EXISTS (SELECT 1 FROM stripe_events AS paid
                           WHERE paid.object_id = e.object_id AND paid.type = 'invoice.paid'))
)
SELECT id, type, created, payload, status, step
FROM timeline
WHERE $3::text IS NULL OR (created, step, id) < (SELECT created, step, id FROM timeline WHERE id = $3)
ORDER BY created DESC, step DESC, id DESC
LIMIT $4
"""

DEFAULT_LIMIT = 50
MAX_LIMIT = 500
SEARCH_FIELDS = ("id", "email", "name", "mrr", "currency", "created_at", "delinquent", "deleted_in_stripe")


def like_prefix(query: str) -> str:
    """A LIKE pattern for "starts with `query`", case-insensitive, its wildcards taken literally."""
    escaped = query.lower().replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return escaped + "%"


def _customer(row: Any) -> dict[str, Any]:
    last_payment = None
    if row["last_payment_id"] is not None:
        last_payment = {
            "id": row["last_payment_id"],
            "amount": row["last_payment_amount"],
            "currency": row["last_payment_currency"],
            "description": row["last_payment_description"],
            "at": row["last_payment_at"],
        }
    return {
        "id": row["id"],
        "email": row["email"],
        "name": row["name"],
        "phone": row["phone"],
        "description": row["description"],
        "address": address_of(dict(row)),
        "delinquent": row["delinquent"],
        "currency": row["currency"],
        "mrr": row["mrr"],
        "created_at": row["created_at"],
        "deleted_in_stripe": row["deleted_in_stripe"],
        "deleted_at": row["deleted_at"],
        # The contract: the latest recorded activity, else the Stripe creation time.
        "last_activity_at": row["last_activity"] or row["created_at"],
        "last_synced_at": row["last_synced_at"],
        "last_payment": last_payment,
        "metadata": row["metadata"],
        "livemode": row["livemode"],
        "account": row["account"],
    }


def _subscriptions(rows: list[Any]) -> list[dict[str, Any]]:
    found: dict[str, dict[str, Any]] = {}
    for row in rows:
        sub = found.get(row["id"])
        if sub is None:
            sub = found[row["id"]] = {
                "id": row["id"],
                "status": row["status"],
                "currency": row["currency"],
                "trial_start": row["trial_start"],
                "trial_end": row["trial_end"],
                "created_at": row["created_at"],
                "canceled_at": row["canceled_at"],
                "ended_at": row["ended_at"],
                "cancel_at": row["cancel_at"],
                "cancel_at_period_end": row["cancel_at_period_end"],
                "current_period_start": row["current_period_start"],
                "current_period_end": row["current_period_end"],
                "mrr": row["mrr"],
                "metadata": row["metadata"],
                "items": [],
            }
        if row["item_id"] is None:
            continue
        sub["items"].append(
            {
                "id": row["item_id"],
                "quantity": row["quantity"],
                "current_period_start": row["item_period_start"],
                "current_period_end": row["item_period_end"],
                "price": {
                    "id": row["price_id"],
                    "unit_amount": row["unit_amount"],
                    "currency": row["price_currency"],
                    "interval": row["interval"],
                    "interval_count": row["interval_count"],
                    "nickname": row["nickname"],
                },
                "product": {"id": row["product_id"], "name": row["product_name"]},
            }
        )
    return list(found.values())


async def get_customer(request: Request) -> Response:
    customer_id = request.path_params["customer_id"]
    async with request.app.state.pool.acquire() as conn:
        row = await conn.fetchrow(CUSTOMER, customer_id)
        if row is None:
            return error(404, "no such customer")
        subscriptions = await conn.fetch(SUBSCRIPTIONS, customer_id)
    body = _customer(row)
    body["subscriptions"] = _subscriptions(subscriptions)
    body["segments"] = list(row["segments"])
    body["tags"] = list(row["tags"])
    body["attributes"] = row["attributes"] or {}
    return JSONResponse(body)


def _subscription_entries(event_type: str, obj: dict[str, Any], previous: dict[str, Any]) -> list[dict[str, Any]]:
    details = {"subscription_id": obj.get("id"), "status": obj.get("status")}
    kind = {
        "customer.subscription.created": "subscription_created",
        "customer.subscription.updated": "subscription_updated",
        "customer.subscription.deleted": "subscription_canceled",
    }[event_type]
    was = previous.get("status") if "status" in previous else None
    entries = [{"kind": kind, **details, "previous_status": was}]
    started = (event_type == "customer.subscription.created" and obj.get("status") == "trialing") or (
        was is not None and was != "trialing" and obj.get("status") == "trialing"
    )
    ended = was == "trialing" and obj.get("status") != "trialing"
    if started:
        entries.append({"kind": "trial_started", **details, "trial_end": obj.get("trial_end")})
    if ended:
        entries.append({"kind": "trial_ended", **details})
    return entries


def _invoice_entries(event_type: str, obj: dict[str, Any]) -> list[dict[str, Any]]:
    kind = {
        "invoice.created": "invoice_created",
        "invoice.paid": "invoice_paid",
        "invoice.payment_succeeded": "invoice_paid",
        "invoice.payment_failed": "invoice_payment_failed",
    }[event_type]
    paid = kind == "invoice_paid"
    return [
        {
            "kind": kind,
            "invoice_id": obj.get("id"),
            "status": obj.get("status"),
            "number": obj.get("number"),
            "amount": obj.get("amount_paid") if paid else obj.get("amount_due"),
            "currency": obj.get("currency"),
            "attempt_count": obj.get("attempt_count"),
        }
    ]


def _charge_entries(event_type: str, obj: dict[str, Any]) -> list[dict[str, Any]]:
    return [
        {
            "kind": event_type.replace(".", "_"),
            "charge_id": obj.get("id"),
            "status": obj.get("status"),
            "amount": obj.get("amount"),
            "amount_refunded": obj.get("amount_refunded"),
            "currency": obj.get("currency"),
            "failure_code": obj.get("failure_code"),
        }
    ]


def timeline_entries(rows: list[Any]) -> list[dict[str, Any]]:
    """Feed entries for stored events, newest first."""
    entries = []
    for row in rows:
        obj = row["payload"]["data"]["object"]
        previous = row["payload"]["data"].get("previous_attributes") or {}
        if row["type"].startswith("customer.subscription."):
            found = _subscription_entries(row["type"], obj, previous)
        elif row["type"].startswith("invoice."):
            found = _invoice_entries(row["type"], obj)
        else:
            found = _charge_entries(row["type"], obj)
        # Derived entries (trial started/ended) follow their event: newest first, they lead.
        for entry in reversed(found):
            entries.append(
                {
                    "event_id": row["id"],
                    "type": row["type"],
                    "event_status": row["status"],
                    "at": row["created"],
                    **entry,
                }
            )
    return entries


async def find_customers(request: Request) -> Response:
    """Customers whose id, email or name starts with `q` (any case); every customer without it."""
    query = api_input.query_text(request, "q")
    limit = api_input.parse_limit(request, DEFAULT_LIMIT, MAX_LIMIT)
    after = api_input.query_text(request, "after") or ""
    async with request.app.state.pool.acquire() as conn:
        if query is None:
            rows = await conn.fetch(ALL_CUSTOMERS, after, limit + 1)
        else:
            rows = await conn.fetch(FIND_CUSTOMERS, after, limit + 1, like_prefix(query))
    page = rows[:limit]
    return JSONResponse(
        {
            "customers": [{name: row[name] for name in SEARCH_FIELDS} for row in page],
            "next": page[-1]["id"] if len(rows) > limit else None,
        }
    )


async def customer_events(request: Request) -> Response:
    customer_id = request.path_params["customer_id"]
    limit = api_input.parse_limit(request, DEFAULT_LIMIT, MAX_LIMIT)
    before = api_input.query_text(request, "after")
    async with request.app.state.pool.acquire() as conn:
        if not await conn.fetchval(CUSTOMER_EXISTS, customer_id):
            return error(404, "no such customer")
        rows = await conn.fetch(TIMELINE, customer_id, TIMELINE_TYPES, before, limit + 1)
    page, more = rows[:limit], len(rows) > limit
    return JSONResponse({"events": timeline_entries(page), "next": page[-1]["id"] if more and page else None})


ROUTES: list[Route] = [
    Route("/api/customers", find_customers, methods=["GET"]),
    Route("/api/customers/{customer_id}", get_customer, methods=["GET"]),
    Route("/api/customers/{customer_id}/events", customer_events, methods=["GET"]),
]
