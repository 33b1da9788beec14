-- Consumption analytics (issue 9): rollups kept exact by statement triggers on session_points,
-- behaviour features, segments with membership history, the pseudonym secret and personal-data grants.

-- 15-minute rollup in UTC buckets: every real zone offset is a multiple of 15 minutes, so any
-- local hour/day/week/month is a union of these buckets. Usage points sum quantities; gauge and
-- state points count activity (security devices). A point counts in the bucket of its start, as
-- billing allocates a part (a, b] to the period of a.
CREATE TABLE rollup_15m (
    account_id     text NOT NULL,
    bucket_start   timestamptz NOT NULL,
    product        text NOT NULL,
    device_id      text NOT NULL,
    quantity       numeric NOT NULL DEFAULT 0,
    usage_count    bigint NOT NULL DEFAULT 0,
    activity_count bigint NOT NULL DEFAULT 0,
    PRIMARY KEY (account_id, bucket_start, product, device_id)
);

-- Daily rollup per account and product, keyed by the LOCAL date in the account's zone.
CREATE TABLE rollup_daily (
    account_id     text NOT NULL,
    day            date NOT NULL,
    product        text NOT NULL,
    service        text NOT NULL,
    quantity       numeric NOT NULL DEFAULT 0,
    usage_count    bigint NOT NULL DEFAULT 0,
    activity_count bigint NOT NULL DEFAULT 0,
    PRIMARY KEY (account_id, day, product, service)
);
-- Fleet and market series read a date range across all accounts: an index-only scan.
CREATE INDEX rollup_daily_day ON rollup_daily (day, product) INCLUDE (account_id, quantity, activity_count);

-- Fleet and market series at day/week/month: one row per tenant, market, local day, product and
-- service, kept in the same statement as rollup_daily; `accounts` counts its rollup_daily rows (the
-- accounts with data for that product that day). A year of the whole fleet reads ~365 rows per product.
-- These rows are shared by every account of a market: concurrent batches wait on them briefly.
CREATE TABLE rollup_fleet_daily (
    tenant         text NOT NULL,
    market         text NOT NULL,
    day            date NOT NULL,
    product        text NOT NULL,
    service        text NOT NULL,
    quantity       numeric NOT NULL DEFAULT 0,
    usage_count    bigint NOT NULL DEFAULT 0,
    activity_count bigint NOT NULL DEFAULT 0,
    accounts       bigint NOT NULL DEFAULT 0,
    PRIMARY KEY (tenant, day, market, product, service)
);

-- Add (sign +1) or subtract (sign -1) the points of a statement. Keys are upserted in key order so
-- that concurrent batches lock rollup rows in the same order; rows that drop to nothing are deleted,
-- so the tables always equal a recompute from session_points (see analytics_rebuild_rollups).
-- Transition tables are visible only to the trigger function itself (not to functions it calls), so
-- this function only builds the statements and the caller EXECUTEs them.
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
$f$;

CREATE OR REPLACE FUNCTION analytics_rollup_trigger() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    cols constant text := 'account_id, service, device_id, product, kind, start_ts, value';
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

-- Recompute both rollups from session_points (after a zone change of an account, or to verify).
CREATE OR REPLACE FUNCTION analytics_rebuild_rollups() RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    step record;
BEGIN
    LOCK TABLE session_points IN SHARE MODE;  -- no writer may slip between the wipe and the sum
    DELETE FROM rollup_15m;
    DELETE FROM rollup_daily;
    DELETE FROM rollup_fleet_daily;
    FOR step IN SELECT * FROM analytics_rollup_sql('SELECT account_id, service, device_id, product, kind, '
                                                   'start_ts, value, 1 AS sign FROM session_points '
                                                   'WHERE account_id IS NOT NULL') LOOP
        EXECUTE step.stmt;
    END LOOP;
END $$;

-- The triggers keep the rollups exact on a plain table and on a hypertable alike (TimescaleDB accepts
-- statement triggers with transition tables since 2.18; migration 0014 makes session_points one). The
-- analytics read these tables; a continuous aggregate was measured against them (bench/storage_size.py
-- --rollups) and is not used: its refresh lags late data, and local-zone days differ per account.
CREATE TRIGGER session_points_rollup_insert AFTER INSERT ON session_points
    REFERENCING NEW TABLE AS new_points FOR EACH STATEMENT EXECUTE FUNCTION analytics_rollup_trigger();
