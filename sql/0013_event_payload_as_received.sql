-- The event log keeps each payload as the JSON text it was received in (json, not jsonb), and
-- compresses it with lz4 where the server has it.
--
-- Why: every webhook is stored once and read back by the worker at least once, while SQL
-- looks inside a payload only when a customer is deleted (the scrub's search, which casts to
-- jsonb). As jsonb, each stored event was parsed into a tree, compressed with pglz (the
-- default, and the slowest part of an INSERT of a 4 KB event), then decompressed and written
-- back out as text for every reader. As json, PostgreSQL only checks the syntax on the way in
-- and hands the text out as it is; lz4 compresses and decompresses several times faster than
-- pglz for about the same size. Readers see the same JSON values (key order may differ from
-- jsonb's, which sorts keys; no answer depends on it).
--
-- Existing installs: the ALTER rewrites the table once (under its lock: the web answers 503
-- meanwhile and Stripe retries), storing each payload in jsonb's own text form.
ALTER TABLE stripe_events ALTER COLUMN payload TYPE json USING payload::json;

-- lz4 needs a server built with it (PostgreSQL 14 or later, --with-lz4: Debian's, Heroku's,
-- RDS's); elsewhere the column keeps the default compression, which only costs CPU.
DO $$
BEGIN
    ALTER TABLE stripe_events ALTER COLUMN payload SET COMPRESSION lz4;
EXCEPTION WHEN feature_not_supported OR syntax_error THEN
    RAISE NOTICE 'stripe_events.payload keeps the default compression: %', SQLERRM;
END $$;
