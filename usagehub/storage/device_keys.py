"""Sealed per-device keys (table ``device_keys``): written per tenant, loaded whole by the hub."""

from __future__ import annotations

from psycopg_pool import AsyncConnectionPool

from usagehub.core.codecs.keyring import KeyRing, KeySealer
from usagehub.storage.pool import mapped_errors


class DeviceKeys:
    """Store and load device keys; only sealed bytes cross this boundary."""

    def __init__(self, pool: AsyncConnectionPool, sealer: KeySealer) -> None:
        self.pool, self.sealer = pool, sealer

    async def put(self, *, tenant: str, device_id: str, protocol: str, key: bytes) -> None:
        """Seal and store (or replace) a device's key; a device of another tenant is refused."""
        sealed = self.sealer.seal(key, tenant=tenant, device_id=device_id.upper(), protocol=protocol)
        base = device_id.split(":", 1)[0]  # "<device>:auth" is the authentication key of <device>
        async with mapped_errors(), self.pool.connection() as conn:
            cur = await conn.execute(
                "SELECT 1 FROM devices WHERE upper(device_id) IN (upper(%s), upper(%s)) AND tenant <> %s LIMIT 1",
                (device_id, base, tenant))
            if await cur.fetchone() is not None:  # no planting keys for another tenant's registered device
                raise PermissionError(f"device {device_id!r} is registered in another tenant")
            cur = await conn.execute(
                "INSERT INTO device_keys (tenant, device_id, protocol, sealed) VALUES (%s, %s, %s, %s) "
                "ON CONFLICT (device_id, protocol) DO UPDATE SET sealed = EXCLUDED.sealed, updated_at = now() "
                "WHERE device_keys.tenant = EXCLUDED.tenant",
                (tenant, device_id.upper(), protocol, sealed))
            if cur.rowcount != 1:
                raise PermissionError(f"device {device_id!r} has a key of another tenant")

    async def delete(self, *, tenant: str, device_id: str, protocol: str) -> bool:
        """Remove a device's key within ``tenant``; whether there was one."""
        async with mapped_errors(), self.pool.connection() as conn:
            cur = await conn.execute(
                "DELETE FROM device_keys WHERE tenant = %s AND device_id = %s AND protocol = %s",
                (tenant, device_id.upper(), protocol))
            return cur.rowcount == 1

    async def devices(self, *, tenant: str) -> list[tuple[str, str]]:
        """(device id, protocol) of the keys a tenant holds; never the keys."""
        async with mapped_errors(), self.pool.connection() as conn:
            cur = await conn.execute(
                "SELECT device_id, protocol FROM device_keys WHERE tenant = %s ORDER BY device_id, protocol",
                (tenant,))
            return [(str(d), str(p)) for d, p in await cur.fetchall()]

    async def load_into(self, ring: KeyRing) -> int:
        """Open every stored key into ``ring`` (the hub decodes for all tenants); the count loaded."""
        async with mapped_errors(), self.pool.connection() as conn:
            cur = await conn.execute("SELECT tenant, device_id, protocol, sealed FROM device_keys")
            rows = await cur.fetchall()
        ring.replace({(str(p), str(d)): self.sealer.open(bytes(s), tenant=str(t), device_id=str(d), protocol=str(p))
                      for t, d, p, s in rows})
        return len(rows)
