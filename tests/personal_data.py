"""A customer full of personal data, as Stripe sends it, and a search of the whole database for it.

Every personal value carries the person's `marker` (or, for numbers, its own digits), so a
search for the marker finds any copy, whole or partial, wherever it landed.
"""

from __future__ import annotations

import random
import uuid
from dataclasses import dataclass, field
from typing import Any

import asyncpg

from stripeline.model.context import Registry
from stripeline.model.events import event_from_payload
from stripeline.processing.engine import Outcome, process_events
from stripeline.settings import Settings
from stripeline.store.event_log import insert_events
from tests import registries
from tests.factories import event

T0 = 1_760_000_000  # 2025-10-09: creation time of the customer in every stream
DELETED_AT = T0 + 9 * 86400


@dataclass
class Person:
    key: str = field(default_factory=lambda: uuid.uuid4().hex[:12])
    marker: str = field(default_factory=lambda: f"pii{uuid.uuid4().hex[:10]}")
    phone_digits: str = field(default_factory=lambda: str(random.randrange(10**8, 10**9)))
    vat_digits: str = field(default_factory=lambda: str(random.randrange(10**8, 10**9)))

    @property
    def customer_id(self) -> str:
        return f"cus_{self.key}"

    @property
    def subscription_id(self) -> str:
        return f"sub_{self.key}"

    @property
    def email(self) -> str:
        return f"ada.{self.marker}@example.org"

    @property
    def name(self) -> str:
        return f"Ada Lovelace-{self.marker}"

    @property
    def phone(self) -> str:
        return f"+44 {self.phone_digits}"

    @property
    def line1(self) -> str:
        return f"12 Analytical Row, flat {self.marker}"

    def address(self) -> dict[str, Any]:
        return {"city": "London", "country": "GB", "line1": self.line1, "line2": f"c/o {self.marker}",
                "postal_code": "NW1 6XE", "state": None}

    def needles(self) -> list[str]:
        """What no table may hold after anonymization."""
        return [self.marker, self.phone_digits, self.vat_digits]

    def ids(self) -> dict[str, str]:
        return {self.key: "KEY", self.marker: "MARKER", self.phone_digits: "PHONE", self.vat_digits: "VAT"}


def customer(person: Person, *, email: str | None = None) -> dict[str, Any]:
    return {
        "id": person.customer_id,
        "object": "customer",
        "address": person.address(),
        "balance": 0,
        "created": T0,
        "currency": "gbp",
        "default_source": None,
        "delinquent": False,
        "description": f"Met {person.marker} at the conference",
        "discount": None,
        "email": email or person.email,
        "invoice_prefix": "7A3C2E1B",
        "invoice_settings": {
            "custom_fields": [{"name": "Purchase order", "value": f"PO-{person.marker}"}],
            "default_payment_method": None,
            "footer": None,
            "rendering_options": None,
        },
        "livemode": False,
        "metadata": {"crm_note": f"prefers {person.marker}"},
        "name": person.name,
        "next_invoice_sequence": 2,
        "phone": person.phone,
        "preferred_locales": ["en-GB"],
        "shipping": {"address": person.address(), "name": person.name, "phone": person.phone},
        "tax_exempt": "none",
        "test_clock": None,
    }


def price() -> dict[str, Any]:
    return {
        "id": "price_pii_pro_monthly",
        "object": "price",
        "active": True,
        "billing_scheme": "per_unit",
        "created": T0 - 86400,
        "currency": "gbp",
        "livemode": False,
        "lookup_key": None,
        "metadata": {},
        "nickname": "Pro monthly",
        "product": "prod_pii_pro",
        "recurring": {"interval": "month", "interval_count": 1, "usage_type": "licensed"},
        "tax_behavior": "unspecified",
        "type": "recurring",
        "unit_amount": 2500,
        "unit_amount_decimal": "2500",
    }


def subscription(person: Person, *, status: str = "active") -> dict[str, Any]:
    start, end = T0 + 2 * 86400, T0 + 32 * 86400
    return {
        "id": person.subscription_id,
        "object": "subscription",
        "billing_cycle_anchor": start,
        "cancel_at": None,
        "cancel_at_period_end": False,
        "canceled_at": None,
        "collection_method": "charge_automatically",
        "created": start,
        "currency": "gbp",
        "customer": person.customer_id,
        "default_payment_method": None,
        "description": f"Team plan for {person.name}",
        "discounts": [],
        "ended_at": None,
        "items": {
            "object": "list",
            "data": [{
                "id": f"si_{person.key}",
                "object": "subscription_item",
                "created": start,
                "current_period_end": end,
                "current_period_start": start,
                "metadata": {},
                "price": price(),
                "quantity": 3,
                "subscription": person.subscription_id,
            }],
            "has_more": False,
            "url": f"/v1/subscription_items?subscription={person.subscription_id}",
        },
        "latest_invoice": f"in_{person.key}",
        "livemode": False,
        "metadata": {"seat_owner": person.email},
        "start_date": start,
        "status": status,
        "trial_end": None,
        "trial_start": None,
    }


