-- The billing model derived from Stripe events: customers, subscriptions and their items,
-- prices, products, invoices, payments and discounts. Every row is keyed by its Stripe id,
-- carries the Connect account (null without Connect) and the version of the event that last
-- wrote it: (event_created, event_rank, event_id). An older version never overwrites a newer one
-- (handlers/writes.py). event_rank orders the events of one object within one second by what
-- their type and payload prove (a `*.created` first, a deletion last, invoice status forward);
-- 0 marks a snapshot taken from another object's payload (a price inside a subscription).
-- Placeholder rows (an object known only by reference so far) carry event_created '-infinity'.

CREATE TABLE customers (
    id text PRIMARY KEY,
    account text,
    livemode boolean,
    email text,
    name text,
    phone text,
    description text,
    address jsonb,               -- {line1, line2, city, state, postal_code, country}
    delinquent boolean NOT NULL DEFAULT false,
    currency text,
    metadata jsonb NOT NULL DEFAULT '{}',
    created_at timestamptz,
    deleted_in_stripe boolean NOT NULL DEFAULT false,   -- terminal: no customer event clears it
    deleted_at timestamptz,
    mrr bigint NOT NULL DEFAULT 0,            -- minor units of `currency`, per month
    -- The latest successful payment (a paid invoice or a charge), kept by the billing refresh.
    last_payment_id text,
    last_payment_amount bigint,
    last_payment_currency text,
    last_payment_description text,
    last_payment_at timestamptz,
    event_created timestamptz NOT NULL DEFAULT '-infinity',
    event_rank smallint NOT NULL DEFAULT 0,
    event_id text,
    last_synced_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX customers_email_idx ON customers (lower(email)) WHERE email IS NOT NULL;

CREATE TABLE products (
    id text PRIMARY KEY,
    account text,
    name text,
    active boolean,
    deleted boolean NOT NULL DEFAULT false,
    event_created timestamptz NOT NULL DEFAULT '-infinity',
    event_rank smallint NOT NULL DEFAULT 0,
    event_id text,
    last_synced_at timestamptz NOT NULL DEFAULT now()
);

-- Prices and legacy plans (a plan's id is also its price's id).
CREATE TABLE prices (
    id text PRIMARY KEY,
    account text,
    product_id text,
    active boolean,
    currency text,
    unit_amount bigint,          -- minor units; null for tiered or custom prices
    type text,                   -- one_time | recurring
    interval text CHECK (interval IN ('day', 'week', 'month', 'year')),
    interval_count integer CHECK (interval_count > 0),
    usage_type text,             -- licensed | metered (metered items count zero in MRR)
    nickname text,
    deleted boolean NOT NULL DEFAULT false,
    event_created timestamptz NOT NULL DEFAULT '-infinity',
    event_rank smallint NOT NULL DEFAULT 0,
    event_id text,
    last_synced_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE subscriptions (
    id text PRIMARY KEY,
    account text,
    customer_id text NOT NULL,
    status text NOT NULL CHECK (status IN ('incomplete', 'incomplete_expired', 'trialing', 'active',
                                           'past_due', 'canceled', 'unpaid', 'paused')),
    currency text,
    created_at timestamptz,
    trial_start timestamptz,
    trial_end timestamptz,
    canceled_at timestamptz,
    ended_at timestamptz,
    cancel_at timestamptz,
    cancel_at_period_end boolean NOT NULL DEFAULT false,
    current_period_start timestamptz,
    current_period_end timestamptz,
    -- Ids of the discounts the subscription names (a JSON array); null when its payload does not say.
    discount_ids jsonb,
    mrr bigint NOT NULL DEFAULT 0,   -- monthly amount after discounts; the customer counts it only while active/past_due
    metadata jsonb NOT NULL DEFAULT '{}',
    event_created timestamptz NOT NULL DEFAULT '-infinity',
    event_rank smallint NOT NULL DEFAULT 0,
    event_id text,
    last_synced_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX subscriptions_customer_idx ON subscriptions (customer_id);

-- Items are part of their subscription's snapshot: rewritten whenever the subscription is.
CREATE TABLE subscription_items (
    id text PRIMARY KEY,
    subscription_id text NOT NULL REFERENCES subscriptions (id) ON DELETE CASCADE,
    price_id text,
    product_id text,
    quantity integer NOT NULL DEFAULT 1 CHECK (quantity >= 0),
    current_period_start timestamptz,  -- basil and later keep the period on each item
    current_period_end timestamptz
);
CREATE INDEX subscription_items_subscription_idx ON subscription_items (subscription_id);

CREATE TABLE invoices (
    id text PRIMARY KEY,
    account text,
    customer_id text,
    subscription_id text,
    status text CHECK (status IN ('draft', 'open', 'paid', 'void', 'uncollectible')),
    number text,
    billing_reason text,
    currency text,
    amount_due bigint,
    amount_paid bigint,
    amount_remaining bigint,
    total bigint,
    description text,            -- the invoice's description, else its first line's
    created_at timestamptz,
    period_start timestamptz,
    period_end timestamptz,
    due_date timestamptz,
    paid_at timestamptz,
    attempt_count integer,
    next_payment_attempt timestamptz,
    deleted boolean NOT NULL DEFAULT false,   -- terminal
    event_created timestamptz NOT NULL DEFAULT '-infinity',
    event_rank smallint NOT NULL DEFAULT 0,
    event_id text,
    last_synced_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX invoices_customer_idx ON invoices (customer_id);

-- Charges and (basil) invoice payments: money that moved, or failed to.
-- An invoice payment's payload names no customer: its customer is its invoice's.
CREATE TABLE payments (
    id text PRIMARY KEY,         -- ch_..., py_... or inpay_...
    account text,
    kind text NOT NULL CHECK (kind IN ('charge', 'invoice_payment')),
    customer_id text,
    invoice_id text,
    payment_intent_id text,
    status text,                 -- succeeded | pending | failed (charges); paid | open | canceled (invoice payments)
    amount bigint NOT NULL,
    amount_refunded bigint NOT NULL DEFAULT 0,
    currency text NOT NULL,
    description text,
    failure_code text,
    created_at timestamptz,
    paid_at timestamptz,
    event_created timestamptz NOT NULL DEFAULT '-infinity',
    event_rank smallint NOT NULL DEFAULT 0,
    event_id text,
    last_synced_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX payments_customer_idx ON payments (customer_id, paid_at);
CREATE INDEX payments_invoice_idx ON payments (invoice_id) WHERE invoice_id IS NOT NULL;

CREATE TABLE discounts (
    id text PRIMARY KEY,
    account text,
    customer_id text,
    subscription_id text,
    coupon jsonb NOT NULL,       -- {id, percent_off, amount_off, currency, duration, duration_in_months}
    start_at timestamptz,
    end_at timestamptz,
    deleted boolean NOT NULL DEFAULT false,   -- terminal
    event_created timestamptz NOT NULL DEFAULT '-infinity',
    event_rank smallint NOT NULL DEFAULT 0,
    event_id text,
    last_synced_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX discounts_customer_idx ON discounts (customer_id);
CREATE INDEX discounts_subscription_idx ON discounts (subscription_id) WHERE subscription_id IS NOT NULL;
