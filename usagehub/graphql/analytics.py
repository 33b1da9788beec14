"""Consumption series, behaviour features, segments and candidates (issue 9)."""

from __future__ import annotations

from datetime import UTC, date, datetime
from decimal import Decimal
from enum import Enum
from typing import Any

import strawberry
from strawberry.types import Info

from usagehub.analytics.service import AnalyticsService, Member, Segment
from usagehub.core.analytics.buckets import Bucket
from usagehub.graphql.auth import api_error, domain_errors, require
from usagehub.graphql.pagination import Connection, connection, decode_cursor, page_size
from usagehub.storage.rollups import Scope

ANALYTICS_READ = ("admin", "analytics")
ANALYTICS_WRITE = ("admin", "analytics")


def _service(info: Info) -> AnalyticsService:
    service = info.context.services.analytics
    if service is None:
        raise api_error("UNAVAILABLE", "analytics is not enabled on this hub")
    return service  # type: ignore[no-any-return]


async def _caller(info: Info, *roles: str) -> tuple[str, bool, AnalyticsService]:
    tenant = require(info, *roles)
    service = _service(info)
    return tenant, await service.personal(info.context.principal), service


@strawberry.enum
class SeriesScope(Enum):
    """What a series sums over."""

    FLEET = "fleet"
    ACCOUNT = "account"
    DEVICE = "device"
    MARKET = "market"
    SEGMENT = "segment"


@strawberry.enum
class SeriesBucket(Enum):
    """Bucket width, aligned to each account's zone."""

    QUARTER = "15min"
    HOUR = "hour"
    DAY = "day"
    WEEK = "week"
    MONTH = "month"


@strawberry.type
class SeriesValue:
    """One bucket of a series: local wall-clock start, usage, activity count and accounts contributing."""

    start: str
    quantity: Decimal
    activity: int
    accounts: int


@strawberry.type
class FeatureValue:
    """A named feature value (decimal as a string; null when not enough data)."""

    name: str
    value: str | None


@strawberry.type
class AccountFeatures:
    """An account's behaviour features, per product and account-wide."""

    account_id: str
    account: list[FeatureValue]
    products: list[ProductFeatures]


@strawberry.type
class ProductFeatures:
    """Usage features of one product, with the hour-of-day load profile."""

    product: str
    features: list[FeatureValue]
    hour_shares: list[Decimal]


@strawberry.type
class SegmentType:
    """A saved rule over features of one product."""

    id: strawberry.ID
    name: str
    rule: str
    product: str
    description: str
    members: int
    updated_at: datetime

    @classmethod
    def of(cls, s: Segment) -> SegmentType:
        """From the service's segment."""
        return cls(id=strawberry.ID(str(s.segment_id)), name=s.name, rule=s.rule, product=s.product,
                   description=s.description, members=s.members, updated_at=s.updated_at)


@strawberry.type
class SegmentMember:
    """A member account and the features that put it in the segment."""

    account_id: str
    since: datetime
    features: list[FeatureValue]


@strawberry.type
class SegmentChange:
    """An account entering or leaving a segment."""

    account_id: str
    change: str
    at: datetime


@strawberry.type
class Evaluation:
    """The outcome of evaluating a segment."""

    members: int
    entered: list[str]
    left: list[str]


@strawberry.type
class TopConsumer:
    """An account and its usage of a product over the range."""

    account_id: str
    market: str
    quantity: Decimal


@strawberry.input
class SegmentInput:
    """A segment to create (no id) or update."""

    name: str
    rule: str
    product: str
    description: str = ""
    id: strawberry.ID | None = None


def _values(row: dict[str, Any], skip: set[str]) -> list[FeatureValue]:
    return [FeatureValue(name=k, value=None if v is None else str(v)) for k, v in row.items() if k not in skip]


_SKIP = {"account_id", "product", "computed_at", "hour_shares"}


async def _member(service: AnalyticsService, m: Member, personal: bool) -> SegmentMember:
    return SegmentMember(account_id=await service.show(m.account_id, personal), since=m.since,
                         features=[FeatureValue(name=k, value=None if v is None else str(v))
                                   for k, v in m.features.items()])


