-- An archive of finished months of events: one row per device, meter and UTC day (issue 18).
--
-- A row per event costs ~130 B at least on plain PostgreSQL (tuple header, the identity in heap and key);
-- 168 B per event after retention_pack. storage/archive.py moves a finished month's rows here, a day of one
-- meter per row, each column an array in (ts, event_id) order, and empties the month's partition (0045: by
-- DELETE, truncated once no older snapshot can read it; late rows are folded in later). Times are integer microseconds (exact): ts after the day's UTC midnight, received_at after ts,
-- ingested_at after received_at; small integers that pglz (TOAST) compresses well. Measured on the
-- storage_size fleet (bench/archive_layouts.py, 595K events): 29.4 B per event, against 37.6 B with the
-- timestamps as timestamptz[] and 213.8 B as rows. reset_marker and text_value are NULL when no reading of
-- the day has one. On TimescaleDB this table stays empty (old chunks are compressed instead).
CREATE TABLE events_archive (
    device_id    text NOT NULL,
    meter        text NOT NULL,
    day          date NOT NULL,
    ts_us        bigint[] NOT NULL,
    event_id     text[] NOT NULL,
    value        numeric[] NOT NULL,
    meta_id      integer[] NOT NULL,
    received_us  bigint[] NOT NULL,
    ingested_us  bigint[] NOT NULL,
    reset_marker text[],
    text_value   text[],
    PRIMARY KEY (device_id, meter, day)
);

-- Months archived (one transaction each: rows in, partition replaced, this row written).
CREATE TABLE events_archived (
    partition    text PRIMARY KEY,
    month_start  timestamptz NOT NULL,
    month_end    timestamptz NOT NULL,
    events       bigint NOT NULL,
    rows         bigint NOT NULL,
    bytes_before bigint NOT NULL,
    bytes_after  bigint NOT NULL,
    archived_at  timestamptz NOT NULL DEFAULT now()
);

-- The archive's day of an instant, and its microseconds after that day's UTC midnight (exact: numeric epoch).
CREATE FUNCTION events_archive_day(t timestamptz) RETURNS date
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$ SELECT (t AT TIME ZONE 'UTC')::date $$;
CREATE FUNCTION events_archive_us(t timestamptz) RETURNS bigint
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS
$$ SELECT (extract(epoch FROM t - ((t AT TIME ZONE 'UTC')::date::timestamp AT TIME ZONE 'UTC')) * 1000000)::bigint $$;
-- STABLE as timestamptz + interval is: declared IMMUTABLE it would not be inlined (a call per reading, ~10x slower).
CREATE FUNCTION events_archive_ts(d date, us bigint) RETURNS timestamptz
LANGUAGE sql STABLE PARALLEL SAFE AS $$ SELECT (d::timestamp AT TIME ZONE 'UTC') + us * interval '1 microsecond' $$;

-- Whether an identity is archived: the duplicate check of a late event of an archived month.
CREATE FUNCTION events_archived_has(p_device text, p_meter text, p_ts timestamptz, p_event_id text) RETURNS boolean
LANGUAGE sql STABLE AS $$
    SELECT EXISTS (SELECT 1 FROM events_archive a, unnest(a.ts_us, a.event_id) AS u(t, i)
                   WHERE a.device_id = p_device AND a.meter = p_meter AND a.day = events_archive_day(p_ts)
                     AND u.t = events_archive_us(p_ts) AND u.i = p_event_id)
$$;

-- On the empty partition that replaces an archived month: an archived identity is refused like a stored one
-- (unique_violation). The direct COPY (storage/events_direct.py) then falls back to the staged insert, which
-- leaves archived identities out before inserting (storage/events.py), so a duplicate never counts as new.
CREATE FUNCTION events_archive_guard() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF events_archived_has(NEW.device_id, NEW.meter, NEW.ts, NEW.event_id) THEN
        RAISE unique_violation USING MESSAGE = format('event (%s, %s, %s, %s) is archived already',
                                                      NEW.device_id, NEW.meter, NEW.ts, NEW.event_id);
    END IF;
    RETURN NEW;
END $$;

