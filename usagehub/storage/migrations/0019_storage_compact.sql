-- Storage compaction and the account-month billing read (issue 18, bench/storage_size.py --breakdown).
--
-- Billing read (storage.rating_usage.usage_points: one account, kind 'usage', a month of start_ts): the old
-- (account_id, service, start_ts) index found the rows, then fetched ~6000 heap tuples scattered over as many
-- pages (points are written a batch at a time for the whole fleet). This index carries the columns that
-- read returns, so it is an index-only scan over a few dozen adjacent pages; service follows start_ts so the
-- session core's (account, service, start_ts >=) read is served by the same index, and it replaces the old
-- one instead of adding a second index to every point insert.
DROP INDEX IF EXISTS session_points_account;
CREATE INDEX session_points_account_time ON session_points (account_id, start_ts, service)
    INCLUDE (kind, point_id, product, device_id, end_ts, value, label, aggregation);

-- Monthly event partitions whose primary-key index was rebuilt compactly once the month was over
-- (storage/retention_pack.py). Rows arrive in time order for the whole fleet, so every device's key range
-- splits its page half-full each day: the index of a loaded month is ~55 % leaf-full (104 B per event
-- measured) and ~90 % (59 B) once rebuilt. TimescaleDB compresses old chunks instead; this stays empty there.
CREATE TABLE events_packed (
    partition  text PRIMARY KEY,
    bytes_before bigint NOT NULL,
    bytes_after  bigint NOT NULL,
    packed_at  timestamptz NOT NULL DEFAULT now()
);

-- Redundant: every read of usage_entries names the device (usage_entries_device_ts serves it; the usage query
-- reaches devices through bindings). TimescaleDB's migration 0014 already dropped it; chunk exclusion serves
-- time-only ranges there.
DROP INDEX IF EXISTS usage_entries_ts;
