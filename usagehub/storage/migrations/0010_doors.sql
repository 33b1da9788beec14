-- Doors (issue 15): which devices a gateway may report for, and a bounded quarantine.

-- A gateway (itself a registered device with credentials) reports for the devices registered
-- behind it; several gateways may hear one device (LoRa). Same tenant only (checked on insert).
CREATE TABLE gateway_devices (
    gateway_id  text NOT NULL REFERENCES devices (device_id) ON DELETE CASCADE,
    device_id   text NOT NULL REFERENCES devices (device_id) ON DELETE CASCADE,
    created_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (gateway_id, device_id),
    CHECK (gateway_id <> device_id)
);
CREATE INDEX gateway_devices_device ON gateway_devices (device_id);

-- Quarantine identity: the same message (transport, topic, payload, reason) is stored once and
-- counted; a redelivery after a restart bumps the count instead of adding a row.
ALTER TABLE quarantine
    ADD COLUMN fingerprint   bytea,
    ADD COLUMN seen_count    integer NOT NULL DEFAULT 1,
    ADD COLUMN last_seen_at  timestamptz,
    ADD COLUMN payload_size  integer,
    ADD COLUMN payload_sha256 bytea;
CREATE UNIQUE INDEX quarantine_fingerprint ON quarantine (fingerprint) WHERE replayed_at IS NULL;