-- The nearest archived reading of one register strictly between (lo_ts, lo_id) and (hi_ts, hi_id): below hi
-- when down, else above lo. Days are disjoint and each day's arrays are in key order, so only the nearest day
-- that can hold one is read (the primary key in order, one day detoasted in the usual case).
CREATE FUNCTION events_archive_nearest(p_device text, p_meter text, lo_ts timestamptz, lo_id text,
                                       hi_ts timestamptz, hi_id text, down boolean)
RETURNS TABLE (ts timestamptz, value numeric, event_id text, reset_marker text)
LANGUAGE sql STABLE AS $$
    SELECT x.ts, x.value, x.event_id, x.reset_marker
    FROM ((SELECT * FROM events_archive a WHERE down AND a.device_id = p_device AND a.meter = p_meter
             AND a.day <= events_archive_day(hi_ts) AND a.day >= events_archive_day(lo_ts)
             AND (events_archive_ts(a.day, a.ts_us[1]), a.event_id[1]) < (hi_ts, hi_id)
           ORDER BY a.day DESC LIMIT 1)
          UNION ALL
          (SELECT * FROM events_archive a WHERE NOT down AND a.device_id = p_device AND a.meter = p_meter
             AND a.day <= events_archive_day(hi_ts) AND a.day >= events_archive_day(lo_ts)
             AND (events_archive_ts(a.day, a.ts_us[cardinality(a.ts_us)]), a.event_id[cardinality(a.event_id)])
                 > (lo_ts, lo_id)
           ORDER BY a.day LIMIT 1)) a
    CROSS JOIN LATERAL (
        SELECT events_archive_ts(a.day, u.t) AS ts, u.v AS value, u.i AS event_id, u.r AS reset_marker
        FROM unnest(a.ts_us, a.event_id, a.value, a.reset_marker) AS u(t, i, v, r)) x
    WHERE (x.ts, x.event_id) > (lo_ts, lo_id) AND (x.ts, x.event_id) < (hi_ts, hi_id)
    ORDER BY CASE WHEN down THEN x.ts END DESC, CASE WHEN down THEN x.event_id END DESC, x.ts, x.event_id
    LIMIT 1
$$;

-- Every event, stored as a row or archived: what readers of events that may reach a finished month read.
-- On TimescaleDB (events a hypertable, nothing archived) both views read events alone: TimescaleDB 2.29.2
-- fails a read of the UNION ALL view over compressed chunks ("invalid array position", Assertion '!isnull').
DO $$
DECLARE
    archived text := '';
BEGIN
    IF EXISTS (SELECT 1 FROM pg_partitioned_table p JOIN pg_class c ON c.oid = p.partrelid
               WHERE c.relname = 'events' AND c.relnamespace = 'public'::regnamespace) THEN
        archived := $a$
UNION ALL
SELECT a.device_id, a.meter, t.ts, u.event_id, u.value, u.meta_id, t.received_at, u.reset_marker, u.text_value,
       t.received_at + u.g * interval '1 microsecond', a.day
FROM events_archive a
CROSS JOIN LATERAL unnest(a.ts_us, a.event_id, a.value, a.meta_id, a.received_us, a.ingested_us, a.reset_marker,
                          a.text_value) AS u(t, event_id, value, meta_id, r, g, reset_marker, text_value)
CROSS JOIN LATERAL (SELECT events_archive_ts(a.day, u.t) AS ts,
                           events_archive_ts(a.day, u.t) + u.r * interval '1 microsecond' AS received_at) t$a$;
    END IF;
    -- day (UTC) lets a reader bound the archived days it unnests: the planner cannot derive it from ts.
    EXECUTE 'CREATE VIEW events_all AS SELECT device_id, meter, ts, event_id, value, meta_id, received_at, '
            'reset_marker, text_value, ingested_at, events_archive_day(ts) AS day FROM events' || archived;
    IF archived <> '' THEN
        -- The same columns, in the same order, as before (0024); archived events included.
        CREATE OR REPLACE VIEW events_described AS
        SELECT e.device_id, e.meter, e.ts, e.event_id, e.value, m.unit, m.kind, m.profile_id, m.service,
               e.received_at, e.reset_marker, e.text_value, e.ingested_at
        FROM events_all e LEFT JOIN event_meta m ON m.meta_id = e.meta_id;
    END IF;
END $$;
