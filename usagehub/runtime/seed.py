"""``usagehub seed FILE.yaml``: accounts, devices and bindings in bulk."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError
from ruamel.yaml import YAML
from ruamel.yaml.error import YAMLError

from usagehub.errors import ConfigError
from usagehub.storage.registry import Registry


class _M(BaseModel):
    model_config = ConfigDict(extra="forbid")


class SeedAccount(_M):
    """An account to create."""

    id: str
    name: str = ""
    market: str = "DE"
    currency: str = "EUR"
    timezone: str = "UTC"
    prepaid: bool = False


class SeedDevice(_M):
    """A device to register."""

    id: str
    profile: str | None = None
    name: str = ""
    address: str | None = None
    port: int | None = None
    secrets: dict[str, str] = Field(default_factory=dict)
    gateways: list[str] = Field(default_factory=list, description="gateways that may report for this device")


class SeedBinding(_M):
    """A device bound to an account from an instant."""

    device: str
    account: str
    valid_from: datetime
    valid_to: datetime | None = None


class SeedFile(_M):
    """The seed file: accounts, devices, bindings."""

    tenant: str = "default"
    accounts: list[SeedAccount] = []
    devices: list[SeedDevice] = []
    bindings: list[SeedBinding] = []


def parse_seed(path: Path) -> SeedFile:
    """Read and validate a seed file; errors name file, field and line."""
    try:
        tree = YAML(typ="rt").load(path.read_text(encoding="utf-8"))
    except (OSError, YAMLError) as err:
        raise ConfigError(f"cannot read seed file: {err}", file=str(path)) from err
    try:
        return SeedFile.model_validate(tree or {})
    except ValidationError as err:
        from usagehub.core.profiles import line_of

        first = err.errors()[0]
        raise ConfigError(first["msg"], file=str(path), field=".".join(str(p) for p in first["loc"]),
                          line=line_of(tree, tuple(first["loc"]))) from err


async def apply_seed(registry: Registry, seed: SeedFile) -> dict[str, int]:
    """Create everything in ``seed``; idempotent for accounts and devices."""
    for a in seed.accounts:
        await registry.upsert_account(account_id=a.id, tenant=seed.tenant, name=a.name, market=a.market,
                                      currency=a.currency, timezone=a.timezone, prepaid=a.prepaid)
    for d in seed.devices:
        await registry.upsert_device(device_id=d.id, tenant=seed.tenant, profile_id=d.profile, name=d.name,
                                     address=d.address, port=d.port, secrets=d.secrets)
    for d in seed.devices:
        for gateway in d.gateways:
            await registry.attach_to_gateway(gateway_id=gateway, device_ids=[d.id], tenant=seed.tenant)
    existing = {(b.device_id, b.account_id, b.valid_from)
                for b in await registry.bindings(device_ids=[b.device for b in seed.bindings])}
    bound = 0
    for b in seed.bindings:
        if (b.device, b.account, b.valid_from) not in existing:
            await registry.bind(device_id=b.device, account_id=b.account, valid_from=b.valid_from,
                                valid_to=b.valid_to, tenant=seed.tenant)
            bound += 1
    return {"accounts": len(seed.accounts), "devices": len(seed.devices), "bindings": bound}
