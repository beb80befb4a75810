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

-- The last evaluation of each customer: the segments it is in, as a bit mask over the
-- definitions in handlers/segments.py (bit i = the i-th segment), and when its time-based
-- segments may next change with no event at all (a trial ends, activity grows 2 or 15 days
-- old). Full refreshes diff against this one narrow row per customer, and the scheduled
-- refresh re-evaluates just the customers due. Written only with segment_memberships, by
-- the same statement. No row: in no segment, nothing due.
CREATE TABLE segment_evaluations (
    customer_id text NOT NULL,
    segments bigint NOT NULL DEFAULT 0,
    review_at timestamptz,
    PRIMARY KEY (customer_id) INCLUDE (segments, review_at)
);
CREATE INDEX segment_evaluations_review_idx ON segment_evaluations (review_at) WHERE review_at IS NOT NULL;

-- A full refresh reads every subscription's status and trial end in customer order.
CREATE INDEX subscriptions_segment_facts_idx ON subscriptions (customer_id) INCLUDE (status, trial_end);

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
