"""AnalyticsService: series, features, segments with history, top consumers, exports and pseudonyms."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime
from decimal import Decimal
from typing import Any

from psycopg_pool import AsyncConnectionPool

from usagehub.core.analytics.buckets import Bucket
from usagehub.core.analytics.membership import MembershipDiff, diff_members
from usagehub.core.analytics.privacy import PREFIX, pseudonym
from usagehub.core.analytics.rules import Rule, parse_rule, to_sql
from usagehub.errors import DomainError
from usagehub.storage.analytics_features import RefreshResult, RefreshSettings, refresh_features
from usagehub.storage.keys import Principal
from usagehub.storage.pool import mapped_errors
from usagehub.storage.rollups import Consumer, Scope, SeriesPoint, fetch_all, series, top_consumers

# Rule fields: name -> (type, trusted SQL column). Only these names can reach SQL.
FIELDS: dict[str, tuple[str, str]] = {
    **{n: ("number", f"pf.{n}") for n in (
        "days", "avg_daily", "peak_daily", "volatility", "mom_trend", "weekend_ratio", "weekend_share",
        "night_share", "morning_share", "afternoon_share", "evening_share")},
    **{n: ("number", f"af.{n}") for n in ("topups", "topup_typical", "days_near_zero", "activity")},
    **{n: ("text", f"a.{n}") for n in ("market", "timezone", "currency")},
}
_FROM = ("FROM accounts a LEFT JOIN product_features pf ON pf.account_id = a.account_id AND pf.product = %s "
         "LEFT JOIN account_features af ON af.account_id = a.account_id")


def compile_rule(text: str) -> Rule:
    """A segment rule parsed and checked against the known features (RuleError names the position)."""
    return parse_rule(text, {k: v[0] for k, v in FIELDS.items()})


@dataclass(frozen=True, slots=True, kw_only=True)
class Segment:
    """A saved rule over features of one product."""

    segment_id: int
    name: str
    rule: str
    product: str
    description: str
    members: int
    updated_at: datetime


@dataclass(frozen=True, slots=True, kw_only=True)
class Member:
    """A segment member and the values of the features its rule reads."""

    account_id: str
    since: datetime
    features: dict[str, Decimal | str | None]


@dataclass(frozen=True, slots=True, kw_only=True)
class Change:
    """An account entering or leaving a segment."""

    account_id: str
    change: str
    at: datetime


class AnalyticsService:
    """What GraphQL, the page, the exports and the CLI call."""

    def __init__(self, pool: AsyncConnectionPool) -> None:
        self.pool = pool
        self._secret: bytes | None = None
        self._reverse: dict[str, tuple[int, dict[str, str]]] = {}

    # Privacy -------------------------------------------------------------------------------------

    async def personal(self, principal: Principal) -> bool:
        """Whether this caller sees real account ids: analytics keys only when granted personal data."""
        if principal.role != "analytics":
            return True
        async with mapped_errors(), self.pool.connection() as conn:
            cur = await conn.execute("SELECT 1 FROM analytics_personal_keys WHERE key_id = %s", (principal.key_id,))
            return await cur.fetchone() is not None

    async def grant_personal(self, key_id: str, granted: bool = True) -> None:
        """Grant (or withdraw) personal data to an analytics key."""
        async with mapped_errors(), self.pool.connection() as conn:
            if granted:
                await conn.execute("INSERT INTO analytics_personal_keys (key_id) VALUES (%s) ON CONFLICT DO NOTHING",
                                   (key_id,))
            else:
                await conn.execute("DELETE FROM analytics_personal_keys WHERE key_id = %s", (key_id,))

    async def secret(self) -> bytes:
        """The hub's pseudonym secret (made by the migration, never shown)."""
        if self._secret is None:
            async with mapped_errors(), self.pool.connection() as conn:
                cur = await conn.execute("SELECT secret FROM analytics_secret")
                row = await cur.fetchone()
            if row is None:
                raise DomainError("NO_SECRET", "the analytics secret is missing")
            self._secret = bytes(row[0])
        return self._secret

    async def show(self, account_id: str, personal: bool) -> str:
        """The id a caller may see for an account."""
        return account_id if personal else pseudonym(account_id, await self.secret())

    async def resolve(self, tenant: str, shown: str, personal: bool) -> str:
        """The real account id behind what a caller passed (a pseudonym unless personal)."""
        if personal and not shown.startswith(PREFIX):
            return shown
        if not shown.startswith(PREFIX):
            raise DomainError("FORBIDDEN", "this key sees pseudonymous accounts only: pass a p_… id")
        async with mapped_errors(), self.pool.connection() as conn:
            cur = await conn.execute("SELECT count(*) FROM accounts WHERE tenant = %s", (tenant,))
            count = int((await fetch_all(cur))[0][0])
            cached = self._reverse.get(tenant)
            if cached is None or cached[0] != count:
                cur = await conn.execute("SELECT account_id FROM accounts WHERE tenant = %s", (tenant,))
                secret = await self.secret()
                cached = (count, {pseudonym(str(r[0]), secret): str(r[0]) for r in await fetch_all(cur)})
                self._reverse[tenant] = cached
        if shown not in cached[1]:
            raise DomainError("NOT_FOUND", f"no account {shown}")
        return cached[1][shown]

    # Series and rankings -------------------------------------------------------------------------

    async def series(self, *, tenant: str, scope: Scope, key: str | None, product: str | None, bucket: Bucket,
                     since: date, until: date) -> list[SeriesPoint]:
        """Usage of one product per zone-aligned bucket over [since, until) local dates."""
        if not product:
            raise DomainError("PRODUCT_REQUIRED", "name a product: a series adds up one product's quantities "
                                                  "(products have different units: kWh, kW, s, counts)")
        if until <= since:
            raise DomainError("BAD_REQUEST", "until must be after since")
        if (until - since).days > 3700:
            raise DomainError("BAD_REQUEST", "ask for at most ten years at once")
        if bucket in (Bucket.QUARTER, Bucket.HOUR) and scope is not Scope.ACCOUNT and scope is not Scope.DEVICE \
                and (until - since).days > 92:
            raise DomainError("BAD_REQUEST", "sub-day fleet series span at most 92 days")
        async with mapped_errors(), self.pool.connection() as conn:
            return await series(conn, tenant=tenant, scope=scope, key=key, product=product, bucket=bucket,
                                since=since, until=until)

    async def top(self, *, tenant: str, product: str, market: str | None, since: date, until: date,
                  limit: int) -> list[Consumer]:
        """Top consumers of a product, optionally within one market."""
        async with mapped_errors(), self.pool.connection() as conn:
            return await top_consumers(conn, tenant=tenant, product=product, market=market, since=since,
                                       until=until, limit=limit)

    # Features ------------------------------------------------------------------------------------

    async def daily(self, as_of: date, at: datetime) -> tuple[RefreshResult, list[tuple[str, Segment, MembershipDiff]]]:
        """The daily job: features as of ``as_of``, then every tenant's segments evaluated at ``at``."""
        result = await self.refresh_features(as_of)
        async with mapped_errors(), self.pool.connection() as conn:
            cur = await conn.execute("SELECT DISTINCT tenant FROM segments ORDER BY tenant")
            tenants = [str(r[0]) for r in await cur.fetchall()]
        evaluated = []
        for tenant in tenants:
            for seg in await self.segments(tenant):
                evaluated.append((tenant, seg, await self.evaluate(tenant, seg.segment_id, at)))
        return result, evaluated

    async def refresh_features(self, as_of: date, settings: RefreshSettings | None = None) -> RefreshResult:
        """Recompute every account's features as of the local day ``as_of`` (the daily job)."""
        async with mapped_errors(), self.pool.connection() as conn:
            return await refresh_features(conn, as_of, settings)

    async def features(self, account_id: str, product: str | None = None) -> dict[str, Any]:
        """All stored features of one account (and of one product, or of every product by name)."""
        async with mapped_errors(), self.pool.connection() as conn:
            cur = await conn.execute("SELECT * FROM account_features WHERE account_id = %s", (account_id,))
            names = [c.name for c in cur.description or []]
            row = await cur.fetchone()
            result: dict[str, Any] = dict(zip(names, row, strict=True)) if row else {"account_id": account_id}
            cur = await conn.execute("SELECT * FROM product_features WHERE account_id = %s "
                                     "AND (%s::text IS NULL OR product = %s) ORDER BY product",
                                     (account_id, product, product))
            names = [c.name for c in cur.description or []]
            result["products"] = [dict(zip(names, r, strict=True)) for r in await fetch_all(cur)]
        return result

    # Segments ------------------------------------------------------------------------------------

    async def save_segment(self, *, tenant: str, name: str, rule: str, product: str, description: str = "",
                           segment_id: int | None = None) -> Segment:
        """Create a segment, or update one by id; the rule is checked before it is stored."""
        compile_rule(rule)
        async with mapped_errors(), self.pool.connection() as conn:
            if segment_id is None:
                cur = await conn.execute(
                    "INSERT INTO segments (tenant, name, rule, product, description) VALUES (%s, %s, %s, %s, %s) "
                    "ON CONFLICT (tenant, name) DO NOTHING RETURNING segment_id",
                    (tenant, name, rule, product, description))
                row = await cur.fetchone()
                if row is None:
                    raise DomainError("CONFLICT", f"a segment named {name!r} exists")
                segment_id = int(row[0])
            else:
                cur = await conn.execute(
                    "UPDATE segments SET name = %s, rule = %s, product = %s, description = %s, updated_at = now() "
                    "WHERE segment_id = %s AND tenant = %s", (name, rule, product, description, segment_id, tenant))
                if cur.rowcount != 1:
                    raise DomainError("NOT_FOUND", f"no segment {segment_id}")
        return await self.segment(tenant, segment_id)

    async def segments(self, tenant: str) -> list[Segment]:
        """All segments of a tenant with their member counts."""
        return await self._segments(tenant, None)

    async def segment(self, tenant: str, segment_id: int) -> Segment:
        """One segment; NOT_FOUND when it is not the tenant's."""
        found = await self._segments(tenant, segment_id)
        if not found:
            raise DomainError("NOT_FOUND", f"no segment {segment_id}")
        return found[0]

    async def _segments(self, tenant: str, segment_id: int | None) -> list[Segment]:
        async with mapped_errors(), self.pool.connection() as conn:
            cur = await conn.execute(
                "SELECT s.segment_id, s.name, s.rule, s.product, s.description, s.updated_at, "
                "(SELECT count(*) FROM segment_members m WHERE m.segment_id = s.segment_id) FROM segments s "
                "WHERE s.tenant = %s AND (%s::bigint IS NULL OR s.segment_id = %s) ORDER BY s.segment_id",
                (tenant, segment_id, segment_id))
            return [Segment(segment_id=int(r[0]), name=str(r[1]), rule=str(r[2]), product=str(r[3]),
                            description=str(r[4]), updated_at=r[5], members=int(r[6])) for r in await fetch_all(cur)]

    async def delete_segment(self, tenant: str, segment_id: int) -> bool:
        """Delete a segment and its history."""
        async with mapped_errors(), self.pool.connection() as conn:
            cur = await conn.execute("DELETE FROM segments WHERE segment_id = %s AND tenant = %s",
                                     (segment_id, tenant))
            return cur.rowcount == 1

    async def evaluate(self, tenant: str, segment_id: int, at: datetime) -> MembershipDiff:
        """Evaluate a segment's rule over the current features; record who entered and left at ``at``."""
        async with mapped_errors(), self.pool.connection() as conn, conn.transaction():
            cur = await conn.execute("SELECT rule, product FROM segments WHERE segment_id = %s AND tenant = %s "
                                     "FOR UPDATE", (segment_id, tenant))
            row = await cur.fetchone()
            if row is None:
                raise DomainError("NOT_FOUND", f"no segment {segment_id}")
            rule = compile_rule(str(row[0]))
            where, params = to_sql(rule, {k: v[1] for k, v in FIELDS.items()})
            cur = await conn.execute(f"SELECT a.account_id {_FROM} WHERE a.tenant = %s AND {where}",
                                     [row[1], tenant, *params])
            now = {str(r[0]) for r in await fetch_all(cur)}
            cur = await conn.execute("SELECT account_id FROM segment_members WHERE segment_id = %s", (segment_id,))
            diff = diff_members({str(r[0]) for r in await fetch_all(cur)}, now)
            await self._record(conn, segment_id, rule.text, diff, at)
        return diff

    @staticmethod
    async def _record(conn: Any, segment_id: int, rule: str, diff: MembershipDiff, at: datetime) -> None:
        cur = await conn.execute(
            "INSERT INTO segment_evaluations (segment_id, evaluated_at, rule, members, entered, left_count) "
            "VALUES (%s, %s, %s, %s, %s, %s) RETURNING evaluation_id",
            (segment_id, at, rule, len(diff.members), len(diff.entered), len(diff.left)))
        evaluation = (await cur.fetchone())[0]
        await conn.execute("DELETE FROM segment_members WHERE segment_id = %s AND account_id = ANY(%s)",
                           (segment_id, list(diff.left)))
        await conn.execute("INSERT INTO segment_members (segment_id, account_id, since) "
                           "SELECT %s, unnest(%s::text[]), %s", (segment_id, list(diff.entered), at))
        await conn.execute(
            "INSERT INTO segment_changes (segment_id, evaluation_id, account_id, change, at) "
            "SELECT %s, %s, a, 'entered', %s FROM unnest(%s::text[]) a UNION ALL "
            "SELECT %s, %s, a, 'left', %s FROM unnest(%s::text[]) a",
            (segment_id, evaluation, at, list(diff.entered), segment_id, evaluation, at, list(diff.left)))

    async def members(self, tenant: str, segment_id: int, offset: int, limit: int) -> list[Member]:
        """Current members in account order with the features their segment's rule reads."""
        seg = await self.segment(tenant, segment_id)
        rule = compile_rule(seg.rule)
        shown = [f"{FIELDS[f][1]} AS {f}" for f in rule.fields] or ["NULL AS none"]
        async with mapped_errors(), self.pool.connection() as conn:
            cur = await conn.execute(
                f"SELECT a.account_id, m.since, {', '.join(shown)} {_FROM} "
                "JOIN segment_members m ON m.account_id = a.account_id AND m.segment_id = %s "
                "ORDER BY a.account_id OFFSET %s LIMIT %s", (seg.product, segment_id, offset, limit))
            return [Member(account_id=str(r[0]), since=r[1], features=dict(zip(rule.fields, r[2:], strict=False)))
                    for r in await fetch_all(cur)]

    async def changes(self, tenant: str, segment_id: int, limit: int = 100) -> list[Change]:
        """The latest entries and exits of a segment, newest first."""
        await self.segment(tenant, segment_id)
        async with mapped_errors(), self.pool.connection() as conn:
            cur = await conn.execute(
                "SELECT account_id, change, at FROM segment_changes WHERE segment_id = %s "
                "ORDER BY at DESC, evaluation_id DESC, account_id LIMIT %s", (segment_id, limit))
            return [Change(account_id=str(r[0]), change=str(r[1]), at=r[2]) for r in await fetch_all(cur)]

    async def account_zone(self, tenant: str, account_id: str) -> str:
        """An account's time zone; NOT_FOUND outside the tenant."""
        async with mapped_errors(), self.pool.connection() as conn:
            cur = await conn.execute("SELECT timezone FROM accounts WHERE account_id = %s AND tenant = %s",
                                     (account_id, tenant))
            row = await cur.fetchone()
        if row is None:
            raise DomainError("NOT_FOUND", f"no account {account_id}")
        return str(row[0])