def invoice(person: Person) -> dict[str, Any]:
    start, end = T0 + 2 * 86400, T0 + 32 * 86400
    return {
        "id": f"in_{person.key}",
        "object": "invoice",
        "account_country": "GB",
        "amount_due": 7500,
        "amount_paid": 7500,
        "amount_remaining": 0,
        "attempt_count": 1,
        "billing_reason": "subscription_create",
        "collection_method": "charge_automatically",
        "created": start,
        "currency": "gbp",
        "custom_fields": None,
        "customer": person.customer_id,
        "customer_address": person.address(),
        "customer_email": person.email,
        "customer_name": person.name,
        "customer_phone": person.phone,
        "customer_shipping": {"address": person.address(), "name": person.name, "phone": person.phone},
        "customer_tax_exempt": "none",
        "customer_tax_ids": [{"type": "gb_vat", "value": f"GB{person.vat_digits}"}],
        "description": f"Thanks, {person.name}!",
        "hosted_invoice_url": f"https://invoice.stripe.com/i/acct_x/{person.marker}",
        "invoice_pdf": f"https://pay.stripe.com/invoice/acct_x/{person.marker}/pdf",
        "lines": {
            "object": "list",
            "data": [{
                "id": f"il_{person.key}",
                "object": "line_item",
                "amount": 7500,
                "currency": "gbp",
                "description": "3 × Pro (at £25.00 / month)",
                "metadata": {},
                "period": {"end": end, "start": start},
                "pricing": {"price_details": {"price": "price_pii_pro_monthly", "product": "prod_pii_pro"},
                            "type": "price_details", "unit_amount_decimal": "2500"},
                "quantity": 3,
            }],
            "has_more": False,
            "url": f"/v1/invoices/in_{person.key}/lines",
        },
        "livemode": False,
        "metadata": {},
        "next_payment_attempt": None,
        "number": "7A3C2E1B-0001",
        "parent": {
            "quote_details": None,
            "subscription_details": {"metadata": {"seat_owner": person.email}, "subscription": person.subscription_id},
            "type": "subscription_details",
        },
        "period_end": start,
        "period_start": start,
        "shipping_details": None,
        "status": "paid",
        "status_transitions": {"finalized_at": start, "marked_uncollectible_at": None, "paid_at": start,
                               "voided_at": None},
        "subtotal": 7500,
        "total": 7500,
    }


def charge(person: Person) -> dict[str, Any]:
    at = T0 + 2 * 86400
    return {
        "id": f"ch_{person.key}",
        "object": "charge",
        "amount": 7500,
        "amount_captured": 7500,
        "amount_refunded": 0,
        "balance_transaction": f"txn_{person.key}",
        "billing_details": {"address": person.address(), "email": person.email, "name": person.name,
                            "phone": person.phone, "tax_id": None},
        "captured": True,
        "created": at,
        "currency": "gbp",
        "customer": person.customer_id,
        "description": "Subscription creation",
        "disputed": False,
        "failure_code": None,
        "failure_message": None,
        "livemode": False,
        "metadata": {},
        "outcome": {"network_status": "approved_by_network", "risk_level": "normal",
                    "seller_message": "Payment complete.", "type": "authorized"},
        "paid": True,
        "payment_intent": f"pi_{person.key}",
        "payment_method": f"pm_{person.key}",
        "payment_method_details": {
            "card": {"brand": "visa", "country": "GB", "exp_month": 8, "exp_year": 2030,
                     "fingerprint": f"fp{person.marker}", "funding": "credit", "last4": "4242", "network": "visa"},
            "type": "card",
        },
        "receipt_email": person.email,
        "receipt_number": None,
        "receipt_url": f"https://pay.stripe.com/receipts/payment/{person.marker}",
        "refunded": False,
        "shipping": {"address": person.address(), "carrier": None, "name": person.name, "phone": person.phone,
                     "tracking_number": None},
        "status": "succeeded",
    }


def stream(person: Person) -> list[dict[str, Any]]:
    """The customer's life in Stripe order, ending with its deletion (and Stripe's cancellation)."""
    key = person.key
    updated = customer(person)
    return [
        event("customer.created", customer(person, email=f"first.{person.marker}@example.org"),
              created=T0, id=f"evt_{key}_1"),
        event("customer.updated", updated, created=T0 + 60, id=f"evt_{key}_2",
              previous_attributes={"email": f"first.{person.marker}@example.org", "metadata": {}}),
        event("customer.subscription.created", subscription(person), created=T0 + 2 * 86400, id=f"evt_{key}_3"),
        event("invoice.paid", invoice(person), created=T0 + 2 * 86400 + 5, id=f"evt_{key}_4"),
        event("charge.succeeded", charge(person), created=T0 + 2 * 86400 + 6, id=f"evt_{key}_5"),
        event("customer.subscription.updated", subscription(person), created=T0 + 5 * 86400, id=f"evt_{key}_6",
              previous_attributes={"metadata": {"seat_owner": f"first.{person.marker}@example.org"}}),
        deletion(person),
        event("customer.subscription.deleted", {**subscription(person, status="canceled"),
                                                "canceled_at": DELETED_AT, "ended_at": DELETED_AT},
              created=DELETED_AT, id=f"evt_{key}_8"),
    ]


