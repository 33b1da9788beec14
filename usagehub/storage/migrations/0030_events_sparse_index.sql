-- Compressed events without the automatic bloom filter (issue 18: bytes per event on TimescaleDB).
--
-- TimescaleDB (2.26+) adds a composite bloom filter over (ts, event_id) to every compressed batch of events,
-- because the primary key holds those columns after the segment columns. It was 1.53 B of the 17.7 B of
-- column values per event, and the hypertable 3.4 B per event larger (22.7 against 19.3 B, bench/
-- compressed_columns.py, 269K events). What it would serve, the duplicate check of a late event that lands in
-- a compressed chunk, is already narrowed to one batch by the segment (device, meter) and the batch's ts
-- range; inserting a quarter-hour of the fleet again into compressed chunks took as long without it (new
-- events 69 against 75 ms, duplicates 40 against 58 ms, same run, loaded machine). Readers get the same rows:
-- a sparse index only decides which batches are decompressed. Chunks compressed before keep their filter
-- until they are compressed again; plain PostgreSQL has nothing to change.
DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'timescaledb')
       OR NOT EXISTS (SELECT 1 FROM timescaledb_information.hypertables WHERE hypertable_name = 'events') THEN
        RETURN;
    END IF;
    ALTER TABLE events SET (timescaledb.compress, timescaledb.compress_segmentby = 'device_id, meter',
                            timescaledb.compress_orderby = 'ts, event_id', timescaledb.sparse_index = '');
END $$;
