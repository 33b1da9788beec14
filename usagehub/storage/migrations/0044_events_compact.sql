-- Compact, exact forms of event ids and values on TimescaleDB (issue 18: <= 10 B per compressed event).
--
-- Compressed, the text event_id cost 4.25 B per event and the numeric value 4.20 B (bench/compressed_columns.py):
-- TimescaleDB stores both as arrays of varlenas, where a bigint is delta-of-delta encoded (0.08 B for sequence
-- numbers, ~1 B for register readings in thousandths). So, on TimescaleDB only:
--   * an event id that is the canonical decimal form of an integer below 10^18 (no sign, no leading zero, ASCII
--     digits: '0', '7', '123'; never '007', '+7', ' 7', '٣' or 19+ digits) is stored as event_seq bigint with
--     event_id NULL, so event_seq::text gives back exactly the text the device sent; any other id stays text with
--     event_seq NULL. The hub's writers store that form (storage/events.py, storage/events_direct.py); a trigger
--     converts other writers' rows (below). Every row has the one form of its id, so the identity (DESIGN 1) is
--     the unique index (device_id, meter, ts, event_id, event_seq) NULLS NOT DISTINCT: the staged insert's
--     ON CONFLICT DO NOTHING and the direct COPY's unique violation find a stored id in either form, in
--     compressed chunks too, without decompressing them (an index on coalesce(event_id, event_seq::text) made
--     TimescaleDB 2.29.2 decompress a batch per inserted row: 200 late rows of a fleet hit its limit of 100,000
--     tuples). compress_orderby is ts alone: per-batch min/max of event_id or event_seq (NULL in some rows)
--     made TimescaleDB skip the batch when checking a duplicate.
--   * a value is converted when its chunk is compressed (events_compress_chunk, run by events_compress_job in
--     place of the compression policy): value_int bigint and value_scale smallint with value NULL, when
--     value * 10^scale(value) is an integer below 10^18 in magnitude with 0 <= scale <= 18 (NaN and infinities
--     stay numeric). The value read back, (value_int || 'e-' || value_scale)::numeric, is the same number with
--     the same scale ('12.500' stays '12.500'). Recent rows keep the value as written.
-- Readers read events_rows, events_all and events_described, which give event_id and value as before.
--
-- Plain PostgreSQL: nothing stored changes (its finished months are folded by storage/archive.py instead);
-- events_rows is events as it is.
--
-- On a TimescaleDB database with compressed chunks this decompresses them (the identity index changes) and
-- rewrites every row with a canonical id; the job converts values and compresses the chunks again. Run it in a
-- quiet hour.

-- Convert the values of an uncompressed chunk of events to the compact form (above) and compress it; a chunk
-- compressed already (late rows since: partially compressed) is compressed again as it is, its late rows' values
-- numeric. Returns the chunk. The only caller of compress_chunk for events (the job below, benchmarks, tests).
CREATE OR REPLACE FUNCTION events_compress_chunk(chunk regclass) RETURNS regclass
LANGUAGE plpgsql AS $$
DECLARE
    compressed boolean;
BEGIN
    EXECUTE 'SELECT is_compressed FROM timescaledb_information.chunks '
            'WHERE hypertable_schema = ''public'' AND hypertable_name = ''events'' '
            'AND format(''%I.%I'', chunk_schema, chunk_name)::regclass = $1' INTO compressed USING chunk;
    IF compressed IS NULL THEN
        RAISE EXCEPTION '% is not a chunk of events', chunk USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF NOT compressed THEN
        EXECUTE format('UPDATE %s SET value_int = (value * power(10::numeric, scale(value)))::bigint, '
                       'value_scale = scale(value), value = NULL WHERE events_value_fits(value)', chunk);
    END IF;
    EXECUTE 'SELECT compress_chunk($1, if_not_compressed => true)' USING chunk;
    RETURN chunk;
END $$;

-- Whether a value has the compact form: an integer number of 10^-scale below 10^18 in magnitude.
CREATE OR REPLACE FUNCTION events_value_fits(v numeric) RETURNS boolean
LANGUAGE sql IMMUTABLE AS $$
    SELECT coalesce(scale(v) BETWEEN 0 AND 18 AND abs(v) < power(10::numeric, 18 - scale(v)), false)
$$;