def deletion(person: Person) -> dict[str, Any]:
    return event("customer.deleted", customer(person), created=DELETED_AT, id=f"evt_{person.key}_7")


SEED = """
WITH c AS (
    INSERT INTO customers (id, email, name, phone, description, address, currency, metadata, created_at)
    VALUES ($1, $2, $3, $4, $5, $6, 'gbp', $7, to_timestamp($8))
    ON CONFLICT (id) DO NOTHING RETURNING id
), s AS (
    INSERT INTO subscriptions (id, customer_id, status, currency, created_at, metadata, mrr)
    VALUES ($9, $1, 'active', 'gbp', to_timestamp($8), $7, 7500)
    ON CONFLICT (id) DO NOTHING RETURNING id
), i AS (
    INSERT INTO subscription_items (id, subscription_id, price_id, product_id, quantity)
    SELECT 'si_' || $10, id, 'price_pii_pro_monthly', 'prod_pii_pro', 3 FROM s RETURNING id
), inv AS (
    INSERT INTO invoices (id, customer_id, subscription_id, status, currency, total, description)
    VALUES ('in_' || $10, $1, $9, 'paid', 'gbp', 7500, $5) ON CONFLICT (id) DO NOTHING RETURNING id
), pay AS (
    INSERT INTO payments (id, kind, customer_id, amount, currency, status, description)
    VALUES ('ch_' || $10, 'charge', $1, 7500, 'gbp', 'succeeded', $5) ON CONFLICT (id) DO NOTHING RETURNING id
), d AS (
    INSERT INTO discounts (id, customer_id, coupon) VALUES ('di_' || $10, $1, '{"id": "LAUNCH", "percent_off": 10}')
    ON CONFLICT (id) DO NOTHING RETURNING id
), m AS (
    INSERT INTO segment_memberships (segment, customer_id, entered_at) VALUES ('customers', $1, now())
    ON CONFLICT DO NOTHING RETURNING 1
), h AS (
    INSERT INTO segment_history (segment, customer_id, change, at, cause)
    VALUES ('customers', $1, 'entered', now(), 'evt_' || $10 || '_3') RETURNING 1
), a AS (
    INSERT INTO customer_attributes (customer_id, attributes) VALUES ($1, '{"plan_tier": "gold", "seats": 3}')
    ON CONFLICT (customer_id) DO NOTHING RETURNING 1
), t AS (
    INSERT INTO customer_tags (customer_id, tag) VALUES ($1, 'vip') ON CONFLICT DO NOTHING RETURNING 1
), act AS (
    INSERT INTO customer_activity (customer_id, at) VALUES ($1, now()) ON CONFLICT DO NOTHING RETURNING 1
)
INSERT INTO outbox (kind, payload)
VALUES ('segment_changed', jsonb_build_object('segment', 'customers', 'change', 'entered',
        'customer', jsonb_build_object('id', $1::text, 'email', $2::text, 'name', $3::text)))
"""


async def seed_rows(conn: asyncpg.Connection, person: Person) -> None:
    """The rows the billing, segment and user-data code would hold for this customer."""
    await conn.execute(
        SEED, person.customer_id, person.email, person.name, person.phone, f"Met {person.marker} at the conference",
        person.address(), {"crm_note": f"prefers {person.marker}"}, T0, person.subscription_id, person.key,
    )


async def deliver(
    pool: asyncpg.Pool, settings: Settings, payloads: list[dict[str, Any]], registry: Registry | None = None
) -> Outcome:
    """Store events as ingest does and process the new ones together, in one batch."""
    records = [event_from_payload(p) for p in payloads]
    async with pool.acquire() as conn:
        new = await insert_events(conn, records)
    return await process_events(pool, [r.id for r in records if r.id in new], settings,
                                registry=registry or registries.product())


TEXT_COLUMNS = """
SELECT table_name, column_name FROM information_schema.columns
WHERE table_schema = current_schema() AND data_type IN ('text', 'character varying', 'character', 'json', 'jsonb')
ORDER BY table_name, column_name
"""


def _ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


async def find_everywhere(conn: asyncpg.Connection, needle: str) -> list[str]:
    """Every `table.column` of the database whose value contains `needle` (case-insensitive)."""
    found = []
    for row in await conn.fetch(TEXT_COLUMNS):
        table, column = _ident(row["table_name"]), _ident(row["column_name"])
        query = f"SELECT count(*) FROM {table} WHERE strpos(lower({column}::text), lower($1)) > 0"
        if await conn.fetchval(query, needle):
            found.append(f"{row['table_name']}.{row['column_name']}")
    return found
