-- The durable event log: every verified Stripe event, stored once, with its processing state.
-- This is the source of truth; everything else can be rebuilt from it by `stripeline replay`.

CREATE TABLE stripe_events (
    id text PRIMARY KEY CHECK (id <> ''),
    type text NOT NULL CHECK (type <> ''),
    account text,                -- Connect account (null for the platform's own events)
    livemode boolean NOT NULL DEFAULT false,
    api_version text,
    created timestamptz NOT NULL,
    object_type text,            -- data.object.object, e.g. 'subscription'
    object_id text,              -- data.object.id (null for objects without one, e.g. invoice.upcoming)
    customer_id text,            -- the customer the event concerns, when the payload names one
    payload jsonb NOT NULL,
    received_at timestamptz NOT NULL DEFAULT now(),
    status text NOT NULL DEFAULT 'pending'
        CHECK (status IN ('pending', 'processed', 'ignored', 'failed')),
    attempts integer NOT NULL DEFAULT 0 CHECK (attempts >= 0),
    last_error text,
    next_attempt_at timestamptz, -- when a failed attempt may be retried; null means now
    processed_at timestamptz
);

-- Replay order and time filters.
CREATE INDEX stripe_events_created_idx ON stripe_events (created, id);
-- The customer's timeline, replay --customer, and deletion of a customer's events.
CREATE INDEX stripe_events_customer_idx ON stripe_events (customer_id, created) WHERE customer_id IS NOT NULL;
-- Same-second tie resolution looks up every event of one object in one second.
CREATE INDEX stripe_events_object_idx ON stripe_events (object_id, created) WHERE object_id IS NOT NULL;
-- The sweeper and /api/sync look at unfinished events only; this index stays small.
CREATE INDEX stripe_events_unfinished_idx ON stripe_events (received_at) WHERE status IN ('pending', 'failed');
-- /api/sync and /metrics ask for the latest arrival on every call: without this, a scan of the log.
CREATE INDEX stripe_events_received_idx ON stripe_events (received_at);
