-- Durable ingest totals (ingestStats, /metrics survive restarts): one row per pipeline key, updated in the
-- batch transaction, so they count exactly what was committed.
CREATE TABLE ingest_totals (
    node        text PRIMARY KEY,
    messages    bigint NOT NULL DEFAULT 0,
    accepted    bigint NOT NULL DEFAULT 0,
    duplicates  bigint NOT NULL DEFAULT 0,
    quarantined bigint NOT NULL DEFAULT 0,
    batches     bigint NOT NULL DEFAULT 0,
    updated_at  timestamptz NOT NULL DEFAULT now()
);

-- A message redelivered after a crash (stored, but its ack was never sent) is quarantined once:
-- the digest of what was received identifies it among the open items.
ALTER TABLE quarantine ADD COLUMN digest bytea;
CREATE UNIQUE INDEX quarantine_open_once ON quarantine (digest) WHERE replayed_at IS NULL;
