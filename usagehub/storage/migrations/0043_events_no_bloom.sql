-- Compressed events without the automatic bloom filter (issue 18: bytes per event on TimescaleDB).
--
-- TimescaleDB 2.26+ adds a composite bloom filter over (ts, event_id) to every compressed batch of events
-- (the primary key's columns after the segment columns): 3.4 B of the 22.7 B per event of the hypertable
-- (bench/compressed_columns.py, 269K events). It only narrows the duplicate check of a late event in a
-- compressed chunk, which the segment (device, meter) and the batch's ts range narrow to one batch already.
-- An empty list (sparse_index = '') made TimescaleDB 2.29.2 crash the backend on the usage neighbours query
-- (the first attempt, migration 0030, was dropped for it); naming the one sparse index the batches need,
-- min/max of ts, replaces the automatic set without that crash (tests/storage/test_timescale_compact.py
-- runs that query over chunks compressed so). Chunks compressed before keep their filter until they are
-- compressed again; plain PostgreSQL has nothing to change.
DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'timescaledb') THEN
        RETURN;  -- the catalog view below exists only with the extension
    END IF;
    IF NOT EXISTS (SELECT 1 FROM timescaledb_information.hypertables WHERE hypertable_name = 'events') THEN
        RETURN;
    END IF;
    ALTER TABLE events SET (timescaledb.compress, timescaledb.compress_segmentby = 'device_id, meter',
                            timescaledb.compress_orderby = 'ts, event_id', timescaledb.sparse_index = 'minmax(ts)');
END $$;
