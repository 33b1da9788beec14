"""Accounts, devices and bindings: the registry, plus the cached device check of the pipeline."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import orjson
from psycopg.rows import dict_row
from psycopg.types.range import Range
from psycopg_pool import AsyncConnectionPool

from usagehub.adapters.base import DeviceEndpoint
from usagehub.core.ids import check_id
from usagehub.errors import DomainError, IntegrityViolation
from usagehub.storage.pool import mapped_errors


@dataclass(frozen=True, slots=True, kw_only=True)
class AccountRow:
    """A registered account (household, company)."""

    account_id: str
    tenant: str
    name: str
    market: str
    currency: str
    timezone: str
    prepaid: bool
    created_at: datetime


@dataclass(frozen=True, slots=True, kw_only=True)
class DeviceRow:
    """A registered device."""

    device_id: str
    tenant: str
    profile_id: str | None
    name: str
    address: str | None
    port: int | None
    created_at: datetime


@dataclass(frozen=True, slots=True, kw_only=True)
class BindingRow:
    """A device held by an account from ``valid_from`` until ``valid_to`` (open when None)."""

    binding_id: int
    device_id: str
    account_id: str
    valid_from: datetime
    valid_to: datetime | None


OnBind = Callable[[Any, str, datetime], Awaitable[None]]


class Registry:
    """SQL for the registry; every statement uses bound parameters."""

    def __init__(self, pool: AsyncConnectionPool, *, on_bind: OnBind | None = None) -> None:
        """``on_bind(conn, device, at)`` runs in a binding's transaction (re-allocation of earlier data)."""
        self.pool = pool
        self.on_bind = on_bind

    async def upsert_account(self, *, account_id: str, tenant: str = "default", name: str = "",
                             market: str = "DE", currency: str = "EUR", timezone: str = "UTC",
                             prepaid: bool = False) -> AccountRow:
        """Create or update an account."""
        check_id("account", account_id)
        async with mapped_errors(), self.pool.connection() as conn, conn.cursor(row_factory=dict_row) as cur:
            await cur.execute(
                "INSERT INTO accounts (account_id, tenant, name, market, currency, timezone, prepaid) "
                "VALUES (%s, %s, %s, %s, %s, %s, %s) ON CONFLICT (account_id) DO UPDATE SET "
                "name = EXCLUDED.name, market = EXCLUDED.market, currency = EXCLUDED.currency, "
                "timezone = EXCLUDED.timezone, prepaid = EXCLUDED.prepaid "
                "WHERE accounts.tenant = EXCLUDED.tenant RETURNING *",
                (account_id, tenant, name, market, currency, timezone, prepaid))
            row = await cur.fetchone()
        if row is None:
            raise DomainError("FORBIDDEN", f"account {account_id!r} belongs to another tenant")
        return AccountRow(**row)

    async def upsert_device(self, *, device_id: str, tenant: str = "default", profile_id: str | None = None,
                            name: str = "", address: str | None = None, port: int | None = None,
                            secrets: dict[str, str] | None = None) -> DeviceRow:
        """Create or update a device; ``secrets`` (credentials) are merged, never returned."""
        check_id("device", device_id)
        async with mapped_errors(), self.pool.connection() as conn, conn.cursor(row_factory=dict_row) as cur:
            await cur.execute(
                "INSERT INTO devices (device_id, tenant, profile_id, name, address, port, secrets) "
                "VALUES (%s, %s, %s, %s, %s, %s, %s) ON CONFLICT (device_id) DO UPDATE SET "
                "profile_id = EXCLUDED.profile_id, name = EXCLUDED.name, address = EXCLUDED.address, "
                "port = EXCLUDED.port, secrets = devices.secrets || EXCLUDED.secrets "
                "WHERE devices.tenant = EXCLUDED.tenant "
                "RETURNING device_id, tenant, profile_id, name, address, port, created_at",
                (device_id, tenant, profile_id, name, address, port, orjson.dumps(secrets or {}).decode()))
            row = await cur.fetchone()
        if row is None:
            raise DomainError("FORBIDDEN", f"device {device_id!r} belongs to another tenant")
        return DeviceRow(**row)

    async def bind(self, *, device_id: str, account_id: str, valid_from: datetime,
                   valid_to: datetime | None = None, tenant: str = "default") -> BindingRow:
        """Bind a device to an account from ``valid_from``.

        An open binding of the device that started earlier is closed at
        ``valid_from`` (the device moved); any other overlap is refused.
        """
        try:
            async with mapped_errors(), self.pool.connection() as conn, conn.transaction():
                await self._check_tenant(conn, device_id, account_id, tenant)
                await conn.execute(
                    "UPDATE bindings SET valid = tstzrange(lower(valid), %s, '[)') "
                    "WHERE device_id = %s AND upper_inf(valid) AND lower(valid) < %s",
                    (valid_from, device_id, valid_from))
                cur = await conn.execute(
                    "INSERT INTO bindings (device_id, account_id, valid) VALUES (%s, %s, tstzrange(%s, %s, '[)')) "
                    "RETURNING binding_id", (device_id, account_id, valid_from, valid_to))
                row = await cur.fetchone()
                if self.on_bind is not None:
                    await self.on_bind(conn, device_id, valid_from)
        except IntegrityViolation as err:
            raise DomainError("BINDING_OVERLAP",
                              f"device {device_id!r} is already bound in that time range") from err
        assert row is not None
        return BindingRow(binding_id=int(row[0]), device_id=device_id,
                          account_id=account_id, valid_from=valid_from, valid_to=valid_to)

    @staticmethod
    async def _check_tenant(conn: Any, device_id: str, account_id: str, tenant: str) -> None:
        cur = await conn.execute(
            "SELECT (SELECT tenant FROM devices WHERE device_id = %s), "
            "(SELECT tenant FROM accounts WHERE account_id = %s)", (device_id, account_id))
        dev_tenant, acc_tenant = await cur.fetchone()
        if dev_tenant is None:
            raise DomainError("UNKNOWN_DEVICE", f"device {device_id!r} is not registered")
        if acc_tenant is None:
            raise DomainError("UNKNOWN_ACCOUNT", f"account {account_id!r} does not exist")
        if dev_tenant != tenant or acc_tenant != tenant:
            raise DomainError("FORBIDDEN", "device or account belongs to another tenant")

    async def attach_to_gateway(self, *, gateway_id: str, device_ids: Sequence[str],
                                tenant: str = "default") -> list[str]:
        """Register ``device_ids`` behind ``gateway_id``: the gateway's credential may then report for them.

        All must be registered devices of ``tenant``; returns the devices newly attached.
        """
        ids = sorted(set(device_ids))
        async with mapped_errors(), self.pool.connection() as conn, conn.transaction():
            cur = await conn.execute("SELECT device_id, tenant FROM devices WHERE device_id = ANY(%s)",
                                     ([gateway_id, *ids],))
            tenants = {str(r[0]): str(r[1]) for r in await cur.fetchall()}
            missing = [d for d in [gateway_id, *ids] if d not in tenants]
            foreign = [d for d in [gateway_id, *ids] if tenants.get(d, tenant) != tenant]
            if missing or foreign:  # one message for both: never reveal that an id exists elsewhere
                raise DomainError("UNKNOWN_DEVICE",
                                  f"not a registered device of this tenant: {', '.join((missing + foreign)[:5])}")
            if gateway_id in ids:
                raise DomainError("BAD_INPUT", "a gateway cannot be behind itself")
            cur = await conn.execute(
                "INSERT INTO gateway_devices (gateway_id, device_id) SELECT %s, unnest(%s::text[]) "
                "ON CONFLICT DO NOTHING RETURNING device_id", (gateway_id, ids))
            return sorted(str(r[0]) for r in await cur.fetchall())

    async def detach_from_gateway(self, *, gateway_id: str, device_ids: Sequence[str],
                                  tenant: str = "default") -> list[str]:
        """Remove devices from behind a gateway of ``tenant``; returns the devices detached."""
        async with mapped_errors(), self.pool.connection() as conn:
            cur = await conn.execute(
                "DELETE FROM gateway_devices g USING devices d WHERE g.gateway_id = %s "
                "AND g.device_id = ANY(%s) AND d.device_id = g.gateway_id AND d.tenant = %s "
                "RETURNING g.device_id", (gateway_id, list(device_ids), tenant))
            return sorted(str(r[0]) for r in await cur.fetchall())

    async def gateway_devices(self, gateway_id: str, *, tenant: str) -> list[str]:
        """The devices registered behind ``gateway_id`` (empty for another tenant's gateway)."""
        async with self.pool.connection() as conn:
            cur = await conn.execute(
                "SELECT g.device_id FROM gateway_devices g JOIN devices d ON d.device_id = g.gateway_id "
                "WHERE g.gateway_id = %s AND d.tenant = %s ORDER BY g.device_id", (gateway_id, tenant))
            return [str(r[0]) for r in await cur.fetchall()]

    async def accounts(self, *, tenant: str, after: str | None, limit: int,
                       search: str | None = None) -> list[AccountRow]:
        """Accounts of a tenant ordered by id, keyset-paged."""
        async with self.pool.connection() as conn, conn.cursor(row_factory=dict_row) as cur:
            await cur.execute(
                "SELECT * FROM accounts WHERE tenant = %s AND (%s::text IS NULL OR account_id > %s) "
                "AND (%s::text IS NULL OR account_id ILIKE %s OR name ILIKE %s) ORDER BY account_id LIMIT %s",
                (tenant, after, after, search, f"%{search}%", f"%{search}%", limit))
            return [AccountRow(**r) for r in await cur.fetchall()]

    async def account(self, account_id: str, *, tenant: str) -> AccountRow | None:
        """One account of the tenant."""
        async with self.pool.connection() as conn, conn.cursor(row_factory=dict_row) as cur:
            await cur.execute("SELECT * FROM accounts WHERE account_id = %s AND tenant = %s", (account_id, tenant))
            row = await cur.fetchone()
        return AccountRow(**row) if row else None

    async def devices(self, *, tenant: str, after: str | None, limit: int,
                      device_ids: Sequence[str] | None = None) -> list[DeviceRow]:
        """Devices of a tenant ordered by id, keyset-paged."""
        async with self.pool.connection() as conn, conn.cursor(row_factory=dict_row) as cur:
            await cur.execute(
                "SELECT device_id, tenant, profile_id, name, address, port, created_at FROM devices "
                "WHERE tenant = %s AND (%s::text IS NULL OR device_id > %s) "
                "AND (%s::text[] IS NULL OR device_id = ANY(%s)) ORDER BY device_id LIMIT %s",
                (tenant, after, after, device_ids, device_ids, limit))
            return [DeviceRow(**r) for r in await cur.fetchall()]

    async def bindings(self, *, device_ids: Sequence[str] = (), account_ids: Sequence[str] = ()
                       ) -> list[BindingRow]:
        """Bindings of the given devices or accounts, oldest first."""
        async with self.pool.connection() as conn:
            cur = await conn.execute(
                "SELECT binding_id, device_id, account_id, valid FROM bindings "
                "WHERE device_id = ANY(%s) OR account_id = ANY(%s) ORDER BY device_id, lower(valid)",
                (list(device_ids), list(account_ids)))
            rows = await cur.fetchall()
        out = []
        for binding_id, device_id, account_id, valid in rows:
            assert isinstance(valid, Range)
            assert valid.lower is not None  # bindings always have a start
            out.append(BindingRow(binding_id=int(binding_id), device_id=str(device_id),
                                  account_id=str(account_id), valid_from=valid.lower, valid_to=valid.upper))
        return out


