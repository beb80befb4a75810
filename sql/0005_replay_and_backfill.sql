-- Resumable long commands: the marker of a `replay --rebuild` in progress, and the cursors of
-- `backfill`, so that an interrupted run continues where it stopped instead of starting over.

-- At most one row: a rebuild emptied the Stripe-derived tables and is refilling them.
-- While it exists the model is incomplete: /api/sync says "rebuilding" and `replay` resumes it.
CREATE TABLE replay_rebuilds (
    singleton boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    started_at timestamptz NOT NULL DEFAULT now(),
    through_received_at timestamptz NOT NULL,  -- events received later are the live worker's
    after_created timestamptz,                 -- the last event applied: a resumed rebuild continues after it
    after_id text,
    events_done bigint NOT NULL DEFAULT 0,
    events_total bigint NOT NULL
);

-- One `backfill` from the Stripe API; finished once everything listed is stored and processed.
CREATE TABLE backfill_runs (
    id bigserial PRIMARY KEY,
    only_new boolean NOT NULL,
    started_at timestamptz NOT NULL DEFAULT now(),
    events_since timestamptz NOT NULL,         -- no event created before this is fetched
    finished_at timestamptz
);

-- Where each listing of a run stands.
CREATE TABLE backfill_cursors (
    run_id bigint NOT NULL REFERENCES backfill_runs (id) ON DELETE CASCADE,
    resource text NOT NULL,
    snapshot_at timestamptz NOT NULL,          -- when this listing started: `created` of its synthetic events
    starting_after text,                       -- the last object stored: a resumed listing continues after it
    listed bigint NOT NULL DEFAULT 0,
    finished_at timestamptz,
    PRIMARY KEY (run_id, resource)
);
