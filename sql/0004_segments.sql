-- Lifecycle segment membership with its history, the schedule of time-based re-evaluations,
-- and an outbox for segment-change webhooks. The rules themselves live in handlers/segments.py.

-- Current members: one row per (segment, customer). The primary key serves the keyset-paginated
-- member list of a segment; the customer index serves "which segments is this customer in".
CREATE TABLE segment_memberships (
    segment text NOT NULL,
    customer_id text NOT NULL,
    entered_at timestamptz NOT NULL,
    PRIMARY KEY (segment, customer_id)
);
CREATE INDEX segment_memberships_customer_idx ON segment_memberships (customer_id);

-- Every entry and exit, append-only.
CREATE TABLE segment_history (
    id bigserial PRIMARY KEY,
    segment text NOT NULL,
    customer_id text NOT NULL,
    change text NOT NULL CHECK (change IN ('entered', 'exited')),
    at timestamptz NOT NULL,
    cause text NOT NULL          -- an event id, 'activity', or 'refresh' for the scheduled refresh
);
CREATE INDEX segment_history_segment_idx ON segment_history (segment, at, id);
CREATE INDEX segment_history_customer_idx ON segment_history (customer_id);

-- When a customer's time-based segments may next change with no event at all (a trial ends,
-- activity grows 2 or 15 days old). The scheduled refresh re-evaluates only the customers due.
CREATE TABLE segment_reviews (
    customer_id text PRIMARY KEY,
    review_at timestamptz NOT NULL
);
CREATE INDEX segment_reviews_due_idx ON segment_reviews (review_at);

-- One row: the segment definitions last evaluated for everyone, and when the scheduled refresh
-- last ran. New or changed definitions trigger one full refresh.
CREATE TABLE segment_refresh_state (
    singleton boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    definitions text,
    refreshed_at timestamptz
);
INSERT INTO segment_refresh_state DEFAULT VALUES;

-- Side effects are written here inside the processing transaction and delivered by a job.
CREATE TABLE outbox (
    id bigserial PRIMARY KEY,
    kind text NOT NULL,
    payload jsonb NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    attempts integer NOT NULL DEFAULT 0,
    next_attempt_at timestamptz NOT NULL DEFAULT now(),   -- 'infinity' once delivery is given up
    delivered_at timestamptz,
    last_error text
);
CREATE INDEX outbox_due_idx ON outbox (next_attempt_at) WHERE delivered_at IS NULL;
