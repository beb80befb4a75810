-- A `replay --rebuild` applies the stored events in lanes that run side by side: every event of
-- one customer (and every event of no customer) falls in the same lane, applied there in Stripe
-- order, and each lane keeps its own resume cursor, advanced in the transaction of each of its
-- batches. Two lanes keep the replay process busy with one batch's handlers while PostgreSQL
-- writes the other's; with one cursor for all, a batch could not commit before the one ahead
-- of it, and consecutive batches share customers (their locks), so they cannot overlap.
--
-- Element i (1-based) of both arrays is the last event applied by lane i - 1; NULL while that
-- lane has applied nothing. Both columns are NULL for a rebuild started before this migration,
-- which resumes on the single cursor (after_created, after_id).
ALTER TABLE replay_rebuilds
    ADD COLUMN lane_after_created timestamptz[],
    ADD COLUMN lane_after_id text[];
