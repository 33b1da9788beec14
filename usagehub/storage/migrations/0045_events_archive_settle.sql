-- The archive of finished months, made safe for concurrent readers and complete (storage/archive.py,
-- storage/archive_late.py).
--
-- An archived month's partition is now emptied by DELETE in the archiving transaction (MVCC-safe: a snapshot
-- older than the archive still reads the rows, a newer one reads the archive), and TRUNCATEd by a later
-- housekeeping round only once no snapshot older than the last DELETE can exist and the partition holds no live
-- row. Late rows of an archived month are folded into the archive by that round too (merged into the day's row,
-- arrays in key order, an identity never doubled), by DELETE again.
--
-- emptied_xid: the newest transaction that deleted rows of this partition (archive or fold) while the partition
-- is not truncated since; NULL when nothing deleted waits for a TRUNCATE (months archived by TRUNCATE before
-- this migration). late_events: late events folded in so far (duplicates of archived identities included,
-- they are dropped). truncated_at: the last TRUNCATE.
ALTER TABLE events_archived ADD COLUMN emptied_xid xid8;
ALTER TABLE events_archived ADD COLUMN late_events bigint NOT NULL DEFAULT 0;
ALTER TABLE events_archived ADD COLUMN truncated_at timestamptz;
