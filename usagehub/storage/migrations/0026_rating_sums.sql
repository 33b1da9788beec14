-- Usage sums per account, product and local hour, kept exact on insert (issue 18: account-month billing p99).
--
-- Rating places a usage point at the midpoint of its span (storage/rating_usage.py), and points in one local
-- bucket that no boundary of the plan book splits rate exactly as their sum (storage/rating_sums.py). The
-- summed read used to aggregate every point of the account-month (~6000 for two 15-minute meters); these
-- rows hold those sums already, ~720 per product and month, so the read aggregates ~720 rows instead.
--
-- A row's key places its points: start_hour, mid_hour and end_hour are the UTC instants at which the local
-- hour (in the account's zone) holding the point's start, midpoint and last instant (end_ts minus 1 µs)
-- begins: hours counted from the epoch shifted by the zone's UTC offset at the midpoint, one zone conversion
-- per point (AT TIME ZONE per key cost more than the rest of the statement; daylight-saving moves whole
-- hours, and a key not on a local hour of the period's offset is caught by the read). A period starts and ends on a local midnight, so "start_ts in [S, E)" is "start_hour in [S, E)"
-- and "end_ts <= E" is "end_hour < E". The read checks that every key it uses begins a local hour in the
-- zone it rates by (a zone changed since is caught, and the point read is used), and falls back as before
-- where sums are not exact: `inexact` counts points whose aggregation is not 'sum' or whose value is
-- negative, `used` those above zero (a bucket of zeros is left out, as the point read nets it away).
-- `points` counts every point, so a row whose points were all deleted (a device re-bound to another
-- account) is removed and the table always equals a recompute from session_points.
--
-- Maintained by the statement triggers of 0006 (INSERT, UPDATE; DELETE on plain PostgreSQL) and by
-- session_points_delete() on TimescaleDB, through analytics_rollup_sql(), which gets a third statement here;
-- analytics_rebuild_rollups() recomputes it too. Sums are numeric, exact like Decimal.
CREATE TABLE rating_sums (
    account_id text NOT NULL,
    start_hour timestamptz NOT NULL,
    product    text NOT NULL,
    mid_hour   timestamptz NOT NULL,
    end_hour   timestamptz NOT NULL,
    quantity   numeric NOT NULL,
    points     bigint NOT NULL,
    used       bigint NOT NULL,
    inexact    bigint NOT NULL,
    PRIMARY KEY (account_id, start_hour, product, mid_hour, end_hour)
);

-- 0006's two statements unchanged, and rating_sums. The source now also has end_ts and aggregation.
CREATE OR REPLACE FUNCTION analytics_rollup_sql(source text) RETURNS TABLE (tbl text, stmt text)
LANGUAGE sql IMMUTABLE AS $f$
    SELECT 'rollup_15m', format($q$
        WITH src AS (%s),
        agg AS (
            SELECT account_id, date_bin('15 minutes', start_ts, timestamptz '2000-01-01 00:00:00+00') AS b,
                   product, device_id,
                   sum(CASE WHEN kind = 'usage' THEN value * sign ELSE 0 END) AS q,
                   sum(CASE WHEN kind = 'usage' THEN sign ELSE 0 END) AS uc,
                   sum(CASE WHEN kind <> 'usage' THEN sign ELSE 0 END) AS ac
            FROM src GROUP BY 1, 2, 3, 4),
        up AS (
            INSERT INTO rollup_15m AS r (account_id, bucket_start, product, device_id, quantity, usage_count,
                                         activity_count)
            SELECT account_id, b, product, device_id, q, uc, ac FROM agg ORDER BY 1, 2, 3, 4
            ON CONFLICT (account_id, bucket_start, product, device_id) DO UPDATE
            SET quantity = r.quantity + excluded.quantity, usage_count = r.usage_count + excluded.usage_count,
                activity_count = r.activity_count + excluded.activity_count
            RETURNING ctid, usage_count, activity_count)
        SELECT array_agg(ctid) FROM up WHERE usage_count = 0 AND activity_count = 0 $q$, source)
    UNION ALL
    SELECT 'rollup_daily', format($q$
        WITH src AS (%s),
        agg AS (
            SELECT s.account_id, (s.start_ts AT TIME ZONE coalesce(a.timezone, 'UTC'))::date AS d, s.product,
                   s.service,
                   sum(CASE WHEN s.kind = 'usage' THEN s.value * s.sign ELSE 0 END) AS q,
                   sum(CASE WHEN s.kind = 'usage' THEN s.sign ELSE 0 END) AS uc,
                   sum(CASE WHEN s.kind <> 'usage' THEN s.sign ELSE 0 END) AS ac
            FROM src s LEFT JOIN accounts a ON a.account_id = s.account_id GROUP BY 1, 2, 3, 4),
        up AS (
            INSERT INTO rollup_daily AS r (account_id, day, product, service, quantity, usage_count, activity_count)
            SELECT account_id, d, product, service, q, uc, ac FROM agg ORDER BY 1, 2, 3, 4
            ON CONFLICT (account_id, day, product, service) DO UPDATE
            SET quantity = r.quantity + excluded.quantity, usage_count = r.usage_count + excluded.usage_count,
                activity_count = r.activity_count + excluded.activity_count
            RETURNING ctid, account_id, day, product, service, usage_count, activity_count, (xmax = 0) AS created),
        fleet AS (
            INSERT INTO rollup_fleet_daily AS f (tenant, market, day, product, service, quantity, usage_count,
                                                 activity_count, accounts)
            SELECT a.tenant, a.market, agg.d, agg.product, agg.service, sum(agg.q), sum(agg.uc), sum(agg.ac),
                   sum(CASE WHEN up.created THEN 1 ELSE 0 END)
                   - sum(CASE WHEN up.usage_count = 0 AND up.activity_count = 0 THEN 1 ELSE 0 END)
            FROM agg JOIN up ON up.account_id = agg.account_id AND up.day = agg.d AND up.product = agg.product
                            AND up.service = agg.service
                     JOIN accounts a ON a.account_id = agg.account_id
            GROUP BY 1, 2, 3, 4, 5 ORDER BY 1, 3, 2, 4, 5
            ON CONFLICT (tenant, day, market, product, service) DO UPDATE
            SET quantity = f.quantity + excluded.quantity, usage_count = f.usage_count + excluded.usage_count,
                activity_count = f.activity_count + excluded.activity_count,
                accounts = f.accounts + excluded.accounts
            RETURNING 1)
        SELECT array_agg(ctid) FROM up WHERE usage_count = 0 AND activity_count = 0 $q$, source)
    UNION ALL
    SELECT 'rating_sums', format($q$
        WITH src AS (%s),
        placed AS (
            SELECT s.account_id, s.product, s.start_ts, s.end_ts, s.value, s.sign, s.aggregation,
                   date_add(s.start_ts, (s.end_ts - s.start_ts) / 2, 'UTC') AS mid,
                   coalesce(a.timezone, 'UTC') AS tz
            FROM src s LEFT JOIN accounts a ON a.account_id = s.account_id WHERE s.kind = 'usage'),
        hours AS (
            SELECT *, timestamptz '1970-01-01 00:00:00+00' - ((mid AT TIME ZONE tz) - (mid AT TIME ZONE 'UTC'))
                      AS origin
            FROM placed),
        agg AS (
            SELECT account_id, date_bin('1 hour', start_ts, origin) AS sh, product,
                   date_bin('1 hour', mid, origin) AS mh,
                   date_bin('1 hour', end_ts - interval '1 microsecond', origin) AS eh,
                   sum(value * sign) AS q, sum(sign) AS n,
                   sum(CASE WHEN value > 0 THEN sign ELSE 0 END) AS u,
                   sum(CASE WHEN aggregation IS DISTINCT FROM 'sum' OR value < 0 THEN sign ELSE 0 END) AS x
            FROM hours GROUP BY 1, 2, 3, 4, 5),
        up AS (
            INSERT INTO rating_sums AS r (account_id, start_hour, product, mid_hour, end_hour, quantity, points,
                                          used, inexact)
            SELECT account_id, sh, product, mh, eh, q, n, u, x FROM agg ORDER BY 1, 2, 3, 4, 5
            ON CONFLICT (account_id, start_hour, product, mid_hour, end_hour) DO UPDATE
            SET quantity = r.quantity + excluded.quantity, points = r.points + excluded.points,
                used = r.used + excluded.used, inexact = r.inexact + excluded.inexact
            RETURNING ctid, points)
        SELECT array_agg(ctid) FROM up WHERE points = 0 $q$, source)
$f$;

CREATE OR REPLACE FUNCTION analytics_rollup_trigger() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    cols constant text := 'account_id, service, device_id, product, kind, aggregation, start_ts, end_ts, value';
    source text;
    step record;
    empty tid[];
BEGIN
    IF TG_OP = 'INSERT' THEN
        source := format('SELECT %s, 1 AS sign FROM new_points', cols);
    ELSIF TG_OP = 'DELETE' THEN
        source := format('SELECT %s, -1 AS sign FROM old_points', cols);
    ELSE
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

CREATE OR REPLACE FUNCTION analytics_rebuild_rollups() RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    step record;
BEGIN
    LOCK TABLE session_points IN SHARE MODE;  -- no writer may slip between the wipe and the sum
    DELETE FROM rollup_15m;
    DELETE FROM rollup_daily;
    DELETE FROM rollup_fleet_daily;
    DELETE FROM rating_sums;
    FOR step IN SELECT * FROM analytics_rollup_sql('SELECT account_id, service, device_id, product, kind, '
                                                   'aggregation, start_ts, end_ts, value, 1 AS sign '
                                                   'FROM session_points WHERE account_id IS NOT NULL') LOOP
        EXECUTE step.stmt;
    END LOOP;
END $$;

-- As 0014's, with the columns rating_sums needs (a temp table of a new name: a session may hold the old one).
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
    CREATE TEMP TABLE IF NOT EXISTS session_points_removed (account_id text, service text, device_id text,
        product text, kind text, aggregation text, start_ts timestamptz, end_ts timestamptz, value numeric)
        ON COMMIT DELETE ROWS;
    DELETE FROM session_points_removed;
    PERFORM set_config('usagehub.points_delete', 'on', true);
    WITH gone AS (DELETE FROM session_points WHERE point_id = ANY (ids)
                  RETURNING account_id, service, device_id, product, kind, aggregation, start_ts, end_ts, value)
    INSERT INTO session_points_removed SELECT * FROM gone;
    GET DIAGNOSTICS n = ROW_COUNT;
    PERFORM set_config('usagehub.points_delete', 'off', true);
    FOR step IN SELECT * FROM analytics_rollup_sql('SELECT account_id, service, device_id, product, kind, '
                                                   'aggregation, start_ts, end_ts, value, -1 AS sign '
                                                   'FROM session_points_removed WHERE account_id IS NOT NULL') LOOP
        EXECUTE step.stmt INTO empty;
        IF empty IS NOT NULL THEN
            EXECUTE format('DELETE FROM %I WHERE ctid = ANY($1)', step.tbl) USING empty;
        END IF;
    END LOOP;
    RETURN n;
END $$;

-- The points stored before this migration.
DO $$
DECLARE
    step record;
BEGIN
    FOR step IN SELECT * FROM analytics_rollup_sql('SELECT account_id, service, device_id, product, kind, '
                                                   'aggregation, start_ts, end_ts, value, 1 AS sign '
                                                   'FROM session_points WHERE account_id IS NOT NULL')
                WHERE tbl = 'rating_sums' LOOP
        EXECUTE step.stmt;
    END LOOP;
END $$;
