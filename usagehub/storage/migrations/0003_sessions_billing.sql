-- Session core in storage: account-bound points, sessions, billing records and billing runs.
-- Corrections are usage_entries rows with entry_kind 'correction', a reason and an author.

-- Usage entries and gauge/state events allocated to the account that held the
-- device (split at binding changes and period boundaries). Unbound usage stays
-- in usage_entries and is allocated once a binding covers it.
CREATE TABLE session_points (
    point_id     bigserial PRIMARY KEY,
    account_id   text NOT NULL,
    service      text NOT NULL,
    device_id    text NOT NULL,
    product      text NOT NULL,
    kind         text NOT NULL CHECK (kind IN ('usage', 'gauge', 'state')),
    aggregation  text NOT NULL,
    start_ts     timestamptz NOT NULL,
    end_ts       timestamptz NOT NULL,
    value        numeric NOT NULL,
    active       boolean,
    label        text,
    tie          text NOT NULL DEFAULT ''
);
CREATE INDEX session_points_account ON session_points (account_id, service, start_ts);

-- Sessions are recomputed from their resume key on late data; the id is stable
-- for the same resume key. resume holds the full sort key and carried states.
CREATE TABLE sessions (
    session_id      text PRIMARY KEY,
    account_id      text NOT NULL,
    service         text NOT NULL,
    period_start    timestamptz NOT NULL,
    period_end      timestamptz NOT NULL,
    period_label    text NOT NULL,
    start_ts        timestamptz NOT NULL,
    end_ts          timestamptz NOT NULL,
    closed_reason   text,
    activity_count  integer NOT NULL,
    devices         text[] NOT NULL,
    partials        jsonb NOT NULL,
    resume          jsonb NOT NULL,
    resume_ts       timestamptz NOT NULL,
    expires_at      timestamptz,
    computed_at     timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX sessions_account_service ON sessions (account_id, service, resume_ts);
CREATE INDEX sessions_account_period ON sessions (account_id, period_start);
CREATE INDEX sessions_account_start ON sessions (account_id, start_ts);
CREATE INDEX sessions_expiring ON sessions (expires_at) WHERE closed_reason IS NULL;

-- One regular record per (account, period, product); adjustments of billed
-- records live in a later open period. Status only moves open -> closed -> billed.
CREATE TABLE billing_records (
    record_id     text PRIMARY KEY,
    account_id    text NOT NULL,
    period_start  timestamptz NOT NULL,
    period_end    timestamptz NOT NULL,
    period_label  text NOT NULL,
    product       text NOT NULL,
    quantity      numeric NOT NULL,
    unit          text NOT NULL,
    status        text NOT NULL CHECK (status IN ('open', 'closed', 'billed')),
    kind          text NOT NULL CHECK (kind IN ('regular', 'adjustment')),
    adjusts       text REFERENCES billing_records (record_id),
    version       integer NOT NULL,
    updated_at    timestamptz NOT NULL DEFAULT now(),
    billed_at     timestamptz,
    billing_run   bigint
);
CREATE INDEX billing_records_account_period ON billing_records (account_id, period_start);
CREATE INDEX billing_records_adjusts ON billing_records (adjusts) WHERE adjusts IS NOT NULL;
CREATE INDEX billing_records_status ON billing_records (status, period_start);

-- Every version of every record, append-only (who billed what, when).
CREATE TABLE billing_record_versions (
    record_id   text NOT NULL,
    version     integer NOT NULL,
    quantity    numeric NOT NULL,
    status      text NOT NULL,
    written_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (record_id, version)
);

-- A billed record is final: the database refuses to edit it, whatever the caller.
CREATE OR REPLACE FUNCTION billing_records_guard() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF OLD.status = 'billed' AND (NEW.status <> 'billed' OR NEW.quantity <> OLD.quantity) THEN
        RAISE EXCEPTION 'billing record % is billed and final', OLD.record_id
            USING ERRCODE = 'check_violation';
    END IF;
    IF NEW.version <= OLD.version THEN
        RAISE EXCEPTION 'billing record % version must grow', OLD.record_id USING ERRCODE = 'check_violation';
    END IF;
    RETURN NEW;
END $$;
CREATE TRIGGER billing_records_final BEFORE UPDATE ON billing_records
    FOR EACH ROW EXECUTE FUNCTION billing_records_guard();

-- Billing runs: which account periods were closed (and billed), by whom and when.
-- An account's next open period (where adjustments go) is the one after its latest run.
CREATE TABLE billing_runs (
    run_id        bigserial PRIMARY KEY,
    account_id    text NOT NULL,
    period_start  timestamptz NOT NULL,
    period_end    timestamptz NOT NULL,
    period_label  text NOT NULL,
    author        text,
    records       integer NOT NULL DEFAULT 0,
    run_at        timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX billing_runs_account ON billing_runs (account_id, period_end DESC);
