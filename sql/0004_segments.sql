-- Lifecycle segment membership with its history, and an outbox for segment-change webhooks.

CREATE TABLE segment_memberships (
    segment text NOT NULL,
    customer_id text NOT NULL,
    entered_at timestamptz NOT NULL,
    PRIMARY KEY (segment, customer_id)
);
CREATE INDEX segment_memberships_customer_idx ON segment_memberships (customer_id);

CREATE TABLE segment_history (
    id bigserial PRIMARY KEY,
    segment text NOT NULL,
    customer_id text NOT NULL,
    change text NOT NULL CHECK (change IN ('entered', 'exited')),
    at timestamptz NOT NULL,
    cause text NOT NULL          -- an event id, or 'refresh' for the scheduled refresh
);
CREATE INDEX segment_history_segment_idx ON segment_history (segment, at, id);
CREATE INDEX segment_history_customer_idx ON segment_history (customer_id);

-- Side effects are written here inside the processing transaction and delivered by a job.
CREATE TABLE outbox (
    id bigserial PRIMARY KEY,
    kind text NOT NULL,
    payload jsonb NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    attempts integer NOT NULL DEFAULT 0,
    next_attempt_at timestamptz NOT NULL DEFAULT now(),
    delivered_at timestamptz,
    last_error text
);
CREATE INDEX outbox_due_idx ON outbox (next_attempt_at) WHERE delivered_at IS NULL;
