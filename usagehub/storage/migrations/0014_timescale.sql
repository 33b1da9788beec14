-- TimescaleDB (issue 18): where the extension is in use (migration 0001 created it), the time-series
-- tables are hypertables with columnstore compression; raw events get a retention procedure that never
-- drops what an unbilled period, an open session or unbound usage still needs. On plain PostgreSQL this
-- migration only defines the retention horizon (a function both storages share) and changes nothing else.

-- The instant before which raw events may be dropped: `keep` before `now`, but never after the start of
-- a period not billed yet (open or closed records: late data there still amends them), an open session,
-- or usage waiting for a binding (DESIGN 5: kept and billed once bound).
CREATE OR REPLACE FUNCTION events_retention_horizon(keep interval, at timestamptz) RETURNS timestamptz
LANGUAGE sql STABLE AS $$
    SELECT least(at - keep,
                 (SELECT min(period_start) FROM billing_records WHERE status <> 'billed'),
                 (SELECT min(period_start) FROM sessions WHERE closed_reason IS NULL),
                 (SELECT min(start_ts) FROM session_points WHERE account_id IS NULL))
$$;

-- Delete session points by id, keeping the rollups exact on both storages: on a plain table the
-- DELETE trigger of 0006 subtracts them; on the TimescaleDB hypertable (no DELETE trigger) this does.
CREATE OR REPLACE FUNCTION session_points_delete(ids bigint[]) RETURNS integer
LANGUAGE plpgsql AS $$
DECLARE
    n integer;
    step record;
    empty tid[];
BEGIN
    IF EXISTS (SELECT 1 FROM pg_trigger WHERE tgrelid = 'session_points'::regclass
                                          AND tgname = 'session_points_rollup_delete') THEN
        DELETE FROM session_points WHERE point_id = ANY (ids);
        GET DIAGNOSTICS n = ROW_COUNT;
        RETURN n;
    END IF;
    CREATE TEMP TABLE IF NOT EXISTS session_points_gone (account_id text, service text, device_id text,
        product text, kind text, start_ts timestamptz, value numeric) ON COMMIT DELETE ROWS;
    DELETE FROM session_points_gone;
    PERFORM set_config('usagehub.points_delete', 'on', true);
    WITH gone AS (DELETE FROM session_points WHERE point_id = ANY (ids)
                  RETURNING account_id, service, device_id, product, kind, start_ts, value)
    INSERT INTO session_points_gone SELECT * FROM gone;
    GET DIAGNOSTICS n = ROW_COUNT;
    PERFORM set_config('usagehub.points_delete', 'off', true);
    FOR step IN SELECT * FROM analytics_rollup_sql('SELECT account_id, service, device_id, product, kind, '
                                                   'start_ts, value, -1 AS sign FROM session_points_gone '
                                                   'WHERE account_id IS NOT NULL') LOOP
        EXECUTE step.stmt INTO empty;
        IF empty IS NOT NULL THEN
            EXECUTE format('DELETE FROM %I WHERE ctid = ANY($1)', step.tbl) USING empty;
        END IF;
    END LOOP;
    RETURN n;
END $$;

CREATE OR REPLACE FUNCTION session_points_delete_guard() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF current_setting('usagehub.points_delete', true) IS DISTINCT FROM 'on' THEN
        RAISE EXCEPTION 'delete session points with session_points_delete(ids): the rollups must follow'
            USING ERRCODE = 'feature_not_supported';
    END IF;
    RETURN NULL;
END $$;

DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'timescaledb') THEN
        RETURN;
    END IF;
    -- Dynamic SQL throughout: the catalog views and functions exist only with the extension.
    IF NOT EXISTS (SELECT 1 FROM timescaledb_information.hypertables WHERE hypertable_name = 'events') THEN
        RAISE NOTICE 'events was created before TimescaleDB was preloaded: it stays a partitioned table';
        RETURN;
    END IF;

    -- Defect of the first 0001: create_hypertable added (ts DESC) next to the primary key that serves it.
    DROP INDEX IF EXISTS events_ts_idx;
    -- events: one segment per meter of a device, ordered as the primary key (bench/storage_size.py).
    EXECUTE 'SELECT remove_compression_policy(''events'', if_exists => true)';
    ALTER TABLE events SET (timescaledb.compress, timescaledb.compress_segmentby = 'device_id, meter',
                            timescaledb.compress_orderby = 'ts, event_id');
    EXECUTE 'SELECT add_compression_policy(''events'', compress_after => interval ''30 days'')';

    -- usage_entries: a unique index must hold the time column.
    ALTER TABLE usage_entries DROP CONSTRAINT usage_entries_pkey, ADD PRIMARY KEY (entry_id, ts);
    DROP INDEX IF EXISTS usage_entries_ts;  -- chunk exclusion serves time-only ranges
    EXECUTE $c$ SELECT create_hypertable('usage_entries', by_range('ts', interval '7 days'),
                                         create_default_indexes => false, migrate_data => true) $c$;
    ALTER TABLE usage_entries SET (timescaledb.compress, timescaledb.compress_segmentby = 'device_id, meter',
                                   timescaledb.compress_orderby = 'ts, entry_id');
    EXECUTE 'SELECT add_compression_policy(''usage_entries'', compress_after => interval ''30 days'')';

    -- session_points: the INSERT and UPDATE rollup triggers of 0006 stay (statement triggers with
    -- transition tables work on hypertables since TimescaleDB 2.18, and compressing a chunk fires none).
    -- A compressed hypertable refuses DELETE triggers with transition tables (a whole compressed segment
    -- can be deleted without rows), so deletes go through session_points_delete(), which subtracts what
    -- it deleted; a guard refuses any other DELETE, which would leave the rollups wrong.
    DROP TRIGGER session_points_rollup_delete ON session_points;
    CREATE TRIGGER session_points_delete_guard BEFORE DELETE ON session_points
        FOR EACH STATEMENT EXECUTE FUNCTION session_points_delete_guard();
    ALTER TABLE session_points DROP CONSTRAINT session_points_pkey, ADD PRIMARY KEY (point_id, start_ts);
    EXECUTE $c$ SELECT create_hypertable('session_points', by_range('start_ts', interval '7 days'),
                                         create_default_indexes => false, migrate_data => true) $c$;
    -- Segments per account and device: billing and series filter by account through the segment index,
    -- and a device's points compress twice as well as an account's interleaved ones (bench/storage_size.py).
    ALTER TABLE session_points SET (timescaledb.compress,
                                    timescaledb.compress_segmentby = 'account_id, device_id',
                                    timescaledb.compress_orderby = 'start_ts, point_id');
    EXECUTE 'SELECT add_compression_policy(''session_points'', compress_after => interval ''60 days'')';
END $$;

-- Drop the chunks of raw events that end before the retention horizon; returns how many were dropped.
-- The hub schedules it as a TimescaleDB job when event_retention_days is set (storage/retention.py).
-- On plain PostgreSQL it drops nothing: a dropped monthly partition would send late events of that month
-- to the default partition, which then blocks re-creating the partition.
CREATE OR REPLACE FUNCTION events_drop_expired(keep interval, at timestamptz DEFAULT now()) RETURNS integer
LANGUAGE plpgsql AS $$
DECLARE
    dropped integer := 0;
BEGIN
    IF EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'timescaledb')
       AND NOT EXISTS (SELECT 1 FROM pg_partitioned_table p JOIN pg_class c ON c.oid = p.partrelid
                       WHERE c.relname = 'events') THEN
        EXECUTE 'SELECT count(*) FROM drop_chunks(''events'', older_than => $1)'
            INTO dropped USING events_retention_horizon(keep, at);
    END IF;
    RETURN dropped;
END $$;

-- The job body TimescaleDB's scheduler calls: config {"keep": "<interval>"}.
CREATE OR REPLACE PROCEDURE events_retention_job(job_id integer, config jsonb)
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM events_drop_expired((config ->> 'keep')::interval);
END $$;
