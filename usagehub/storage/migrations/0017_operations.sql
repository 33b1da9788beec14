-- Operations: stored alerts (acknowledged by operators) and when each device was last heard from.

CREATE TABLE alerts (
    alert_id      bigserial PRIMARY KEY,
    tenant        text NOT NULL,
    kind          text NOT NULL,      -- tamper, fault, silent, low_balance, blocked, restored, quarantine_burst
    severity      text NOT NULL CHECK (severity IN ('info', 'warning', 'critical')),
    account_id    text,
    device_id     text,
    message       text NOT NULL,
    raised_at     timestamptz NOT NULL DEFAULT now(),
    -- One alert per cause: a redelivered event or a sweep that runs twice raises nothing new.
    dedupe_key    text NOT NULL UNIQUE,
    acked_at      timestamptz,
    acked_by      text
);
CREATE INDEX alerts_tenant_open ON alerts (tenant, alert_id) WHERE acked_at IS NULL;
CREATE INDEX alerts_tenant ON alerts (tenant, alert_id);

CREATE FUNCTION alert_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('usagehub_alerts', NEW.alert_id::text);
    RETURN NEW;
END $$;
CREATE TRIGGER alert_notify AFTER INSERT ON alerts FOR EACH ROW EXECUTE FUNCTION alert_notify();

-- Prepaid blocks, restores and low balances are alerts too, written in the transaction that decided them.
CREATE FUNCTION prepaid_event_alert() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO alerts (tenant, kind, severity, account_id, message, raised_at, dedupe_key)
    SELECT a.tenant, NEW.kind,
           CASE NEW.kind WHEN 'blocked' THEN 'critical' WHEN 'low_balance' THEN 'warning' ELSE 'info' END,
           NEW.account_id,
           CASE NEW.kind WHEN 'blocked' THEN 'account blocked: balance exhausted'
                         WHEN 'restored' THEN 'account restored after a top-up'
                         ELSE 'balance low: ' || NEW.balance::text || ' ' || NEW.currency END,
           NEW.at, 'prepaid:' || NEW.event_id
    FROM accounts a WHERE a.account_id = NEW.account_id
    ON CONFLICT (dedupe_key) DO NOTHING;
    RETURN NEW;
END $$;
CREATE TRIGGER prepaid_event_alert AFTER INSERT ON prepaid_events
    FOR EACH ROW EXECUTE FUNCTION prepaid_event_alert();

CREATE TABLE device_seen (
    device_id      text PRIMARY KEY,
    last_received  timestamptz NOT NULL,
    last_ts        timestamptz NOT NULL
);

-- Consumer self-service: a token per account, created by a billing or operator key, revocable at once.
CREATE TABLE consumer_tokens (
    token_id     text PRIMARY KEY,
    tenant       text NOT NULL,
    account_id   text NOT NULL REFERENCES accounts (account_id),
    secret_hash  bytea NOT NULL,
    created_by   text NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now(),
    revoked_at   timestamptz
);
CREATE INDEX consumer_tokens_account ON consumer_tokens (account_id);

-- Meter types (device profiles) edited through the API or the console: every version kept, the latest in
-- force. Files in device_profiles/ stay the bootstrap; a stored version of the same id takes their place.
CREATE TABLE device_profile_versions (
    profile_id  text NOT NULL,
    version     integer NOT NULL,
    yaml        text NOT NULL,
    author      text NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (profile_id, version)
);

CREATE FUNCTION device_profile_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('usagehub_profiles', NEW.profile_id);
    RETURN NEW;
END $$;
CREATE TRIGGER device_profile_notify AFTER INSERT ON device_profile_versions
    FOR EACH ROW EXECUTE FUNCTION device_profile_notify();
