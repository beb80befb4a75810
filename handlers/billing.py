"""Derived billing state per customer: MRR and the last payment, recomputed set-based.

Runs after every batch for the customers it touched (all of them locked by the batch), in
one statement whatever their number; a `replay --rebuild` runs it once per customer at its end.

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

from stripeline.handlers import segments
from stripeline.model.context import ProcessingContext

REFRESH_BILLING = """
WITH target AS (
    SELECT DISTINCT unnest($1::text[]) AS id
),
-- Per subscription of a target customer, by index lookups only (LATERAL fixes the order, so
-- that no plan, however stale its statistics, visits customers outside the target).
subscription_amounts AS (
    SELECT s.id, s.customer_id, s.status, s.mrr AS stored_mrr,
           CASE WHEN items.monthly IS NULL THEN 0
                -- Division by 12 is inexact in numeric: round to 10 places first, so that an
                -- exact half (1000/12 x 75% = 62.5) rounds up as in exact arithmetic.
                ELSE greatest(0, round(round(items.monthly * (1 - least(coalesce(terms.percent_off, 0), 100) / 100)
                                             - coalesce(terms.amount_off, 0) * items.invoices_per_month, 10)))
           END::bigint AS mrr
    FROM target AS t
    CROSS JOIN LATERAL (
        SELECT sub.*, (SELECT c.currency FROM customers AS c WHERE c.id = sub.customer_id) AS customer_currency
        FROM subscriptions AS sub
        WHERE sub.customer_id = t.id
    ) AS s
    CROSS JOIN LATERAL (
        -- Filters as FILTER clauses, so that the plan goes from the items to their prices.
        SELECT sum(p.unit_amount * si.quantity * m.months::numeric / (m.per * p.interval_count)) FILTER (WHERE counted)
                   AS monthly,
               min(m.months::numeric / (m.per * p.interval_count)) FILTER (WHERE counted) AS invoices_per_month
        FROM subscription_items AS si
        JOIN prices AS p ON p.id = si.price_id
        JOIN (VALUES ('day', 365, 12), ('week', 52, 12), ('month', 1, 1), ('year', 1, 12)) AS m(interval, months, per)
          ON m.interval = p.interval
        CROSS JOIN LATERAL (
            SELECT p.unit_amount IS NOT NULL AND p.usage_type IS DISTINCT FROM 'metered'
                   AND p.currency = coalesce(s.customer_currency, s.currency, p.currency) AS counted
        ) AS rule
        WHERE si.subscription_id = s.id
    ) AS items
    CROSS JOIN LATERAL (
        SELECT sum((applicable.coupon->>'percent_off')::numeric) AS percent_off,
               sum((applicable.coupon->>'amount_off')::bigint)
                   FILTER (WHERE coalesce(applicable.coupon->>'currency', s.currency) = s.currency) AS amount_off
        FROM (
            -- the discounts the subscription names ...
            SELECT dc.coupon
            FROM discounts AS dc
            WHERE dc.id = ANY (ARRAY(SELECT jsonb_array_elements_text(s.discount_ids))) AND NOT dc.deleted
            UNION ALL
            -- ... or, when its payload names none, the live ones pointing at it
            SELECT dc.coupon
            FROM discounts AS dc
            WHERE s.discount_ids IS NULL AND dc.subscription_id = s.id AND NOT dc.deleted
        ) AS applicable
    ) AS terms
),
updated_subscriptions AS (
    UPDATE subscriptions AS s SET mrr = sa.mrr
    FROM subscription_amounts AS sa
    WHERE s.id = sa.id AND sa.stored_mrr <> sa.mrr
),
customer_amounts AS (
    SELECT t.id, coalesce(sum(sa.mrr) FILTER (WHERE sa.status IN ('active', 'past_due')), 0)::bigint AS mrr
    FROM target AS t
    LEFT JOIN subscription_amounts AS sa ON sa.customer_id = t.id
    GROUP BY t.id
)
UPDATE customers AS c
SET mrr = ca.mrr,
    last_payment_id = lp.id,
    last_payment_amount = lp.amount,
    last_payment_currency = lp.currency,
    last_payment_description = lp.description,
    last_payment_at = lp.at
