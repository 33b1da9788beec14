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