-- A row written with a canonical integer id as text (a writer other than the hub's: tests, tools) gets the
-- compact form (above). TimescaleDB 2.29.2 checks a row against compressed chunks as it was before this trigger,
-- so the trigger looks for the identity itself and refuses a stored one (unique_violation, even under
-- ON CONFLICT DO NOTHING: loud rather than a second copy). The hub's writers store the compact form themselves.
CREATE OR REPLACE FUNCTION events_canonical_id() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    NEW.event_seq := NEW.event_id::bigint;
    NEW.event_id := NULL;
    IF EXISTS (SELECT 1 FROM events WHERE device_id = NEW.device_id AND meter = NEW.meter AND ts = NEW.ts
                                      AND event_id IS NULL AND event_seq = NEW.event_seq) THEN
        RAISE EXCEPTION 'event (%, %, %, %) is stored already', NEW.device_id, NEW.meter, NEW.ts, NEW.event_seq
            USING ERRCODE = 'unique_violation';
    END IF;
    RETURN NEW;
END $$;

-- The job body TimescaleDB's scheduler calls in place of the compression policy: config {"after": "<interval>"}.
-- One chunk per transaction, as the policy does.
CREATE OR REPLACE PROCEDURE events_compress_job(job_id integer, config jsonb)
LANGUAGE plpgsql AS $$
DECLARE
    chunk regclass;
BEGIN
    FOR chunk IN EXECUTE 'SELECT c FROM show_chunks(''events'', older_than => $1) c ORDER BY 1'
                 USING (config ->> 'after')::interval LOOP
        PERFORM events_compress_chunk(chunk);
        COMMIT;
    END LOOP;
END $$;

DO $$
DECLARE
    compact boolean := false;
BEGIN
    IF EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'timescaledb') THEN
        EXECUTE 'SELECT EXISTS (SELECT 1 FROM timescaledb_information.hypertables WHERE hypertable_name = ''events'')'
            INTO compact;
    END IF;
    IF NOT compact THEN
        CREATE VIEW events_rows AS
        SELECT device_id, meter, ts, event_id, value, meta_id, received_at, reset_marker, text_value, ingested_at
        FROM events;
        RETURN;
    END IF;

    ALTER TABLE events ADD COLUMN event_seq bigint, ADD COLUMN value_int bigint, ADD COLUMN value_scale smallint;
    EXECUTE 'SELECT count(decompress_chunk(c, if_compressed => true)) FROM show_chunks(''events'') c';
    ALTER TABLE events DROP CONSTRAINT events_pkey;
    ALTER TABLE events ALTER COLUMN event_id DROP NOT NULL, ALTER COLUMN value DROP NOT NULL;
    UPDATE events SET event_seq = event_id::bigint, event_id = NULL WHERE event_id ~ '^(0|[1-9][0-9]{0,17})$';
    -- Exactly one form of each, as NOT NULL required one before; ids in canonical form only.
    ALTER TABLE events ADD CONSTRAINT events_one_form CHECK (
        num_nonnulls(event_id, event_seq) = 1 AND num_nonnulls(value, value_int) = 1
        AND (value_int IS NULL) = (value_scale IS NULL) AND event_seq BETWEEN 0 AND 999999999999999999
        AND event_id !~ '^(0|[1-9][0-9]{0,17})$');
    CREATE UNIQUE INDEX events_identity ON events (device_id, meter, ts, event_id, event_seq) NULLS NOT DISTINCT;
    CREATE TRIGGER events_canonical_id BEFORE INSERT ON events FOR EACH ROW
        WHEN (NEW.event_id ~ '^(0|[1-9][0-9]{0,17})$') EXECUTE FUNCTION events_canonical_id();
    ALTER TABLE events SET (timescaledb.compress, timescaledb.compress_segmentby = 'device_id, meter',
                            timescaledb.compress_orderby = 'ts',
                            timescaledb.sparse_index = 'minmax(ts)');
    EXECUTE 'SELECT remove_compression_policy(''events'', if_exists => true)';
    EXECUTE 'SELECT add_job(''events_compress_job''::regproc, interval ''12 hours'', '
            'config => ''{"after": "30 days"}''::jsonb)';

    CREATE VIEW events_rows AS
    SELECT device_id, meter, ts, coalesce(event_id, event_seq::text) AS event_id,
           coalesce(value, (value_int || 'e-' || value_scale)::numeric) AS value, meta_id, received_at, reset_marker,
           text_value, ingested_at
    FROM events;
    -- The same columns, in the same order, as 0039 and 0024 made them on TimescaleDB.
    CREATE OR REPLACE VIEW events_all AS
    SELECT device_id, meter, ts, event_id, value, meta_id, received_at, reset_marker, text_value, ingested_at,
           events_archive_day(ts) AS day
    FROM events_rows;
    CREATE OR REPLACE VIEW events_described AS
    SELECT e.device_id, e.meter, e.ts, e.event_id, e.value, m.unit, m.kind, m.profile_id, m.service,
           e.received_at, e.reset_marker, e.text_value, e.ingested_at
    FROM events_rows e LEFT JOIN event_meta m ON m.meta_id = e.meta_id;
END $$;
