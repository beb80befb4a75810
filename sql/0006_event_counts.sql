-- Event counts by status without scanning the log: /metrics and /api/sync ask on every call,
-- and count(*) over millions of stored events takes seconds.
--
-- Every statement that inserts, deletes or changes the status of stored events appends one
-- row per status it changed (a delta). Appending takes no row lock, so the web process's
-- inserts never wait for a worker's open transaction. Readers sum the deltas; the worker's
-- sweeper folds them into one row per status now and then.

CREATE TABLE stripe_event_counts (
    status text NOT NULL,
    n bigint NOT NULL
);

CREATE FUNCTION count_inserted_events() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO stripe_event_counts (status, n)
    SELECT status, count(*) FROM inserted GROUP BY status;
    RETURN NULL;
END $$;

CREATE FUNCTION count_deleted_events() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO stripe_event_counts (status, n)
    SELECT status, -count(*) FROM deleted GROUP BY status;
    RETURN NULL;
END $$;

CREATE FUNCTION count_status_changes() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO stripe_event_counts (status, n)
    SELECT status, sum(n) FROM (
        SELECT status, count(*) AS n FROM after_update GROUP BY status
        UNION ALL
        SELECT status, -count(*) FROM before_update GROUP BY status
    ) AS changes
    GROUP BY status
    HAVING sum(n) <> 0;
    RETURN NULL;
END $$;

CREATE FUNCTION forget_event_counts() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    DELETE FROM stripe_event_counts;
    RETURN NULL;
END $$;

CREATE TRIGGER stripe_events_counted_insert AFTER INSERT ON stripe_events
    REFERENCING NEW TABLE AS inserted FOR EACH STATEMENT EXECUTE FUNCTION count_inserted_events();
CREATE TRIGGER stripe_events_counted_delete AFTER DELETE ON stripe_events
    REFERENCING OLD TABLE AS deleted FOR EACH STATEMENT EXECUTE FUNCTION count_deleted_events();
CREATE TRIGGER stripe_events_counted_update AFTER UPDATE ON stripe_events
    REFERENCING OLD TABLE AS before_update NEW TABLE AS after_update
    FOR EACH STATEMENT EXECUTE FUNCTION count_status_changes();
CREATE TRIGGER stripe_events_counted_truncate AFTER TRUNCATE ON stripe_events
    FOR EACH STATEMENT EXECUTE FUNCTION forget_event_counts();

-- The triggers exist from here on and the lock they took holds back writers until this
-- migration commits, so this count and the deltas to come add up exactly.
INSERT INTO stripe_event_counts (status, n)
SELECT status, count(*) FROM stripe_events GROUP BY status;
