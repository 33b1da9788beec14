-- Retroactive binding: every allocated piece of usage is stored, bound or not, with
-- the entry it came from, so a binding registered after the data re-allocates
-- exactly what binding first would have allocated.
ALTER TABLE session_points ALTER COLUMN account_id DROP NOT NULL;
ALTER TABLE session_points
    ADD COLUMN entry_ref      text,          -- '<entry kind>:<cause>' of usage points; NULL for gauge/state
    ADD COLUMN entry_since    timestamptz,   -- the entry's (since, ts]; since NULL: an instant
    ADD COLUMN entry_ts       timestamptz,
    ADD COLUMN entry_quantity numeric;
CREATE INDEX session_points_device_end ON session_points (device_id, end_ts);
