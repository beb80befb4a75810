-- A rebuild's lanes become computable by PostgreSQL, so that each lane (a process of its own)
-- reads only its own events: a customer's lane is now hashtextextended(customer_id, 0), the hash
-- of its advisory lock, modulo the number of lanes (events of no customer: lane 0). 0015's lanes
-- were crc32 of the customer id, which only Python computes; a rebuild interrupted under those
-- must resume on them, so the marker says which hash its lane cursors follow.
--
-- NULL: crc32 (a rebuild started under 0015, or before lanes: then both lane arrays are NULL).
ALTER TABLE replay_rebuilds
    ADD COLUMN lane_hash text CHECK (lane_hash IN ('hashtextextended'));