CREATE TRIGGER session_points_rollup_delete AFTER DELETE ON session_points
    REFERENCING OLD TABLE AS old_points FOR EACH STATEMENT EXECUTE FUNCTION analytics_rollup_trigger();
CREATE TRIGGER session_points_rollup_update AFTER UPDATE ON session_points
    REFERENCING OLD TABLE AS old_points NEW TABLE AS new_points
    FOR EACH STATEMENT EXECUTE FUNCTION analytics_rollup_trigger();

-- Behaviour features, refreshed daily: one row per account and usage product, one per account.
CREATE TABLE product_features (
    account_id      text NOT NULL,
    product         text NOT NULL,
    as_of           date NOT NULL,
    days            integer NOT NULL,
    avg_daily       numeric,
    peak_daily      numeric,
    volatility      numeric,
    mom_trend       numeric,
    weekend_ratio   numeric,
    weekend_share   numeric,
    night_share     numeric,
    morning_share   numeric,
    afternoon_share numeric,
    evening_share   numeric,
    hour_shares     numeric[] NOT NULL DEFAULT '{}',
    computed_at     timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (account_id, product)
);
CREATE INDEX product_features_product ON product_features (product, avg_daily DESC);

CREATE TABLE account_features (
    account_id     text PRIMARY KEY,
    as_of          date NOT NULL,
    topups         integer NOT NULL DEFAULT 0,
    topup_typical  numeric,
    days_near_zero integer NOT NULL DEFAULT 0,
    activity       bigint NOT NULL DEFAULT 0,
    computed_at    timestamptz NOT NULL DEFAULT now()
);

-- Segments: saved rules over features, their members and who entered or left, when.
CREATE TABLE segments (
    segment_id  bigserial PRIMARY KEY,
    tenant      text NOT NULL DEFAULT 'default',
    name        text NOT NULL,
    rule        text NOT NULL,
    product     text NOT NULL,
    description text NOT NULL DEFAULT '',
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now(),
    UNIQUE (tenant, name)
);

CREATE TABLE segment_members (
    segment_id bigint NOT NULL REFERENCES segments (segment_id) ON DELETE CASCADE,
    account_id text NOT NULL,
    since      timestamptz NOT NULL,
    PRIMARY KEY (segment_id, account_id)
);

CREATE TABLE segment_evaluations (
    evaluation_id bigserial PRIMARY KEY,
    segment_id    bigint NOT NULL REFERENCES segments (segment_id) ON DELETE CASCADE,
    evaluated_at  timestamptz NOT NULL,
    rule          text NOT NULL,
    members       integer NOT NULL,
    entered       integer NOT NULL,
    left_count    integer NOT NULL
);
CREATE INDEX segment_evaluations_segment ON segment_evaluations (segment_id, evaluated_at DESC);

CREATE TABLE segment_changes (
    segment_id    bigint NOT NULL REFERENCES segments (segment_id) ON DELETE CASCADE,
    evaluation_id bigint NOT NULL REFERENCES segment_evaluations (evaluation_id) ON DELETE CASCADE,
    account_id    text NOT NULL,
    change        text NOT NULL CHECK (change IN ('entered', 'left')),
    at            timestamptz NOT NULL,
    PRIMARY KEY (segment_id, evaluation_id, account_id)
);
CREATE INDEX segment_changes_account ON segment_changes (account_id, at);

-- Pseudonyms: HMAC-SHA256(secret, account_id), the secret made once per hub (two random UUIDs: 244 bits).
CREATE TABLE analytics_secret (
    singleton boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    secret    bytea NOT NULL
);
INSERT INTO analytics_secret (secret) VALUES (uuid_send(gen_random_uuid()) || uuid_send(gen_random_uuid()));

-- Analytics keys granted personal data (real account ids and names); every other analytics key sees pseudonyms.
CREATE TABLE analytics_personal_keys (
    key_id     text PRIMARY KEY REFERENCES api_keys (key_id) ON DELETE CASCADE,
    granted_at timestamptz NOT NULL DEFAULT now()
);
