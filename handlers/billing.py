"""Derived billing state per customer: MRR and the last payment, recomputed set-based.

Runs after every batch for the customers it touched (all of them locked by the batch), in
one statement whatever their number.

MRR (the contract's): the sum over `active` and `past_due` subscriptions (trials count zero)
of each licensed item's unit_amount x quantity normalised to one month (year /12, week x52/12,
day x365/12, divided by interval_count), in the customer's currency, less the subscription's
discounts where known: percent_off values are added (capped at 100%) and taken off the
subtotal, as Stripe applies each discount to the subtotal; amount_off values (per invoice,
in the subscription's currency) are normalised to a month by the subscription's interval.
Rounded half up to the minor unit per subscription; subscriptions.mrr keeps each one's amount
whatever its status. A subscription's discounts are those whose ids it names, or, when its
payload names none (basil shapes without `discounts`), the live discounts pointing at it.

Last payment: the latest paid invoice (amount_paid > 0, at its paid time) or succeeded
charge not tied to an invoice (at its creation), the invoice first on the same second.
"""

from __future__ import annotations

import asyncpg

from app.processing import ProcessingContext

REFRESH_BILLING = """
WITH target AS (
    SELECT DISTINCT unnest($1::text[]) AS id
),
amounts AS (
    SELECT s.id, s.customer_id, s.status, s.currency, s.discount_ids,
           sum(p.unit_amount * si.quantity * m.months::numeric / (m.per * p.interval_count)) AS monthly,
           min(m.months::numeric / (m.per * p.interval_count)) AS invoices_per_month
    FROM target AS t
    JOIN customers AS c ON c.id = t.id
    JOIN subscriptions AS s ON s.customer_id = t.id
    JOIN subscription_items AS si ON si.subscription_id = s.id
    JOIN prices AS p ON p.id = si.price_id
    JOIN (VALUES ('day', 365, 12), ('week', 52, 12), ('month', 1, 1), ('year', 1, 12)) AS m(interval, months, per)
      ON m.interval = p.interval
    WHERE p.unit_amount IS NOT NULL
      AND p.usage_type IS DISTINCT FROM 'metered'
      AND p.currency = coalesce(c.currency, s.currency, p.currency)
    GROUP BY s.id
),
applicable AS (
    -- the discounts a subscription names ...
    SELECT a.id AS subscription_id, a.currency, dc.coupon
    FROM amounts AS a
    CROSS JOIN LATERAL jsonb_array_elements_text(a.discount_ids) AS named(id)
    JOIN discounts AS dc ON dc.id = named.id AND NOT dc.deleted
    UNION ALL
    -- ... or, when its payload names none, the live ones pointing at it
    SELECT a.id, a.currency, dc.coupon
    FROM amounts AS a
    JOIN discounts AS dc ON dc.subscription_id = a.id AND NOT dc.deleted
    WHERE a.discount_ids IS NULL
),
discount_terms AS (
    SELECT subscription_id,
           sum((coupon->>'percent_off')::numeric) AS percent_off,
           sum((coupon->>'amount_off')::bigint)
               FILTER (WHERE coalesce(coupon->>'currency', currency) = currency) AS amount_off
    FROM applicable
    GROUP BY subscription_id
),
discounted AS (
    SELECT a.id, a.customer_id, a.status,
           -- Division by 12 is inexact in numeric: round to 10 places first, so that an exact
           -- half (1000/12 x 75% = 62.5) rounds up as it does in exact arithmetic.
           greatest(0, round(round(a.monthly * (1 - least(coalesce(d.percent_off, 0), 100) / 100)
                                   - coalesce(d.amount_off, 0) * a.invoices_per_month, 10)))::bigint AS mrr
    FROM amounts AS a
    LEFT JOIN discount_terms AS d ON d.subscription_id = a.id
),
subscription_amounts AS (
    SELECT s.id, coalesce(d.mrr, 0) AS mrr
    FROM target AS t
    JOIN subscriptions AS s ON s.customer_id = t.id
    LEFT JOIN discounted AS d ON d.id = s.id
),
updated_subscriptions AS (
    UPDATE subscriptions AS s SET mrr = sa.mrr
    FROM subscription_amounts AS sa
    WHERE s.id = sa.id AND s.mrr <> sa.mrr
),
customer_amounts AS (
    SELECT t.id, coalesce(sum(d.mrr) FILTER (WHERE d.status IN ('active', 'past_due')), 0)::bigint AS mrr
    FROM target AS t
    LEFT JOIN discounted AS d ON d.customer_id = t.id
    GROUP BY t.id
),
payments_made AS (
    SELECT i.customer_id, i.id, i.amount_paid AS amount, i.currency, i.description, i.paid_at AS at, 1 AS preference
    FROM target AS t
    JOIN invoices AS i ON i.customer_id = t.id
    WHERE i.status = 'paid' AND i.amount_paid > 0 AND i.paid_at IS NOT NULL AND NOT i.deleted
    UNION ALL
    SELECT p.customer_id, p.id, p.amount, p.currency, p.description, p.paid_at, 0
    FROM target AS t
    JOIN payments AS p ON p.customer_id = t.id
    WHERE p.kind = 'charge' AND p.status = 'succeeded' AND p.paid_at IS NOT NULL AND p.invoice_id IS NULL
),
latest_payments AS (
    SELECT DISTINCT ON (customer_id) *
    FROM payments_made
    ORDER BY customer_id, at DESC, preference DESC, id DESC
)
UPDATE customers AS c
SET mrr = ca.mrr,
    last_payment_id = lp.id,
    last_payment_amount = lp.amount,
    last_payment_currency = lp.currency,
    last_payment_description = lp.description,
    last_payment_at = lp.at
FROM customer_amounts AS ca
LEFT JOIN latest_payments AS lp ON lp.customer_id = ca.id
WHERE c.id = ca.id
  AND (c.mrr, c.last_payment_id, c.last_payment_amount, c.last_payment_currency, c.last_payment_description,
       c.last_payment_at)
      IS DISTINCT FROM (ca.mrr, lp.id, lp.amount, lp.currency, lp.description, lp.at)
"""


async def refresh_billing(conn: asyncpg.Connection, customer_ids: list[str], ctx: ProcessingContext) -> None:
    """Recompute MRR and last payment for the touched customers (sorted, locked by the batch)."""
    await conn.execute(REFRESH_BILLING, customer_ids)