@strawberry.type
class AnalyticsQuery:
    """Analytics reads: admin and analytics keys; analytics keys see pseudonyms unless granted personal data."""

    @strawberry.field(description="Usage of one product per bucket over [since, until) local dates; key: "
                                  "account/device id, market code or segment id.")
    async def consumption_series(self, info: Info, scope: SeriesScope, since: date, until: date,
                                 product: str, bucket: SeriesBucket = SeriesBucket.DAY,
                                 key: str | None = None) -> list[SeriesValue]:
        tenant, personal, service = await _caller(info, *ANALYTICS_READ)
        with domain_errors():
            if scope is SeriesScope.ACCOUNT and key is not None:
                key = await service.resolve(tenant, key, personal)
            points = await service.series(tenant=tenant, scope=Scope(scope.value), key=key, product=product,
                                          bucket=Bucket(bucket.value), since=since, until=until)
        return [SeriesValue(start=p.label.isoformat(), quantity=p.quantity, activity=p.activity,
                            accounts=p.accounts) for p in points]

    @strawberry.field(description="Behaviour features of one account (refreshed daily).")
    async def account_features(self, info: Info, account_id: str) -> AccountFeatures:
        tenant, personal, service = await _caller(info, *ANALYTICS_READ)
        with domain_errors():
            real = await service.resolve(tenant, account_id, personal)
            await service.account_zone(tenant, real)
            row = await service.features(real)
        products = [ProductFeatures(product=p["product"], features=_values(p, _SKIP),
                                    hour_shares=list(p["hour_shares"])) for p in row.pop("products")]
        return AccountFeatures(account_id=await service.show(real, personal), account=_values(row, _SKIP),
                               products=products)

    @strawberry.field
    async def segments(self, info: Info) -> list[SegmentType]:
        tenant, _, service = await _caller(info, *ANALYTICS_READ)
        with domain_errors():
            return [SegmentType.of(s) for s in await service.segments(tenant)]

    @strawberry.field(description="Members of a segment with the features its rule reads, paged.")
    async def segment_members(self, info: Info, id: strawberry.ID, first: int = 50,
                              after: str | None = None) -> Connection[SegmentMember]:
        tenant, personal, service = await _caller(info, *ANALYTICS_READ)
        n = page_size(first)
        # Offset cursors: a keyset cursor on account ids would leak them to pseudonymous callers.
        offset = int(str(decode_cursor(after) or 0))
        with domain_errors():
            rows = await service.members(tenant, int(id), offset, n + 1)
        members = [await _member(service, m, personal) for m in rows]
        positions = {id_: offset + i + 1 for i, id_ in enumerate(m.account_id for m in members)}
        return connection(members, n, lambda m: positions[m.account_id])

    @strawberry.field(description="Who entered and left a segment, newest first.")
    async def segment_history(self, info: Info, id: strawberry.ID, first: int = 100) -> list[SegmentChange]:
        tenant, personal, service = await _caller(info, *ANALYTICS_READ)
        with domain_errors():
            changes = await service.changes(tenant, int(id), page_size(first))
        return [SegmentChange(account_id=await service.show(c.account_id, personal), change=c.change, at=c.at)
                for c in changes]

    @strawberry.field(description="The top-N consumers of a product over [since, until), optionally per market.")
    async def top_consumers(self, info: Info, product: str, since: date, until: date, market: str | None = None,
                            first: int = 10) -> list[TopConsumer]:
        tenant, personal, service = await _caller(info, *ANALYTICS_READ)
        with domain_errors():
            top = await service.top(tenant=tenant, product=product, market=market, since=since, until=until,
                                    limit=page_size(first))
        return [TopConsumer(account_id=await service.show(c.account_id, personal), market=c.market,
                            quantity=c.quantity) for c in top]


@strawberry.type
class AnalyticsMutation:
    """Segments: save, delete, evaluate (records who entered and left)."""

    @strawberry.mutation
    async def save_segment(self, info: Info, segment: SegmentInput) -> SegmentType:
        tenant, _, service = await _caller(info, *ANALYTICS_WRITE)
        with domain_errors():
            saved = await service.save_segment(tenant=tenant, name=segment.name, rule=segment.rule,
                                               product=segment.product, description=segment.description,
                                               segment_id=int(segment.id) if segment.id else None)
        return SegmentType.of(saved)

    @strawberry.mutation
    async def delete_segment(self, info: Info, id: strawberry.ID) -> bool:
        tenant, _, service = await _caller(info, *ANALYTICS_WRITE)
        with domain_errors():
            return await service.delete_segment(tenant, int(id))

    @strawberry.mutation
    async def evaluate_segment(self, info: Info, id: strawberry.ID) -> Evaluation:
        tenant, personal, service = await _caller(info, *ANALYTICS_WRITE)
        with domain_errors():
            diff = await service.evaluate(tenant, int(id), datetime.now(UTC))
        return Evaluation(members=len(diff.members),
                          entered=[await service.show(a, personal) for a in diff.entered],
                          left=[await service.show(a, personal) for a in diff.left])


# Strawberry types merged into the root Query, Mutation and Subscription by schema.py.
QUERIES: tuple[type, ...] = (AnalyticsQuery,)
MUTATIONS: tuple[type, ...] = (AnalyticsMutation,)
SUBSCRIPTIONS: tuple[type, ...] = ()
