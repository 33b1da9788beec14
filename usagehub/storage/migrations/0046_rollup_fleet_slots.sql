-- The fleet's daily rollup in slots (issue 14). Every batch's point COPY upserted the one row per tenant,
-- day, market and product through the rollup trigger (0006/0037), so the commit lanes' transactions all
-- wrote the same rows: a lane that reached a day another lane had written waited for that lane's COMMIT.
-- On bench/fleet.py, sampling pg_stat_activity showed lanes waiting on another transaction inside the point
-- COPY in ~12 % of samples; with the fleet upsert removed (an experiment) the waits were gone. Now each
-- connection adds to its own slot (its backend pid modulo 64: two connections share a slot rarely, and then
-- only wait as before), and the view rollup_fleet_daily sums the slots: readers are unchanged. The sums stay
-- exact: slots are added, never divided.
ALTER TABLE rollup_fleet_daily RENAME TO rollup_fleet_slots;
ALTER TABLE rollup_fleet_slots ADD COLUMN slot smallint NOT NULL DEFAULT 0;
ALTER TABLE rollup_fleet_slots DROP CONSTRAINT rollup_fleet_daily_pkey;
ALTER TABLE rollup_fleet_slots ADD PRIMARY KEY (tenant, day, market, product, service, slot);

CREATE VIEW rollup_fleet_daily AS
SELECT tenant, market, day, product, service, sum(quantity) AS quantity, sum(usage_count) AS usage_count,
       sum(activity_count) AS activity_count, sum(accounts) AS accounts
FROM rollup_fleet_slots GROUP BY tenant, market, day, product, service;

-- As 0037's, with the fleet rows in the backend's slot.
CREATE OR REPLACE FUNCTION analytics_rollup_sql(source text) RETURNS TABLE (tbl text, stmt text)
LANGUAGE sql IMMUTABLE AS $f$
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
            INSERT INTO rollup_fleet_slots AS f (tenant, market, day, product, service, slot, quantity,
                                                 usage_count, activity_count, accounts)
            SELECT a.tenant, a.market, agg.d, agg.product, agg.service, (pg_backend_pid() %% 64)::smallint,
                   sum(agg.q), sum(agg.uc), sum(agg.ac),
                   sum(CASE WHEN up.created THEN 1 ELSE 0 END)
                   - sum(CASE WHEN up.usage_count = 0 AND up.activity_count = 0 THEN 1 ELSE 0 END)
            FROM agg JOIN up ON up.account_id = agg.account_id AND up.day = agg.d AND up.product = agg.product
                            AND up.service = agg.service
                     JOIN accounts a ON a.account_id = agg.account_id
            GROUP BY 1, 2, 3, 4, 5, 6 ORDER BY 1, 3, 2, 4, 5
            ON CONFLICT (tenant, day, market, product, service, slot) DO UPDATE
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
        hours AS MATERIALIZED (
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

-- As 0030's, wiping the slots.
CREATE OR REPLACE FUNCTION analytics_rebuild_rollups() RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    step record;
BEGIN
    LOCK TABLE session_points IN SHARE MODE;  -- no writer may slip between the wipe and the sum
    DELETE FROM rollup_daily;
    DELETE FROM rollup_fleet_slots;
    DELETE FROM rating_sums;
    FOR step IN SELECT * FROM analytics_rollup_sql('SELECT account_id, service, device_id, product, kind, '
                                                   'aggregation, start_ts, end_ts, value, 1 AS sign '
                                                   'FROM session_points WHERE account_id IS NOT NULL') LOOP
        EXECUTE step.stmt;
    END LOOP;
END $$;
