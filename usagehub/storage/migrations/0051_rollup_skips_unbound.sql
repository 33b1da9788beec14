-- The rollup trigger on session_points returns at once when no point it sees has an account (issue 14).
--
-- Unbound points (account_id NULL: a device before its first binding, kept for a retroactive one) count in no
-- rollup, and the trigger already left them out. But it built and planned its statements for every batch
-- before finding nothing to add: EXECUTE plans each time, ~2.4 ms of PostgreSQL per batch of points of unbound
-- devices (pg_stat_statements over bench/ingest.py's gateway case: 137 ms for 45 batches). One probe of the
-- transition tables now decides; a batch with any bound point takes the same path as before.

CREATE OR REPLACE FUNCTION analytics_rollup_trigger() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    cols constant text := 'account_id, service, device_id, product, kind, aggregation, start_ts, end_ts, value';
    source text;
    step record;
    empty tid[];
BEGIN
    IF TG_OP = 'INSERT' THEN
        IF NOT EXISTS (SELECT 1 FROM new_points WHERE account_id IS NOT NULL) THEN
            RETURN NULL;
        END IF;
        source := format('SELECT %s, 1 AS sign FROM new_points', cols);
    ELSIF TG_OP = 'DELETE' THEN
        IF NOT EXISTS (SELECT 1 FROM old_points WHERE account_id IS NOT NULL) THEN
            RETURN NULL;
        END IF;
        source := format('SELECT %s, -1 AS sign FROM old_points', cols);
    ELSE
        IF NOT EXISTS (SELECT 1 FROM new_points WHERE account_id IS NOT NULL)
           AND NOT EXISTS (SELECT 1 FROM old_points WHERE account_id IS NOT NULL) THEN
            RETURN NULL;
        END IF;
        source := format('SELECT %s, 1 AS sign FROM new_points UNION ALL SELECT %s, -1 AS sign FROM old_points',
                         cols, cols);
    END IF;
    -- Unbound points (account_id NULL, kept for retroactive binding) count once a binding gives them an account.
    source := format('SELECT * FROM (%s) bound WHERE account_id IS NOT NULL', source);
    FOR step IN SELECT * FROM analytics_rollup_sql(source) LOOP
        EXECUTE step.stmt INTO empty;
        IF empty IS NOT NULL THEN
            EXECUTE format('DELETE FROM %I WHERE ctid = ANY($1)', step.tbl) USING empty;
        END IF;
    END LOOP;
    RETURN NULL;
END $$;
