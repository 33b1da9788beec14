"""``usagehub seed FILE.yaml``: accounts, devices, bindings, prepaid settings and price plans in bulk.

The whole file is validated before anything is written — its shape, time zones,
currencies, markets, profiles, and every reference (a binding's device and
account, an account's plans) against the file and the database — and every
problem is reported at once with ``file:line: field: message``. The format is
documented in ``docs/seed.md``. To add a section: a model here, a check in
``_references`` if it refers to something, and a step in ``apply_seed``.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Collection, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from pathlib import Path
from typing import Any, Literal, cast
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError, available_timezones

from psycopg_pool import AsyncConnectionPool
from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator
from ruamel.yaml import YAML
from ruamel.yaml.error import YAMLError

from usagehub.core.money import MINOR_UNITS
from usagehub.core.profiles import line_of, validation_problems
from usagehub.core.tariffs import PlanBook, PricePlan
from usagehub.errors import ConfigError, ConfigErrors, DomainError, IntegrityViolation
from usagehub.prepaid.runtime import pricer_for
from usagehub.prepaid.service import PrepaidService
from usagehub.rating.service import RatingService
from usagehub.storage.registry import Registry

_MARKET = re.compile(r"^[A-Z]{2}$")


class _M(BaseModel):
    model_config = ConfigDict(extra="forbid")


class SeedPrepaid(_M):
    """Prepaid settings of an account (amounts in its currency)."""

    overdraft: Decimal = Field(Decimal(0), ge=0)
    low_threshold: Decimal = Field(Decimal(0), ge=0)
    debit_mode: Literal["metered", "reservation"] = "metered"
    opening_balance: Decimal = Field(Decimal(0), ge=0, description="a first top-up, once")


class SeedAccount(_M):
    """An account to create."""

    id: str = Field(min_length=1)
    name: str = ""
    market: str = "DE"
    currency: str = "EUR"
    timezone: str = "UTC"
    prepaid: SeedPrepaid | None = Field(None, description="true, or the prepaid settings")
    plans: list[str] = Field(default_factory=list, description="price plan ids chosen for this account")

    @field_validator("prepaid", mode="before")
    @classmethod
    def _prepaid(cls, value: Any) -> Any:
        if value is True:
            return {}
        return None if value is False else value

    @field_validator("market")
    @classmethod
    def _market(cls, value: str) -> str:
        if not _MARKET.match(value):
            raise ValueError(f"market {value!r} is not a two-letter country code such as DE, FR or GB")
        return value

    @field_validator("currency")
    @classmethod
    def _currency(cls, value: str) -> str:
        if value not in MINOR_UNITS:
            raise ValueError(f"currency {value!r} is not an ISO 4217 code usagehub knows "
                             f"(e.g. {', '.join(list(MINOR_UNITS)[:6])})")
        return value

    @field_validator("timezone")
    @classmethod
    def _zone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError) as err:
            hint = [z for z in sorted(available_timezones()) if z.split("/")[0] == value.split("/")[0]][:3]
            raise ValueError(f"time zone {value!r} is not an IANA zone"
                             + (f" (e.g. {', '.join(hint)})" if hint else " such as Europe/Berlin")) from err
        return value


class SeedDevice(_M):
    """A device to register; ``secrets`` are its credentials (bearer token, MQTT password, OSCORE keys)."""

    id: str = Field(min_length=1)
    profile: str | None = None
    name: str = ""
    address: str | None = None
    port: int | None = Field(None, ge=1, le=65535)
    secrets: dict[str, str] = Field(default_factory=dict)
    gateways: list[str] = Field(default_factory=list, description="gateways that may report for this device")


class SeedBinding(_M):
    """A device bound to an account from an instant."""

    device: str
    account: str
    valid_from: datetime
    valid_to: datetime | None = None

    @field_validator("valid_from", "valid_to")
    @classmethod
    def _aware(cls, value: datetime | None) -> datetime | None:
        if value is not None and value.tzinfo is None:
            raise ValueError("give a time zone offset, e.g. 2026-01-01T00:00:00+01:00")
        return value

    @field_validator("valid_to")
    @classmethod
    def _after(cls, value: datetime | None, info: ValidationInfo) -> datetime | None:
        start = info.data.get("valid_from")
        if value is not None and start is not None and value.tzinfo is not None and value <= start:
            raise ValueError("valid_to must be after valid_from")
        return value


class SeedFile(_M):
    """The seed file: tenant, price plans, accounts, devices, bindings."""

    tenant: str = "default"
    plans: list[PricePlan] = Field(default_factory=list)
    accounts: list[SeedAccount] = Field(default_factory=list)
    devices: list[SeedDevice] = Field(default_factory=list)
    bindings: list[SeedBinding] = Field(default_factory=list)


@dataclass
class Known:
    """What already exists in the hub that a seed file may refer to."""

    profiles: Collection[str] | None = None  # None: not checked
    devices: Collection[str] = ()
    accounts: Collection[str] = ()
    plans: Collection[str] = ()
    currencies: dict[str, str] = field(default_factory=dict)  # plan id -> currency


def _load_tree(path: Path) -> Any:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as err:
        raise ConfigError(f"cannot read the seed file: {err.strerror}", file=str(path)) from err
    try:
        return YAML(typ="rt").load(text)
    except YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        context = getattr(err, "context", None)
        raise ConfigError(f"not valid YAML: {problem}" + (f" ({context})" if context else "")
                          + " — check the indentation of this line and the one above", file=str(path),
                          line=mark.line + 1 if mark else None) from err


def _items(tree: Any, section: str) -> list[tuple[int, dict[str, Any]]]:
    """The mappings of a section of the raw tree, with their positions (malformed entries are skipped)."""
    items = tree.get(section) if isinstance(tree, dict) else None
    return [(i, item) for i, item in enumerate(items) if isinstance(item, dict)] if isinstance(items, list) else []


def _ids(tree: Any, section: str) -> set[str]:
    return {str(item["id"]) for _, item in _items(tree, section) if "id" in item}


def wanted(tree: Any) -> tuple[list[str], list[str]]:
    """Devices and accounts the bindings name that the file does not define (to look up in the hub)."""
    bindings = _items(tree, "bindings")
    devices = {str(b["device"]) for _, b in bindings if "device" in b} - _ids(tree, "devices")
    accounts = {str(b["account"]) for _, b in bindings if "account" in b} - _ids(tree, "accounts")
    return sorted(devices), sorted(accounts)


def validate_seed(path: Path, known: Known | None = None) -> SeedFile:
    """Read and validate a seed file: shape, values and references, every problem raised at once.

    Without ``known`` references are resolved within the file only and profiles are not checked.
    """
    tree = load_seed_tree(path)
    problems: list[ConfigError] = []
    seed: SeedFile | None = None
    try:
        seed = SeedFile.model_validate(tree)
    except ValidationError as err:
        problems += validation_problems(err, tree, str(path))
    problems += _references(tree, known or Known(), str(path))
    if problems:
        unique = {(p.line, p.field, p.message): p for p in problems}
        raise ConfigErrors(sorted(unique.values(), key=lambda p: (p.line or 0, p.field or "")))
    assert seed is not None
    return seed


parse_seed = validate_seed


def load_seed_tree(path: Path) -> Any:
    """The parsed YAML of a seed file (line numbers kept); a file that is not a mapping is refused."""
    tree = _load_tree(path)
    if tree is None:
        return {}
    if not isinstance(tree, dict):
        raise ConfigError("a seed file is a mapping with accounts, devices, bindings…", file=str(path), line=1)
    return tree


def _references(tree: Any, known: Known, source: str) -> list[ConfigError]:
    problems: list[ConfigError] = []

    def problem(message: str, *loc: str | int) -> None:
        problems.append(ConfigError(message, file=source, field=".".join(str(p) for p in loc),
                                    line=line_of(tree, loc)))

    for section in ("accounts", "devices", "plans"):
        seen: set[str] = set()
        for i, item in _items(tree, section):
            ident = str(item.get("id"))
            if ident in seen:
                problem(f"{ident!r} appears twice", section, i, "id")
            seen.add(ident)
    plans = {str(p["id"]): str(p.get("currency")) for _, p in _items(tree, "plans") if "id" in p}
    plans |= dict(known.currencies)
    plan_ids = set(plans) | set(known.plans)
    for i, a in _items(tree, "accounts"):
        chosen = a.get("plans")
        for j, plan in enumerate(chosen if isinstance(chosen, list) else []):
            if str(plan) not in plan_ids:
                problem(f"no price plan {plan!r} in this file or the hub", "accounts", i, "plans", j)
            elif plans.get(str(plan), a.get("currency", "EUR")) != a.get("currency", "EUR"):
                problem(f"plan {plan!r} prices in {plans[str(plan)]}, the account pays in "
                        f"{a.get('currency', 'EUR')}", "accounts", i, "plans", j)
    if known.profiles is not None:
        for i, d in _items(tree, "devices"):
            if d.get("profile") is not None and d["profile"] not in known.profiles:
                problem(f"no device profile {d['profile']!r} (profiles: {', '.join(sorted(known.profiles))})",
                        "devices", i, "profile")
    devices = _ids(tree, "devices") | set(known.devices)
    accounts = _ids(tree, "accounts") | set(known.accounts)
    for i, b in _items(tree, "bindings"):
        if "device" in b and str(b["device"]) not in devices:
            problem(f"device {b['device']!r} is neither in this file nor registered", "bindings", i, "device")
        if "account" in b and str(b["account"]) not in accounts:
            problem(f"account {b['account']!r} is neither in this file nor in the hub", "bindings", i, "account")
    return problems


def optimistic(tree: Any, profiles: Collection[str] | None) -> Known:
    """A ``Known`` that takes every outside reference of the file as existing: a check without the database."""
    devices, accounts = wanted(tree)
    plans = {str(p) for _, a in _items(tree, "accounts") for p in (a.get("plans") or []) if isinstance(p, str)}
    return Known(profiles=profiles, devices=devices, accounts=accounts, plans=plans)


async def known_in(registry: Registry, tenant: str, tree: Any, profiles: Collection[str] | None,
                   rating: RatingService | None = None) -> Known:
    """What the hub already holds that the file refers to: devices and accounts of ``tenant``, plans."""
    wanted_devices, wanted_accounts = wanted(tree)
    devices = {d.device_id for d in await registry.devices(tenant=tenant, after=None, limit=len(wanted_devices),
                                                           device_ids=wanted_devices)} if wanted_devices else set()
    accounts = {a for a in wanted_accounts if await registry.account(a, tenant=tenant) is not None}
    stored = await rating.plans(tenant=tenant) if rating is not None else []
    return Known(profiles=profiles, devices=devices, accounts=accounts, plans={p.plan.id for p in stored},
                 currencies={p.plan.id: p.plan.currency for p in stored})


class _OneConnection:
    """A pool of one connection held inside one transaction: services write through it, their own
    ``conn.transaction()`` blocks become savepoints, and nothing is committed until the seed is done."""

    def __init__(self, conn: Any) -> None:
        self.conn = conn

    @asynccontextmanager
    async def connection(self) -> AsyncIterator[Any]:
        """The shared connection (not returned anywhere: the outer transaction owns it)."""
        yield self.conn


@asynccontextmanager
async def one_transaction(pool: AsyncConnectionPool) -> AsyncIterator[AsyncConnectionPool]:
    """A pool-shaped view of one connection in one transaction: committed on success, rolled back on error."""
    async with pool.connection() as conn, conn.transaction():
        yield cast(AsyncConnectionPool, _OneConnection(conn))


async def seed_in_one_transaction(pool: AsyncConnectionPool, seed: SeedFile, *, tree: Any = None,
                                  source: str | None = None) -> dict[str, int]:
    """Apply ``seed`` with every write in one transaction: an error anywhere leaves nothing behind."""
    async with one_transaction(pool) as shared:
        return await apply_seed(Registry(shared), seed, rating=RatingService(shared),
                                prepaid=PrepaidService(shared, pricer_for(shared)), tree=tree, source=source)


@contextmanager
def _at(tree: Any, source: str | None, *loc: str | int) -> Iterator[None]:
    """Turn a refusal by the hub while writing one item into ``file:line: field: message``."""
    try:
        yield
    except (DomainError, IntegrityViolation) as err:  # refusals; an unreachable database stays itself
        raise ConfigError(str(err), file=source, field=".".join(str(p) for p in loc),
                          line=line_of(tree, loc) if tree is not None else None) from err


async def apply_seed(registry: Registry, seed: SeedFile, *, rating: RatingService | None = None,
                     prepaid: PrepaidService | None = None, tree: Any = None,
                     source: str | None = None) -> dict[str, int]:
    """Create everything in ``seed`` (validated before); idempotent, so a run cut short can be repeated.

    A refusal while writing (e.g. an id owned by another tenant) is raised as a ``ConfigError`` naming the
    item's field and, given the YAML ``tree``, its line. ``seed_in_one_transaction`` makes the whole run atomic.
    """
    if seed.plans and rating is not None:
        with _at(tree, source, "plans"):
            await rating.set_plans(PlanBook(plans=seed.plans), tenant=seed.tenant, source="seed", author="seed")
    for i, a in enumerate(seed.accounts):
        with _at(tree, source, "accounts", i, "id"):
            await _account(a, seed.tenant, registry, rating, prepaid)
    for i, d in enumerate(seed.devices):
        with _at(tree, source, "devices", i, "id"):
            await registry.upsert_device(device_id=d.id, tenant=seed.tenant, profile_id=d.profile, name=d.name,
                                         address=d.address, port=d.port, secrets=d.secrets)
    for i, d in enumerate(seed.devices):
        for j, gateway in enumerate(d.gateways):
            with _at(tree, source, "devices", i, "gateways", j):
                await registry.attach_to_gateway(gateway_id=gateway, device_ids=[d.id], tenant=seed.tenant)
    existing = {(b.device_id, b.account_id, b.valid_from)
                for b in await registry.bindings(device_ids=[b.device for b in seed.bindings])}
    bound = 0
    for i, b in enumerate(seed.bindings):
        if (b.device, b.account, b.valid_from) not in existing:
            with _at(tree, source, "bindings", i):
                await registry.bind(device_id=b.device, account_id=b.account, valid_from=b.valid_from,
                                    valid_to=b.valid_to, tenant=seed.tenant)
            bound += 1
    return {"plans": len(seed.plans), "accounts": len(seed.accounts), "devices": len(seed.devices),
            "bindings": bound}


async def _account(a: SeedAccount, tenant: str, registry: Registry, rating: RatingService | None,
                   prepaid: PrepaidService | None) -> None:
    await registry.upsert_account(account_id=a.id, tenant=tenant, name=a.name, market=a.market,
                                  currency=a.currency, timezone=a.timezone, prepaid=a.prepaid is not None)
    for plan in a.plans if rating is not None else []:
        await rating.assign_plan(a.id, plan, tenant=tenant, author="seed")  # type: ignore[union-attr]
    if a.prepaid is not None and prepaid is not None:
        if a.prepaid.opening_balance > 0:  # once: the payment reference makes a repeat a no-op
            await prepaid.top_up(account_id=a.id, amount=a.prepaid.opening_balance,
                                 payment_ref=f"seed-opening-balance-{tenant}-{a.id}")
        await prepaid.configure(account_id=a.id, overdraft=a.prepaid.overdraft,
                                low_threshold=a.prepaid.low_threshold, debit_mode=a.prepaid.debit_mode)
