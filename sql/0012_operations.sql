-- What an operator watches: events received, processed and failed per minute (the dashboard's
-- chart, GET /api/sync/history), the worker's metrics pushed for the web's /metrics, and the
-- indexes behind customer search (GET /api/customers?q=).

-- Per-minute activity of the event log, kept by triggers like the counts of 0006: every
-- statement that stores events or changes their status appends one delta row for its minute,
-- without taking a row lock; readers sum them, and the worker folds them now and then.
-- received: events stored; processed: events that became processed or ignored; failed:
-- processing attempts that failed (an event tried three times and failing counts three).
CREATE TABLE stripe_event_minutes (
    minute timestamptz NOT NULL,
    received bigint NOT NULL DEFAULT 0,
    processed bigint NOT NULL DEFAULT 0,
    failed bigint NOT NULL DEFAULT 0
);
CREATE INDEX stripe_event_minutes_minute_idx ON stripe_event_minutes (minute);

CREATE FUNCTION count_received_minute() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO stripe_event_minutes (minute, received)
    SELECT date_trunc('minute', now()), count(*) FROM inserted HAVING count(*) > 0;
    RETURN NULL;
END $$;

-- Deltas over the whole statement: no join of the old and new rows is needed, as an update
-- never takes an event back from processed and never lowers its attempts.
CREATE FUNCTION count_outcome_minute() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO stripe_event_minutes (minute, processed, failed)
    SELECT date_trunc('minute', now()), after.processed - before.processed, after.attempts - before.attempts
    FROM (SELECT count(*) FILTER (WHERE status IN ('processed', 'ignored')) AS processed,
                 coalesce(sum(attempts), 0) AS attempts FROM after_update) AS after,
         (SELECT count(*) FILTER (WHERE status IN ('processed', 'ignored')) AS processed,
                 coalesce(sum(attempts), 0) AS attempts FROM before_update) AS before
    WHERE after.processed <> before.processed OR after.attempts <> before.attempts;
    RETURN NULL;
END $$;

CREATE TRIGGER stripe_events_minute_insert AFTER INSERT ON stripe_events
    REFERENCING NEW TABLE AS inserted FOR EACH STATEMENT EXECUTE FUNCTION count_received_minute();
CREATE TRIGGER stripe_events_minute_update AFTER UPDATE ON stripe_events
    REFERENCING OLD TABLE AS before_update NEW TABLE AS after_update
    FOR EACH STATEMENT EXECUTE FUNCTION count_outcome_minute();

-- Each worker process pushes its metrics here every few seconds (app/worker_metrics.py) and
-- the web's /metrics shows them with a `worker` label: one scrape target, and it works where
-- a worker has no port of its own (Heroku, Render background workers).
CREATE TABLE worker_metrics (
    worker text PRIMARY KEY,                   -- $DYNO when set, else host:pid
    started_at timestamptz NOT NULL,
    pushed_at timestamptz NOT NULL,
    metrics jsonb NOT NULL                     -- [{name, documentation, type, samples: [[name, labels, value]]}]
);

-- Prefix search on id, email and name, case-insensitive: LIKE 'abc%' can use these whatever
-- the database's collation.
CREATE INDEX customers_id_prefix_idx ON customers (lower(id) text_pattern_ops);
CREATE INDEX customers_email_prefix_idx ON customers (lower(email) text_pattern_ops) WHERE email IS NOT NULL;
CREATE INDEX customers_name_prefix_idx ON customers (lower(name) text_pattern_ops) WHERE name IS NOT NULL;