class KnownDevices:
    """Which device ids are registered, cached; a miss asks the database (new devices count at once)."""

    def __init__(self, pool: AsyncConnectionPool, *, negative_ttl_s: float = 2.0) -> None:
        self.pool = pool
        self._known: set[str] = set()
        self._missing: dict[str, float] = {}
        self._ttl = negative_ttl_s

    async def unknown(self, device_ids: Iterable[str]) -> set[str]:
        """The subset of ``device_ids`` that is not registered."""
        now = time.monotonic()
        ask = [d for d in device_ids if d not in self._known and self._missing.get(d, 0.0) <= now]
        if ask:
            async with mapped_errors(), self.pool.connection() as conn:
                cur = await conn.execute("SELECT device_id FROM devices WHERE device_id = ANY(%s)", (ask,))
                found = {str(r[0]) for r in await cur.fetchall()}
            self._known |= found
            for d in set(ask) - found:
                self._missing[d] = now + self._ttl
            if len(self._missing) > 100_000:  # a flood of invented ids must not grow memory forever
                self._missing = {k: v for k, v in self._missing.items() if v > now}
        return {d for d in device_ids if d not in self._known}


class DeviceDirectorySql:
    """The adapters' DeviceDirectory over the devices table."""

    def __init__(self, pool: AsyncConnectionPool) -> None:
        self.pool = pool

    async def endpoints(self, profile_id: str | None = None) -> Sequence[DeviceEndpoint]:
        """Registered devices, optionally of one profile."""
        async with self.pool.connection() as conn:
            cur = await conn.execute(
                "SELECT device_id, profile_id, address, port, secrets FROM devices "
                "WHERE %s::text IS NULL OR profile_id = %s ORDER BY device_id", (profile_id, profile_id))
            return [_endpoint(r) for r in await cur.fetchall()]

    async def endpoint(self, device_id: str) -> DeviceEndpoint | None:
        """One device, or None."""
        async with self.pool.connection() as conn:
            cur = await conn.execute(
                "SELECT device_id, profile_id, address, port, secrets FROM devices WHERE device_id = %s",
                (device_id,))
            row = await cur.fetchone()
        return _endpoint(row) if row else None


def _endpoint(row: tuple[Any, ...]) -> DeviceEndpoint:
    device_id, profile_id, address, port, secrets = row
    return DeviceEndpoint(device_id=device_id, profile_id=profile_id, address=address, port=port,
                          secrets={str(k): str(v) for k, v in (secrets or {}).items()})
