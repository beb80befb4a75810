-- The strings each customer-less stored event holds (`mentions`), indexed, so that a customer's
-- deletion finds the events that name it indirectly without reading the whole log.
--
-- Why: the deletion's search of mentions (MENTIONING_EVENTS in handlers/deletion.py: events
-- with no customer of their own that name the customer anywhere in their payload, or one of
-- its charges or payment intents) parsed every customer-less payload stored since the
-- customer was created, as jsonb, once per deletion: about 70 microseconds a payload, 0.5 s
-- per deletion in a log of 200,000 events, and two thirds of PostgreSQL's time for an import
-- into such a log. With `mentions ?| <the customer, its charges and intents>` the index
-- hands over the few candidates (0.1 ms), which the search's own conditions then check as
-- before, so it finds exactly what it found.
--
-- `mentions` is the jsonb array of every string value in the payload, at any depth (the
-- values the search's `strict $.**` visits), kept by a trigger on insert and on any change of
-- the payload (a scrub), for events without a customer only: the others are found by their
-- customer_id. It costs about 40 microseconds per customer-less event stored (the payload is
-- parsed as jsonb once), and their strings stored once more. jsonb_ops (the default operator
-- class) indexes each string; one longer than about 120 bytes is indexed by its hash and
-- rechecked, so no payload can hold a string too long for the index.
--
-- Existing installs: the UPDATE fills the column for the stored customer-less events (a tenth
-- or less of the log), then the index is built; both hold the table's lock meanwhile (seconds
-- for a million events; the web answers 503 and Stripe retries).
ALTER TABLE stripe_events ADD COLUMN mentions jsonb;

CREATE FUNCTION record_event_mentions() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    NEW.mentions := jsonb_path_query_array(NEW.payload::jsonb, 'strict $.** ? (@.type() == "string")');
    RETURN NEW;
END $$;

CREATE TRIGGER stripe_events_mentions BEFORE INSERT OR UPDATE OF payload ON stripe_events
    FOR EACH ROW WHEN (NEW.customer_id IS NULL) EXECUTE FUNCTION record_event_mentions();

UPDATE stripe_events SET mentions = jsonb_path_query_array(payload::jsonb, 'strict $.** ? (@.type() == "string")')
WHERE customer_id IS NULL;

CREATE INDEX stripe_events_mentions_idx ON stripe_events USING gin (mentions) WHERE customer_id IS NULL;
