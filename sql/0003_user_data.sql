-- What users add themselves, kept apart from Stripe-derived rows so that replay, import,
-- backfill and `replay --rebuild` never touch it; and the tombstones of deleted customers.
-- No foreign keys to customers: a rebuild empties customers and must leave these alone.

CREATE TABLE customer_attributes (
    customer_id text PRIMARY KEY,
    attributes jsonb NOT NULL DEFAULT '{}' CHECK (jsonb_typeof(attributes) = 'object'),
    updated_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE customer_tags (
    customer_id text NOT NULL,
    tag text NOT NULL CHECK (tag <> '' AND length(tag) <= 100),
    created_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (customer_id, tag)
);

CREATE TABLE customer_activity (
    customer_id text NOT NULL,
    at timestamptz NOT NULL,
    PRIMARY KEY (customer_id, at)
);

-- A customer deleted in Stripe: a late event must never bring its data back. Survives
-- `replay --rebuild`: in `delete` mode it is all that is left of the customer.
CREATE TABLE customer_tombstones (
    customer_id text PRIMARY KEY,
    account text,
    deleted_at timestamptz NOT NULL,     -- the deleting event's created time
    event_id text NOT NULL,
    -- When stored events naming the customer outside their own `customer` field were scrubbed:
    -- that search reads every payload, so it runs once, not on every replay of the deletion.
    mentions_scrubbed_at timestamptz
);
