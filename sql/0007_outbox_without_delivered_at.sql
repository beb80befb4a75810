-- A delivered segment webhook is deleted from the outbox (segment_history is the permanent
-- record), so `delivered_at` was never written: drop it, and the index that filtered on it.
DROP INDEX outbox_due_idx;
ALTER TABLE outbox DROP COLUMN delivered_at;
CREATE INDEX outbox_due_idx ON outbox (next_attempt_at);
