-- Session points on plain PostgreSQL keep no index on point_id (issue 14): one index entry less per reading.
--
-- point_id is a surrogate from a sequence (unique by construction). It orders points by the commit that wrote
-- them (storage.rating_usage), and no read looks a point up by it. The one statement that used its primary key
-- was rebind's delete by ids. Each stored point paid for that index: bench/ingest.py's gateway case,
-- alternated against a tree without it, spent 1.0 us more of PostgreSQL per reading (11.1 / 11.0 / 10.4 against
-- 10.0 / 9.7 / 9.7 us). WAL per reading was 571 bytes, of which the four index entries per reading made 368.
--
-- Rebind now deletes through the device's index: the points it read are the device's from `since` on, so
-- `device_id = ... AND end_ts >= since` bounds the delete to them. session_points_delete(ids) stays for other
-- callers; on plain storage it now scans the table.
--
-- On TimescaleDB (no DELETE trigger on the hypertable, migration 0014) the key (point_id, start_ts) stays, and
-- the new function hands the device's points among the ids over to session_points_delete(ids), which subtracts
-- the rollups itself.
--
-- Without a primary key the table's replica identity is the whole row: a publication that includes
-- session_points still replicates rebind's deletes.

DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_trigger WHERE tgrelid = 'session_points'::regclass
                                          AND tgname = 'session_points_rollup_delete') THEN
        ALTER TABLE session_points DROP CONSTRAINT IF EXISTS session_points_pkey;
        ALTER TABLE session_points REPLICA IDENTITY FULL;
    END IF;
END $$;

CREATE OR REPLACE FUNCTION session_points_delete(ids bigint[], p_device text, p_since timestamptz) RETURNS integer
LANGUAGE plpgsql AS $$
DECLARE
    n integer;
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_trigger WHERE tgrelid = 'session_points'::regclass
                                              AND tgname = 'session_points_rollup_delete') THEN
        -- TimescaleDB: the rollups are subtracted there; the ids are bounded to the device's points all the same
        RETURN session_points_delete(ARRAY(SELECT point_id FROM session_points WHERE device_id = p_device
                                           AND end_ts >= p_since AND point_id = ANY (ids)));
    END IF;
    DELETE FROM session_points WHERE device_id = p_device AND end_ts >= p_since AND point_id = ANY (ids);
    GET DIAGNOSTICS n = ROW_COUNT;
    RETURN n;
END $$;
