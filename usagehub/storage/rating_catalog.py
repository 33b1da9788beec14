"""The rating catalogue in storage: price plans, holiday calendars, VAT tables and vendors, as revisions.

Every change appends a revision (the database refuses edits); the latest revision
is in force. A plan's new revision may add versions, close the open one at a
future date, or change versions that have not started yet; versions that already
priced usage stay as they were (``PLAN_VERSION_CHANGED`` otherwise), so a past
invoice always re-rates to the same amounts.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date
from importlib import resources
from typing import Any

from usagehub.core.settlement import Vendor, VendorBook
from usagehub.core.tariffs import PlanBook, PricePlan
from usagehub.core.vat import VatTable, parse_vat_table
from usagehub.errors import DomainError
from usagehub.storage.pool import Connection

DEFAULT_VAT_SOURCE = "usagehub/data/vat_rates.yaml"


def digest_of(document: Any) -> str:
    """SHA-256 of a JSON document in canonical form (sorted keys, no spaces)."""
    return hashlib.sha256(json.dumps(document, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def plan_document(plan: PricePlan) -> dict[str, Any]:
    """A plan as JSON (decimals as strings, dates ISO)."""
    return plan.model_dump(mode="json")


async def bump_generation(conn: Connection) -> None:
    """Tell every cache that the catalogue changed (in the caller's transaction)."""
    await conn.execute("UPDATE rating_generation SET generation = generation + 1")


async def generation(conn: Connection) -> int:
    """The catalogue's current generation."""
    cur = await conn.execute("SELECT generation FROM rating_generation")
    row = await cur.fetchone()
    return int(row[0]) if row else 0  # type: ignore[call-overload]


async def lock_catalogue(conn: Connection, tenant: str) -> None:
    """Serialise catalogue writers of one tenant (revision numbers are read then written)."""
    await conn.execute("SELECT pg_advisory_xact_lock(hashtextextended('usagehub-rating:' || %s, 0))", (tenant,))


# --- plans ---------------------------------------------------------------------------------------

def check_revision(old: PricePlan, new: PricePlan, today: date) -> None:
    """Refuse a new revision that would change how already-started versions priced usage."""
    for name in ("product", "market", "currency", "unit", "vat_category"):
        if getattr(old, name) != getattr(new, name):
            raise DomainError("PLAN_IDENTITY_CHANGED", f"plan {old.id!r}: {name} cannot change "
                              f"({getattr(old, name)!r} -> {getattr(new, name)!r}); create a new plan id")
    kept = {v.valid_from: v for v in new.versions}
    for version in old.versions:
        if version.valid_from > today:
            continue   # not started: nothing was priced by it yet
        successor = kept.get(version.valid_from)
        if successor is None or successor.components != version.components:
            raise DomainError("PLAN_VERSION_CHANGED", f"plan {old.id!r}: the version from {version.valid_from} "
                              "is in force already; add a new version instead of changing it")
        if successor.valid_to != version.valid_to and (
                version.valid_to is not None or successor.valid_to is None or successor.valid_to <= today):
            raise DomainError("PLAN_VERSION_CHANGED", f"plan {old.id!r}: the version from {version.valid_from} "
                              "may only be closed at a future date")


@dataclass(frozen=True, slots=True, kw_only=True)
class StoredPlan:
    """A plan's revision as stored."""

    plan: PricePlan
    revision: int
    retired: bool
    source: str
    loaded_at: Any


async def current_plans(conn: Connection, tenant: str, *, with_retired: bool = False) -> list[StoredPlan]:
    """The latest revision of each plan of ``tenant`` (retired ones only when asked)."""
    cur = await conn.execute(
        "SELECT definition, revision, retired, source, loaded_at FROM current_price_plans WHERE tenant = %s "
        "AND (%s OR NOT retired) ORDER BY plan_id", (tenant, with_retired))
    return [StoredPlan(plan=PricePlan.model_validate(r[0]), revision=int(r[1]),  # type: ignore[call-overload]
                       retired=bool(r[2]), source=str(r[3]), loaded_at=r[4]) for r in await cur.fetchall()]


async def calendars(conn: Connection, tenant: str) -> dict[str, list[date]]:
    """The latest revision of each holiday calendar of ``tenant``."""
    cur = await conn.execute("SELECT DISTINCT ON (name) name, days FROM holiday_calendars WHERE tenant = %s "
                             "ORDER BY name, revision DESC", (tenant,))
    return {str(r[0]): list(r[1]) for r in await cur.fetchall()}  # type: ignore[call-overload]


async def load_book(conn: Connection, tenant: str) -> PlanBook:
    """The plan book in force for ``tenant``."""
    plans = await current_plans(conn, tenant)
    return PlanBook.model_validate({"calendars": await calendars(conn, tenant),
                                    "plans": [plan_document(p.plan) for p in plans]})


async def _insert_plan(conn: Connection, tenant: str, plan: PricePlan, revision: int, *, retired: bool,
                       source: str, author: str | None) -> None:
    doc = plan_document(plan)
    await conn.execute(
        "INSERT INTO price_plans (tenant, plan_id, revision, product, market, currency, unit, vat_category, "
        "retired, definition, digest, source, loaded_by) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s::jsonb, "
        "%s, %s, %s)", (tenant, plan.id, revision, plan.product, plan.market, plan.currency, plan.unit,
                        plan.vat_category, retired, json.dumps(doc), digest_of(doc), source, author))
    async with conn.cursor() as cur:
        await cur.executemany(
            "INSERT INTO price_plan_versions (tenant, plan_id, revision, valid_from, valid_to, components) "
            "VALUES (%s, %s, %s, %s, %s, %s::jsonb)",
            [(tenant, plan.id, revision, v.valid_from, v.valid_to,
              json.dumps(v.model_dump(mode="json")["components"])) for v in plan.versions])


@dataclass(frozen=True, slots=True, kw_only=True)
class PlanChange:
    """What storing a plan did: a new revision, or nothing (the same definition is in force)."""

    plan_id: str
    revision: int
    changed: bool
    retired: bool = False


async def store_book(conn: Connection, book: PlanBook, *, tenant: str, today: date, source: str,
                     author: str | None, replace: bool = False) -> list[PlanChange]:
    """Store a plan file's plans and calendars as new revisions where they differ (caller's transaction).

    ``replace`` retires the tenant's plans the file does not name.
    """
    await lock_catalogue(conn, tenant)
    current = {p.plan.id: p for p in await current_plans(conn, tenant, with_retired=True)}
    stored_calendars = await calendars(conn, tenant)
    known = set(stored_calendars) | set(book.calendars)
    changes: list[PlanChange] = []
    for plan in book.plans:
        for version in plan.versions:
            price = version.usage_price
            name = getattr(price, "calendar", None)
            if name and name not in known:
                raise DomainError("UNKNOWN_CALENDAR", f"plan {plan.id!r} names unknown calendar {name!r}")
        old = current.get(plan.id)
        if old is not None and not old.retired and old.plan == plan:
            changes.append(PlanChange(plan_id=plan.id, revision=old.revision, changed=False))
            continue
        if old is not None and not old.retired:
            check_revision(old.plan, plan, today)
        revision = old.revision + 1 if old else 1
        await _insert_plan(conn, tenant, plan, revision, retired=False, source=source, author=author)
        changes.append(PlanChange(plan_id=plan.id, revision=revision, changed=True))
    if replace:
        named = {p.id for p in book.plans}
        for plan_id, old in sorted(current.items()):
            if plan_id not in named and not old.retired:
                await _insert_plan(conn, tenant, old.plan, old.revision + 1, retired=True, source=source,
                                   author=author)
                changes.append(PlanChange(plan_id=plan_id, revision=old.revision + 1, changed=True, retired=True))
    for name, days in sorted(book.calendars.items()):
        if sorted(stored_calendars.get(name, [])) != sorted(days):
            await conn.execute(
                "INSERT INTO holiday_calendars (tenant, name, revision, days) SELECT %s, %s, "
                "coalesce(max(revision), 0) + 1, %s FROM holiday_calendars WHERE tenant = %s AND name = %s",
                (tenant, name, sorted(days), tenant, name))
    await bump_generation(conn)
    return changes


# --- VAT -----------------------------------------------------------------------------------------

def shipped_vat_text() -> str:
    """The VAT rate file usagehub ships (``usagehub/data/vat_rates.yaml``)."""
    return (resources.files("usagehub") / "data" / "vat_rates.yaml").read_text(encoding="utf-8")


async def load_vat(conn: Connection) -> tuple[int, VatTable] | None:
    """The VAT table in force and its revision (None before any was loaded)."""
    cur = await conn.execute("SELECT revision, document FROM vat_tables ORDER BY revision DESC LIMIT 1")
    row = await cur.fetchone()
    if row is None:
        return None
    return int(row[0]), VatTable.model_validate(row[1])  # type: ignore[call-overload]


async def store_vat(conn: Connection, table: VatTable, *, source: str, author: str | None) -> tuple[int, bool]:
    """Store ``table`` as the VAT table in force unless it already is; (revision, changed)."""
    await lock_catalogue(conn, "vat")
    doc = table.model_dump(mode="json")
    digest = digest_of(doc)
    cur = await conn.execute("SELECT revision, digest FROM vat_tables ORDER BY revision DESC LIMIT 1")
    row = await cur.fetchone()
    if row is not None and row[1] == digest:
        return int(row[0]), False  # type: ignore[call-overload]
    cur = await conn.execute("INSERT INTO vat_tables (source, digest, document, loaded_by) VALUES (%s, %s, "
                             "%s::jsonb, %s) RETURNING revision", (source, digest, json.dumps(doc), author))
    got = await cur.fetchone()
    assert got is not None
    revision = int(got[0])  # type: ignore[call-overload]
    rows = [(revision, code, r.category, r.rate, r.valid_from, r.valid_to, m.rounding.value, r.source)
            for code, m in sorted(table.markets.items()) for r in m.rates]
    async with conn.cursor() as c:
        await c.executemany("INSERT INTO vat_rates (revision, market, category, rate, valid_from, valid_to, "
                            "rounding, source) VALUES (%s, %s, %s, %s, %s, %s, %s, %s)", rows)
    await bump_generation(conn)
    return revision, True


async def ensure_vat(conn: Connection) -> bool:
    """Load the shipped VAT table when none is stored yet (first start); True when it loaded it."""
    if await load_vat(conn) is not None:
        return False
    await store_vat(conn, parse_vat_table(shipped_vat_text(), DEFAULT_VAT_SOURCE), source=DEFAULT_VAT_SOURCE,
                    author="usagehub")
    return True


# --- vendors -------------------------------------------------------------------------------------

async def load_vendors(conn: Connection, tenant: str) -> dict[str, tuple[int, Vendor]]:
    """The latest revision of each vendor of ``tenant``."""
    cur = await conn.execute("SELECT DISTINCT ON (vendor_id) vendor_id, revision, definition FROM vendors "
                             "WHERE tenant = %s ORDER BY vendor_id, revision DESC", (tenant,))
    return {str(r[0]): (int(r[1]), Vendor.model_validate(r[2]))  # type: ignore[call-overload]
            for r in await cur.fetchall()}


async def store_vendors(conn: Connection, vendors: Sequence[Vendor], *, tenant: str,
                        author: str | None) -> list[tuple[Vendor, int]]:
    """Store vendors as new revisions where they differ; (vendor, revision in force)."""
    await lock_catalogue(conn, tenant)
    current = await load_vendors(conn, tenant)
    out: list[tuple[Vendor, int]] = []
    for vendor in vendors:
        old = current.get(vendor.id)
        if old is not None and old[1] == vendor:
            out.append((vendor, old[0]))
            continue
        revision = old[0] + 1 if old else 1
        doc = vendor.model_dump(mode="json")
        await conn.execute(
            "INSERT INTO vendors (tenant, vendor_id, revision, kind, currency, definition, digest, loaded_by) "
            "VALUES (%s, %s, %s, %s, %s, %s::jsonb, %s, %s)",
            (tenant, vendor.id, revision, vendor.kind, vendor.currency, json.dumps(doc), digest_of(doc), author))
        out.append((vendor, revision))
    await bump_generation(conn)
    return out


def vendor_book(vendors: dict[str, tuple[int, Vendor]]) -> VendorBook:
    """The stored vendors as a core book."""
    return VendorBook(vendors=[v for _, (_, v) in sorted(vendors.items())])
