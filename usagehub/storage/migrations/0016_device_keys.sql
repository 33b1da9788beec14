-- Per-device AES keys (wM-Bus, DLMS), sealed with AES-256-GCM under the hub's device_key_secret:
-- the database never holds a key in clear. Tenant, device and protocol are bound into the seal.
CREATE TABLE device_keys (
    tenant      text NOT NULL DEFAULT 'default',
    device_id   text NOT NULL,
    protocol    text NOT NULL,
    sealed      bytea NOT NULL,
    updated_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (device_id, protocol)
);
CREATE INDEX device_keys_tenant ON device_keys (tenant);
