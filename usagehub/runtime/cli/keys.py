"""API key commands: ``usagehub keys create``, ``list`` and ``revoke``."""

# No `from __future__ import annotations`: typer reads the real annotation objects.

import asyncio
from typing import Annotated

import typer

from usagehub.runtime.cli.common import DATABASE, console, with_settings
from usagehub.runtime.config import HubConfig

keys_app = typer.Typer(help="API keys for /graphql; device keys (wM-Bus AES) sealed at rest.", no_args_is_help=True)


@keys_app.command("create")
@with_settings(only=DATABASE)
def keys_create(config: HubConfig,
                role: Annotated[str, typer.Option(metavar="ROLE", help="admin, billing, analytics or operator")],
                tenant: Annotated[str, typer.Option(metavar="TENANT", help="the tenant the key reads")] = "default",
                name: Annotated[str, typer.Option(metavar="NAME", help="a note on who holds the key")] = "") -> None:
    """Create an API key and print it (shown once)."""
    from usagehub.runtime.assembly import open_storage
    from usagehub.storage.keys import ROLES, ApiKeys

    if role not in ROLES:
        console.print(f"[red]role must be one of {', '.join(ROLES)}[/red]")
        raise typer.Exit(2)

    async def go() -> str:
        async with open_storage(config, max_size=2) as pool:
            key, _ = await ApiKeys(pool).create(role=role, tenant=tenant, name=name)
            return key

    print(asyncio.run(go()))


@keys_app.command("revoke")
@with_settings(only=DATABASE)
def keys_revoke(config: HubConfig, key_id: Annotated[str, typer.Argument(
        metavar="KEY_ID", help="the key's id: the part after uh_, before the second _")]) -> None:
    """Revoke an API key by its id (the part after ``uh_``)."""
    from usagehub.runtime.assembly import open_storage
    from usagehub.storage.keys import ApiKeys

    async def go() -> bool:
        async with open_storage(config, max_size=2) as pool:
            return await ApiKeys(pool).revoke(key_id)

    if not asyncio.run(go()):
        console.print(f"[red]no active key {key_id!r}[/red]")
        raise typer.Exit(1)


@keys_app.command("device-set")
@with_settings
def keys_device_set(config: HubConfig, device_id: str,
                    key: Annotated[str, typer.Option(help="the device's AES-128 key, 32 hex digits")],
                    protocol: str = "wmbus", tenant: str = "default") -> None:
    """Store a device's AES key, sealed under device_key_secret (a running hub reloads keys by itself)."""
    from usagehub.core.codecs.keyring import parse_key_hex
    from usagehub.runtime.assembly import open_storage
    from usagehub.runtime.device_keys import device_keys

    raw = parse_key_hex(key)

    async def go() -> None:
        async with open_storage(config, max_size=2) as pool:
            store = device_keys(config, pool)
            if store is None:
                console.print("[red]set device_key_secret (USAGEHUB_DEVICE_KEY_SECRET) first[/red]")
                raise typer.Exit(2)
            await store.put(tenant=tenant, device_id=device_id, protocol=protocol, key=raw)

    asyncio.run(go())


@keys_app.command("device-remove")
@with_settings
def keys_device_remove(config: HubConfig, device_id: str, protocol: str = "wmbus", tenant: str = "default") -> None:
    """Remove a device's stored key."""
    from usagehub.runtime.assembly import open_storage
    from usagehub.runtime.device_keys import device_keys

    async def go() -> bool:
        async with open_storage(config, max_size=2) as pool:
            store = device_keys(config, pool)
            return store is not None and await store.delete(tenant=tenant, device_id=device_id, protocol=protocol)

    if not asyncio.run(go()):
        console.print(f"[red]no key for {device_id!r} ({protocol}) in tenant {tenant!r}[/red]")
        raise typer.Exit(1)


@keys_app.command("list")
@with_settings
def keys_list(config: HubConfig, tenant: Annotated[str | None, typer.Option(help="only this tenant")] = None,
              revoked: Annotated[bool, typer.Option("--revoked", help="include revoked keys")] = False) -> None:
    """List API keys (id, tenant, role, name, created, revoked); secrets are never shown."""
    from usagehub.runtime.assembly import open_storage
    from usagehub.storage.keys import ApiKeys, KeyInfo

    async def go() -> list[KeyInfo]:
        async with open_storage(config, max_size=2) as pool:
            return await ApiKeys(pool).list_keys(tenant=tenant, revoked=revoked)

    print("key_id\ttenant\trole\tname\tcreated_at\trevoked_at")
    for k in asyncio.run(go()):
        print("\t".join([k.key_id, k.tenant, k.role, k.name, k.created_at.isoformat(timespec="seconds"),
                         k.revoked_at.isoformat(timespec="seconds") if k.revoked_at else "-"]))
