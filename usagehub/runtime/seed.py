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
from collections.abc import Collection
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from pathlib import Path
from typing import Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError, available_timezones

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from ruamel.yaml import YAML
from ruamel.yaml.error import YAMLError

from usagehub.core.money import MINOR_UNITS
from usagehub.core.profiles import line_of, validation_problems
from usagehub.core.tariffs import PlanBook, PricePlan
from usagehub.errors import ConfigError, ConfigErrors
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


def parse_seed(path: Path, known: Known | None = None) -> SeedFile:
    """Read and validate a seed file; every problem is raised at once (``ConfigErrors``).

    Without ``known`` the references are checked within the file only (profiles are not checked).
    """
    seed, _ = read_seed(path)
    check_references(path, seed, known or Known())
    return seed


def read_seed(path: Path) -> tuple[SeedFile, Any]:
    """The seed file's shape and values, validated (every problem at once); the parsed tree, for lines."""
    tree = _load_tree(path)
    if tree is None:
        tree = {}
    if not isinstance(tree, dict):
        raise ConfigError("a seed file is a mapping with accounts, devices, bindings…", file=str(path), line=1)
    try:
        seed = SeedFile.model_validate(tree)
    except ValidationError as err:
        raise ConfigErrors(validation_problems(err, tree, str(path))) from err
    return seed, tree


def check_references(path: Path, seed: SeedFile, known: Known) -> None:
    """Every reference of the file resolved against the file and ``known``; all problems at once."""
    problems = _references(seed, known, _load_tree(path), str(path))
    if problems:
        raise ConfigErrors(problems)


def _references(seed: SeedFile, known: Known, tree: Any, source: str) -> list[ConfigError]:
    problems: list[ConfigError] = []

    def problem(message: str, *loc: str | int) -> None:
        problems.append(ConfigError(message, file=source, field=".".join(str(p) for p in loc),
                                    line=line_of(tree, loc)))

    ids: list[tuple[str, list[str]]] = [
        ("accounts", [a.id for a in seed.accounts]), ("devices", [d.id for d in seed.devices]),
        ("plans", [p.id for p in seed.plans])]
    for name, names in ids:
        seen: set[str] = set()
        for i, ident in enumerate(names):
            if ident in seen:
                problem(f"{ident!r} appears twice", name, i, "id")
            seen.add(ident)
    plans = {p.id: p.currency for p in seed.plans} | dict(known.currencies)
    plan_ids = set(plans) | set(known.plans)
    for i, a in enumerate(seed.accounts):
        for j, plan in enumerate(a.plans):
            if plan not in plan_ids:
                problem(f"no price plan {plan!r} in this file or the hub", "accounts", i, "plans", j)
            elif plans.get(plan, a.currency) != a.currency:
                problem(f"plan {plan!r} prices in {plans[plan]}, the account pays in {a.currency}",
                        "accounts", i, "plans", j)
    if known.profiles is not None:
        for i, d in enumerate(seed.devices):
            if d.profile is not None and d.profile not in known.profiles:
                problem(f"no device profile {d.profile!r} (profiles: {', '.join(sorted(known.profiles))})",
                        "devices", i, "profile")
    devices = {d.id for d in seed.devices} | set(known.devices)
    accounts = {a.id for a in seed.accounts} | set(known.accounts)
    for i, b in enumerate(seed.bindings):
        if b.device not in devices:
            problem(f"device {b.device!r} is neither in this file nor registered", "bindings", i, "device")
        if b.account not in accounts:
            problem(f"account {b.account!r} is neither in this file nor in the hub", "bindings", i, "account")
        if b.valid_to is not None and b.valid_to <= b.valid_from:
            problem("valid_to must be after valid_from", "bindings", i, "valid_to")
    return sorted(problems, key=lambda p: p.line or 0)


async def known_in(registry: Registry, seed: SeedFile, profiles: Collection[str] | None,
                   rating: RatingService | None = None) -> Known:
    """What the hub already holds that ``seed`` refers to: devices and accounts of its tenant, plans."""
    wanted_devices = sorted({b.device for b in seed.bindings} - {d.id for d in seed.devices})
    wanted_accounts = sorted({b.account for b in seed.bindings} - {a.id for a in seed.accounts})
    devices = {d.device_id for d in await registry.devices(tenant=seed.tenant, after=None, limit=len(wanted_devices),
                                                           device_ids=wanted_devices)} if wanted_devices else set()
    accounts = {a for a in wanted_accounts if await registry.account(a, tenant=seed.tenant) is not None}
    stored = await rating.plans(tenant=seed.tenant) if rating is not None else []
    return Known(profiles=profiles, devices=devices, accounts=accounts, plans={p.plan.id for p in stored},
                 currencies={p.plan.id: p.plan.currency for p in stored})


async def apply_seed(registry: Registry, seed: SeedFile, *, rating: RatingService | None = None,
                     prepaid: PrepaidService | None = None) -> dict[str, int]:
    """Create everything in ``seed`` (validated before); idempotent, so a run cut short can be repeated."""
    if seed.plans and rating is not None:
        await rating.set_plans(PlanBook(plans=seed.plans), tenant=seed.tenant, source="seed", author="seed")
    for a in seed.accounts:
        await registry.upsert_account(account_id=a.id, tenant=seed.tenant, name=a.name, market=a.market,
                                      currency=a.currency, timezone=a.timezone, prepaid=a.prepaid is not None)
        for plan in a.plans if rating is not None else []:
            await rating.assign_plan(a.id, plan, tenant=seed.tenant, author="seed")  # type: ignore[union-attr]
        if a.prepaid is not None and prepaid is not None:
            if a.prepaid.opening_balance > 0:  # once: the payment reference makes a repeat a no-op
                await prepaid.top_up(account_id=a.id, amount=a.prepaid.opening_balance,
                                     payment_ref=f"seed-opening-balance-{seed.tenant}-{a.id}")
            await prepaid.configure(account_id=a.id, overdraft=a.prepaid.overdraft,
                                    low_threshold=a.prepaid.low_threshold, debit_mode=a.prepaid.debit_mode)
    for d in seed.devices:
        await registry.upsert_device(device_id=d.id, tenant=seed.tenant, profile_id=d.profile, name=d.name,
                                     address=d.address, port=d.port, secrets=d.secrets)
    existing = {(b.device_id, b.account_id, b.valid_from)
                for b in await registry.bindings(device_ids=[b.device for b in seed.bindings])}
    bound = 0
    for b in seed.bindings:
        if (b.device, b.account, b.valid_from) not in existing:
            await registry.bind(device_id=b.device, account_id=b.account, valid_from=b.valid_from,
                                valid_to=b.valid_to, tenant=seed.tenant)
            bound += 1
    return {"plans": len(seed.plans), "accounts": len(seed.accounts), "devices": len(seed.devices),
            "bindings": bound}
