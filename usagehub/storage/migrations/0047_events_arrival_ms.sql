-- Arrival times to the millisecond (issue 18: <= 10 B per compressed event on TimescaleDB).
--
-- received_at and ingested_at are the hub's own clock, not a device fact (the lead's decision, 2026-11-29): the
-- hub records them to the whole millisecond; a device's timestamp (ts) and every value stay exact. The event
-- writers truncate received_at (storage/events.py, storage/events_direct.py) and ingested_at's default is the
-- transaction's time truncated, on both storages, so both keep giving the same answers.
--
-- Why: compressed, their microsecond jitter cost 4.2 + 3.3 B per event (bench/compressed_columns.py), and a
-- timestamptz keeps costing it when truncated (delta-of-delta in µs keeps the bits); as integer milliseconds the
-- two cost ~2 B each and the compressed batches no longer spill into TOAST pages: 13.9 -> 7.7 B per event at
-- 2.15M events, 7-day chunks (docs/storage.md). So, on TimescaleDB only, a chunk's rows whose two arrival times are
-- whole milliseconds get, when the chunk is compressed (events_compress_chunk), received_ms = the milliseconds
-- after ts truncated to the millisecond, ingested_ms = the milliseconds after received_at, with received_at and
-- ingested_at NULL; both read back exactly through events_rows. Rows with microseconds (stored before this
-- migration, or by another writer) keep them, as timestamptz: nothing stored is rounded here.
-- Offsets are bounded by 4.5e12 ms (~142 years; a device clock at 1970 is 56 years off) so that
-- ms * interval '1 millisecond' (float8 * interval) is exact: |ms| * 1000 < 2^53.
--
-- An existing database: chunks compressed before keep their timestamptz arrival times (and their microseconds);
-- chunks compressed from now on are converted. Nothing is decompressed or rewritten here.

ALTER TABLE events ALTER COLUMN ingested_at SET DEFAULT date_trunc('milliseconds', now());

-- ts truncated to the millisecond (the origin of received_ms), without time zone dependence.
CREATE OR REPLACE FUNCTION events_ms_floor(ts timestamptz) RETURNS timestamptz
LANGUAGE sql IMMUTABLE AS $$
    SELECT date_bin('1 millisecond', ts, TIMESTAMPTZ '2000-01-01 00:00:00+00')
$$;

-- Whole milliseconds from earlier to later (both whole milliseconds: exact).
CREATE OR REPLACE FUNCTION events_ms_after(later timestamptz, earlier timestamptz) RETURNS bigint
LANGUAGE sql IMMUTABLE AS $$
    SELECT (extract(epoch FROM later - earlier) * 1000)::bigint
$$;

-- Whether a row's arrival times have the compact form: both whole milliseconds, offsets within the bound above.
CREATE OR REPLACE FUNCTION events_arrival_fits(ts timestamptz, received_at timestamptz, ingested_at timestamptz)
RETURNS boolean LANGUAGE sql IMMUTABLE AS $$
    SELECT coalesce(events_ms_floor(received_at) = received_at AND events_ms_floor(ingested_at) = ingested_at
                    AND abs(extract(epoch FROM received_at - events_ms_floor(ts))) < 4500000000
                    AND abs(extract(epoch FROM ingested_at - received_at)) < 4500000000, false)
$$;

DO $$
DECLARE
    compact boolean := false;
BEGIN
    IF EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'timescaledb') THEN
        EXECUTE 'SELECT EXISTS (SELECT 1 FROM timescaledb_information.hypertables WHERE hypertable_name = ''events'')'
            INTO compact;
    END IF;
    IF NOT compact OR NOT EXISTS (SELECT 1 FROM pg_attribute WHERE attrelid = 'events'::regclass
                                                                AND attname = 'event_seq') THEN
        RETURN;  -- plain PostgreSQL (events_rows is events): the truncated stamps are all that changes
    END IF;
    ALTER TABLE events ADD COLUMN received_ms bigint, ADD COLUMN ingested_ms bigint;
    ALTER TABLE events ALTER COLUMN received_at DROP NOT NULL, ALTER COLUMN ingested_at DROP NOT NULL;
    -- Exactly one form of both, as NOT NULL required them before.
    ALTER TABLE events ADD CONSTRAINT events_arrival_form CHECK (
        num_nonnulls(received_at, received_ms) = 1 AND num_nonnulls(ingested_at, ingested_ms) = 1
        AND (received_ms IS NULL) = (ingested_ms IS NULL));
    -- The same columns, in the same order, as 0044 made it (events_all and events_described read it).
    CREATE OR REPLACE VIEW events_rows AS
    SELECT device_id, meter, ts, coalesce(event_id, event_seq::text) AS event_id,
           coalesce(value, (value_int || 'e-' || value_scale)::numeric) AS value, meta_id,
           coalesce(received_at, events_ms_floor(ts) + received_ms * interval '1 millisecond') AS received_at,
           reset_marker, text_value,
           coalesce(ingested_at, events_ms_floor(ts) + received_ms * interval '1 millisecond'
                                 + ingested_ms * interval '1 millisecond') AS ingested_at
    FROM events;
END $$;

-- 0044's function, converting the arrival times as well (one UPDATE: a chunk's rows are written once).
CREATE OR REPLACE FUNCTION events_compress_chunk(chunk regclass) RETURNS regclass
LANGUAGE plpgsql AS $$
DECLARE
    compressed boolean;
    v constant text := 'events_value_fits(value)';
    a constant text := 'events_arrival_fits(ts, received_at, ingested_at)';
BEGIN
    EXECUTE 'SELECT is_compressed FROM timescaledb_information.chunks '
            'WHERE hypertable_schema = ''public'' AND hypertable_name = ''events'' '
            'AND format(''%I.%I'', chunk_schema, chunk_name)::regclass = $1' INTO compressed USING chunk;
    IF compressed IS NULL THEN
        RAISE EXCEPTION '% is not a chunk of events', chunk USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF NOT compressed THEN  -- a chunk of the hypertable events: 0044 and this migration added the columns
        EXECUTE format('UPDATE %1$s SET '
                       'value_int = CASE WHEN %2$s THEN (value * power(10::numeric, scale(value)))::bigint '
                       'ELSE value_int END, value_scale = CASE WHEN %2$s THEN scale(value) ELSE value_scale END, '
                       'value = CASE WHEN %2$s THEN NULL ELSE value END, '
                       'received_ms = CASE WHEN %3$s THEN events_ms_after(received_at, events_ms_floor(ts)) '
                       'ELSE received_ms END, '
                       'ingested_ms = CASE WHEN %3$s THEN events_ms_after(ingested_at, received_at) ELSE ingested_ms END, '
                       'received_at = CASE WHEN %3$s THEN NULL ELSE received_at END, '
                       'ingested_at = CASE WHEN %3$s THEN NULL ELSE ingested_at END '
                       'WHERE %2$s OR %3$s', chunk, v, a);
    END IF;
    EXECUTE 'SELECT compress_chunk($1, if_not_compressed => true)' USING chunk;
    RETURN chunk;
END $$;
