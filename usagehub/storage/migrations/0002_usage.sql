-- Usage entries: an append-only ledger of quantities derived from events.
-- A late reading never edits an entry: it retracts the delta it splits and adds two.
CREATE TABLE usage_entries (
    entry_id        bigserial PRIMARY KEY,
    device_id       text NOT NULL,
    meter           text NOT NULL,
    ts              timestamptz NOT NULL,
    quantity        numeric NOT NULL,
    unit            text NOT NULL,
    service         text NOT NULL,
    entry_kind      text NOT NULL CHECK (entry_kind IN ('usage', 'retraction', 'correction')),
    cause_event_id  text,
    reason          text,
    author          text,
    created_at      timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX usage_entries_device_ts ON usage_entries (device_id, ts);
CREATE INDEX usage_entries_ts ON usage_entries (ts);

-- The newest reading of each cumulative meter: in-order readings need no lookup.
CREATE TABLE meter_state (
    device_id     text NOT NULL,
    meter         text NOT NULL,
    ts            timestamptz NOT NULL,
    value         numeric NOT NULL,
    reset_marker  text,
    event_id      text NOT NULL,
    PRIMARY KEY (device_id, meter)
);
