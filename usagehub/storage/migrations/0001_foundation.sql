-- Foundation schema: registry, events (partitioned by device time), quarantine, API keys.
CREATE EXTENSION IF NOT EXISTS btree_gist;

CREATE TABLE accounts (
    account_id  text PRIMARY KEY,
    tenant      text NOT NULL DEFAULT 'default',
    name        text NOT NULL DEFAULT '',
    market      text NOT NULL DEFAULT 'DE',
    currency    text NOT NULL DEFAULT 'EUR',
    timezone    text NOT NULL DEFAULT 'UTC',
    prepaid     boolean NOT NULL DEFAULT false,
    created_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE devices (
    device_id   text PRIMARY KEY,
    tenant      text NOT NULL DEFAULT 'default',
    profile_id  text,
    name        text NOT NULL DEFAULT '',
    address     text,
    port        integer,
    secrets     jsonb NOT NULL DEFAULT '{}'::jsonb,
    created_at  timestamptz NOT NULL DEFAULT now()
);

-- A device belongs to one account at a time: validity ranges never overlap.
CREATE TABLE bindings (
    binding_id  bigserial PRIMARY KEY,
    device_id   text NOT NULL REFERENCES devices (device_id),
    account_id  text NOT NULL REFERENCES accounts (account_id),
    valid       tstzrange NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT bindings_no_overlap EXCLUDE USING gist (device_id WITH =, valid WITH &&)
);
CREATE INDEX bindings_account ON bindings (account_id);

-- Events: one row per meter reading. The primary key is the durable identity
-- (DESIGN "Event identity"); it starts with (device_id, meter, ts) so that it
-- also serves per-meter time-range reads without a second index.
-- TimescaleDB is used only where the server preloads it: an installed but not preloaded extension
-- cannot be created ("must be preloaded"), so availability alone is not enough.
DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'timescaledb')
       OR (EXISTS (SELECT 1 FROM pg_available_extensions WHERE name = 'timescaledb')
           AND 'timescaledb' = ANY (string_to_array(replace(current_setting('shared_preload_libraries'), ' ', ''),
                                                    ','))) THEN
        CREATE EXTENSION IF NOT EXISTS timescaledb;
        CREATE TABLE events (
            device_id text NOT NULL, meter text NOT NULL, ts timestamptz NOT NULL, event_id text NOT NULL,
            value numeric NOT NULL, unit text NOT NULL, kind text NOT NULL, profile_id text NOT NULL,
            service text NOT NULL, received_at timestamptz NOT NULL, reset_marker text, text_value text,
            ingested_at timestamptz NOT NULL DEFAULT now(),
            PRIMARY KEY (device_id, meter, ts, event_id));
        -- No default (ts DESC) index: the primary key already serves time-range reads per meter.
        -- Compression and retention settings: migration 0014.
        PERFORM create_hypertable('events', 'ts', chunk_time_interval => interval '7 days',
                                  create_default_indexes => false);
    ELSE
        CREATE TABLE events (
            device_id text NOT NULL, meter text NOT NULL, ts timestamptz NOT NULL, event_id text NOT NULL,
            value numeric NOT NULL, unit text NOT NULL, kind text NOT NULL, profile_id text NOT NULL,
            service text NOT NULL, received_at timestamptz NOT NULL, reset_marker text, text_value text,
            ingested_at timestamptz NOT NULL DEFAULT now(),
            PRIMARY KEY (device_id, meter, ts, event_id)
        ) PARTITION BY RANGE (ts);
        -- Monthly partitions are created ahead of each batch by ensure_event_partition().
        CREATE TABLE events_default PARTITION OF events DEFAULT;
    END IF;
END $$;

CREATE OR REPLACE FUNCTION ensure_event_partition(month_start date) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    part text := 'events_' || to_char(month_start, 'YYYY_MM');
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_partitioned_table p JOIN pg_class c ON c.oid = p.partrelid
                   WHERE c.relname = 'events') THEN
        RETURN;  -- a hypertable: TimescaleDB makes its own chunks
    END IF;
    IF to_regclass(part) IS NOT NULL THEN
        RETURN;
    END IF;
    PERFORM pg_advisory_xact_lock(7311002);
    IF to_regclass(part) IS NULL THEN
        EXECUTE format('CREATE TABLE %I PARTITION OF events FOR VALUES FROM (%L) TO (%L)',
                       part, month_start::timestamp AT TIME ZONE 'UTC',
                       (month_start + interval '1 month')::timestamp AT TIME ZONE 'UTC');
    END IF;
END $$;

CREATE TABLE quarantine (
    quarantine_id  bigserial PRIMARY KEY,
    received_at    timestamptz NOT NULL,
    transport      text NOT NULL,
    topic          text NOT NULL,
    source         text NOT NULL DEFAULT '',
    payload        bytea NOT NULL,
    reason         text NOT NULL,
    detail         text,
    meta           jsonb NOT NULL DEFAULT '{}'::jsonb,
    device_id      text,
    profile_id     text,
    created_at     timestamptz NOT NULL DEFAULT now(),
    replayed_at    timestamptz,
    replay_outcome text
);
CREATE INDEX quarantine_open ON quarantine (created_at) WHERE replayed_at IS NULL;
CREATE INDEX quarantine_reason ON quarantine (reason);

CREATE TABLE api_keys (
    key_id       text PRIMARY KEY,
    tenant       text NOT NULL DEFAULT 'default',
    role         text NOT NULL CHECK (role IN ('admin', 'billing', 'analytics', 'operator')),
    secret_hash  bytea NOT NULL,
    name         text NOT NULL DEFAULT '',
    created_at   timestamptz NOT NULL DEFAULT now(),
    revoked_at   timestamptz
);