FROM customer_amounts AS ca
LEFT JOIN LATERAL (
    SELECT made.*
    FROM (
        (SELECT i.id, i.amount_paid AS amount, i.currency, i.description, i.paid_at AS at, 1 AS preference
         FROM invoices AS i
         WHERE i.customer_id = ca.id AND i.status = 'paid' AND i.amount_paid > 0 AND i.paid_at IS NOT NULL
           AND NOT i.deleted
         ORDER BY i.paid_at DESC, i.id DESC
         LIMIT 1)
        UNION ALL
        (SELECT p.id, p.amount, p.currency, p.description, p.paid_at, 0
         FROM payments AS p
         WHERE p.customer_id = ca.id AND p.kind = 'charge' AND p.status = 'succeeded' AND p.paid_at IS NOT NULL
           AND p.invoice_id IS NULL
         ORDER BY p.paid_at DESC, p.id DESC
         LIMIT 1)
    ) AS made
    ORDER BY made.at DESC, made.preference DESC, made.id DESC
    LIMIT 1
) AS lp ON true
WHERE c.id = ca.id
  AND (c.mrr, c.last_payment_id, c.last_payment_amount, c.last_payment_currency, c.last_payment_description,
       c.last_payment_at)
      IS DISTINCT FROM (ca.mrr, lp.id, lp.amount, lp.currency, lp.description, lp.at)
"""


# An import's batches leave their customers' MRR and last payment for its end (sql/0018).
MARK_UNSETTLED = "INSERT INTO billing_unsettled (customer_id) SELECT unnest($1::text[]) ON CONFLICT DO NOTHING"
UNSETTLED_AFTER = """
SELECT customer_id FROM billing_unsettled
WHERE customer_id > $1 AND abs(hashtext(customer_id)::int8) % $4 = $3
ORDER BY customer_id LIMIT $2
"""
TAKE_UNSETTLED = "DELETE FROM billing_unsettled WHERE customer_id = ANY($1::text[]) RETURNING customer_id"
COUNT_UNSETTLED = "SELECT count(*) FROM billing_unsettled"
SETTLE_BATCH = 500


async def refresh_billing(conn: asyncpg.Connection, customer_ids: list[str], ctx: ProcessingContext) -> None:
    """Refresher: recompute MRR and last payment for the touched customers (sorted, locked by the batch)."""
    if ctx.rebuilding:
        # A rebuild touches most customers in batch after batch; recomputing them each time
        # cost a tenth of its time. It ends with refresh_customers over every customer instead.
        return
    if ctx.billing_later:
        # An import's customers, for its end (settle_unsettled): each is recomputed once, not
        # once per batch that touched it.
        await conn.execute(MARK_UNSETTLED, customer_ids)
        return
    await refresh_customers(conn, customer_ids)


async def settle_unsettled(conn: asyncpg.Connection, part: tuple[int, int] = (0, 1)) -> int:
    """Recompute MRR and last payment of the customers an import left for later, SETTLE_BATCH per
    transaction, in one pass in id order; return how many. `part`: (k, n), only the customers of
    part k of n (by hash of the id), for n passes side by side. A customer that another
    transaction holds (a batch in flight, which marks or recomputes it itself) is left for the
    next pass."""
    settled, after = 0, ""
    while ids := [row["customer_id"] for row in await conn.fetch(UNSETTLED_AFTER, after, SETTLE_BATCH, *part)]:
        after = ids[-1]
        async with conn.transaction():
            idle = await segments.lock_idle_customers(conn, ids)
            taken = sorted(row["customer_id"] for row in await conn.fetch(TAKE_UNSETTLED, idle)) if idle else []
            if taken:
                await refresh_customers(conn, taken)
        settled += len(taken)
    return settled


async def refresh_customers(conn: asyncpg.Connection, customer_ids: list[str]) -> None:
    """Recompute MRR and last payment for these customers; the caller holds their locks."""
    await conn.execute(REFRESH_BILLING, customer_ids)
