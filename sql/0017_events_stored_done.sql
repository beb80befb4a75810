-- An event may now be stored already processed: an import's batch stores its events and
-- applies them in one transaction (`insert_events(done=True)`), so the row is written once in
-- its final state instead of inserted pending and then rewritten (an UPDATE that touched
-- every index of the log, and fired both count triggers, for every event). The per-minute
-- activity (0012) counted `processed` only on a status change; an insert of processed or
-- ignored events now counts them too, so the dashboard's chart and GET /api/sync/history show
-- an import's events as received and processed in the same minute.
CREATE OR REPLACE FUNCTION count_received_minute() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO stripe_event_minutes (minute, received, processed)
    SELECT date_trunc('minute', now()), count(*), count(*) FILTER (WHERE status IN ('processed', 'ignored'))
    FROM inserted HAVING count(*) > 0;
    RETURN NULL;
END $$;
