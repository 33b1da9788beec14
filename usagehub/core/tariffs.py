"""Price plans: the declarative model of tariff files and its parser (text in, models out).

A plan prices one product (a meter type: ``electricity``, ``alarm_monitoring``) in
one market and currency, whatever device fed the usage. It has versions with
validity dates (local dates in the account's zone, ``valid_to`` exclusive); each
version lists components: one usage price (``flat``, ``graduated``, ``volume`` or
``tou``) and optionally a ``standing_charge`` and a ``minimum``.
"""

from __future__ import annotations

import itertools
import re
from datetime import date
from decimal import Decimal
from typing import Annotated, Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap, CommentedSeq
from ruamel.yaml.error import YAMLError

from usagehub.core.money import MINOR_UNITS
from usagehub.errors import ConfigError

DayName = Literal["mon", "tue", "wed", "thu", "fri", "sat", "sun", "holiday"]
WEEKDAYS: tuple[DayName, ...] = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
_HHMM = re.compile(r"^([01]\d|2[0-3]):([0-5]\d)$|^24:00$")
_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$")


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _finite(value: Decimal) -> Decimal:
    if not value.is_finite():
        raise ValueError("must be a finite number")
    return value


def _non_negative(value: Decimal) -> Decimal:
    if _finite(value) < 0:
        raise ValueError("must not be negative")
    return value


class Flat(_Model):
    """One price per unit."""

    type: Literal["flat"]
    price: Decimal

    _p = field_validator("price")(_finite)


class Tier(_Model):
    """A band of quantity up to ``up_to`` (inclusive; ``None`` = no limit) at ``price`` per unit."""

    up_to: Decimal | None = None
    price: Decimal

    _p = field_validator("price")(_finite)


def _check_tiers(tiers: list[Tier]) -> list[Tier]:
    bounds = [t.up_to for t in tiers]
    if bounds[-1] is not None:
        raise ValueError("the last tier must have no 'up_to' (it takes everything above)")
    inner = [b for b in bounds[:-1] if b is not None]
    if len(inner) != len(bounds) - 1:
        raise ValueError("only the last tier may omit 'up_to'")
    if any(b <= 0 for b in inner) or any(a >= b for a, b in itertools.pairwise(inner)):
        raise ValueError("tier 'up_to' bounds must be positive and strictly increasing")
    return tiers


class Graduated(_Model):
    """Each unit is priced at the band it falls in (first 100 at A, next 400 at B, ...)."""

    type: Literal["graduated"]
    tiers: list[Tier] = Field(min_length=1)

    _t = field_validator("tiers")(_check_tiers)


class Volume(_Model):
    """All units are priced at the band the period's total quantity reaches."""

    type: Literal["volume"]
    tiers: list[Tier] = Field(min_length=1)

    _t = field_validator("tiers")(_check_tiers)


def _minute(text: str) -> int:
    hours, minutes = text.split(":")
    return int(hours) * 60 + int(minutes)


class Window(_Model):
    """A time-of-use window: local ``start``-``end`` (HH:MM, end exclusive, 24:00 allowed) on ``days``."""

    name: str
    price: Decimal
    days: list[DayName] = Field(min_length=1)
    start: str
    end: str

    _p = field_validator("price")(_finite)

    @field_validator("start", "end")
    @classmethod
    def _hhmm(cls, value: str) -> str:
        if not _HHMM.match(value):
            raise ValueError("must be HH:MM between 00:00 and 24:00")
        return value

    @model_validator(mode="after")
    def _ordered(self) -> Window:
        if self.start_minute >= self.end_minute:
            raise ValueError("start must be before end; split an overnight window in two "
                             "(22:00-24:00, 00:00-06:00)")
        return self

    @property
    def start_minute(self) -> int:
        """Minutes after local midnight where the window opens."""
        return _minute(self.start)

    @property
    def end_minute(self) -> int:
        """Minutes after local midnight where the window closes (exclusive)."""
        return _minute(self.end)


class DefaultWindow(_Model):
    """The price of any local time no window covers."""

    name: str = "default"
    price: Decimal

    _p = field_validator("price")(_finite)


class TimeOfUse(_Model):
    """Prices by local time of day, weekday, and holidays from a named calendar.

    On a date of the calendar, only windows listing ``holiday`` apply (the weekday is ignored).
    """

    type: Literal["tou"]
    windows: list[Window] = Field(min_length=1)
    calendar: str | None = None
    default: DefaultWindow | None = None

    @model_validator(mode="after")
    def _no_overlap(self) -> TimeOfUse:
        names = [w.name for w in self.windows]
        if len(set(names)) != len(names) or (self.default is not None and self.default.name in names):
            raise ValueError("window names must be unique")
        for day in (*WEEKDAYS, "holiday"):
            spans = sorted((w.start_minute, w.end_minute, w.name) for w in self.windows if day in w.days)
            for (_, end, a), (start, _, b) in itertools.pairwise(spans):
                if start < end:
                    raise ValueError(f"windows {a!r} and {b!r} overlap on {day}")
        return self


class StandingCharge(_Model):
    """A fixed charge per local ``day`` or per billing ``period`` (pro-rated by days on a plan change)."""

    type: Literal["standing_charge"]
    amount: Decimal
    per: Literal["day", "period"] = "period"
    vat_category: str | None = None

    _a = field_validator("amount")(_non_negative)


class Minimum(_Model):
    """A floor on the period's usage charges; the shortfall becomes a ``minimum`` line."""

    type: Literal["minimum"]
    amount: Decimal

    _a = field_validator("amount")(_non_negative)


UsagePrice = Flat | Graduated | Volume | TimeOfUse
Component = Annotated[Flat | Graduated | Volume | TimeOfUse | StandingCharge | Minimum,
                      Field(discriminator="type")]


class PlanVersion(_Model):
    """The components of a plan in force from ``valid_from`` until ``valid_to`` (exclusive, local dates)."""

    valid_from: date
    valid_to: date | None = None
    components: list[Component] = Field(min_length=1)

    @model_validator(mode="after")
    def _coherent(self) -> PlanVersion:
        if self.valid_to is not None and self.valid_to <= self.valid_from:
            raise ValueError("valid_to must be after valid_from")
        kinds = [c.type for c in self.components]
        if sum(k in ("flat", "graduated", "volume", "tou") for k in kinds) > 1:
            raise ValueError("a version has at most one usage price (flat, graduated, volume or tou)")
        for kind in ("standing_charge", "minimum"):
            if kinds.count(kind) > 1:
                raise ValueError(f"a version has at most one {kind}")
        return self

    @property
    def usage_price(self) -> UsagePrice | None:
        """The component that prices quantities, if any."""
        return next((c for c in self.components if not isinstance(c, StandingCharge | Minimum)), None)

    @property
    def standing_charge(self) -> StandingCharge | None:
        """The fixed charge of this version, if any."""
        return next((c for c in self.components if isinstance(c, StandingCharge)), None)

    @property
    def minimum(self) -> Minimum | None:
        """The minimum charge per period of this version, if any."""
        return next((c for c in self.components if isinstance(c, Minimum)), None)

    def covers(self, day: date) -> bool:
        """Whether this version is in force on local date ``day``."""
        return self.valid_from <= day and (self.valid_to is None or day < self.valid_to)


class PricePlan(_Model):
    """A product's prices in one market and currency, as dated versions."""

    id: str
    product: str
    market: str
    currency: str
    unit: str
    vat_category: str = "standard"
    description: str = ""
    versions: list[PlanVersion] = Field(min_length=1)

    @field_validator("id")
    @classmethod
    def _id(cls, value: str) -> str:
        if not _ID.match(value):
            raise ValueError("id must be letters, digits, '.', '_' or '-'")
        return value

    @field_validator("currency")
    @classmethod
    def _currency(cls, value: str) -> str:
        if value not in MINOR_UNITS:
            raise ValueError(f"currency {value!r} is not supported")
        return value

    @field_validator("versions")
    @classmethod
    def _chain(cls, versions: list[PlanVersion]) -> list[PlanVersion]:
        ordered = sorted(versions, key=lambda v: v.valid_from)
        for prev, nxt in itertools.pairwise(ordered):
            if prev.valid_to is None or prev.valid_to > nxt.valid_from:
                raise ValueError(f"versions from {prev.valid_from} and {nxt.valid_from} overlap")
        return ordered

    def version_on(self, day: date) -> PlanVersion | None:
        """The version in force on local date ``day``."""
        return next((v for v in self.versions if v.covers(day)), None)


class PlanBook(_Model):
    """A tariff file: holiday calendars and price plans."""

    calendars: dict[str, list[date]] = {}
    plans: list[PricePlan] = []

    @model_validator(mode="after")
    def _references(self) -> PlanBook:
        ids = [p.id for p in self.plans]
        dupes = sorted({i for i in ids if ids.count(i) > 1})
        if dupes:
            raise ValueError(f"duplicate plan ids: {', '.join(dupes)}")
        for plan in self.plans:
            for version in plan.versions:
                price = version.usage_price
                if isinstance(price, TimeOfUse) and price.calendar and price.calendar not in self.calendars:
                    raise ValueError(f"plan {plan.id!r} names unknown calendar {price.calendar!r}")
        return self

    def holidays(self, calendar: str | None) -> frozenset[date]:
        """The dates of a named calendar (empty when ``None``)."""
        return frozenset(self.calendars.get(calendar, ())) if calendar else frozenset()

    def merged(self, other: PlanBook) -> PlanBook:
        """This book plus ``other`` (several tariff files make one book; ids stay unique)."""
        return PlanBook.model_validate({
            "calendars": {**self.calendars, **other.calendars},
            "plans": [*self.plans, *other.plans],
        })


_yaml = YAML(typ="rt")
M = TypeVar("M", bound=BaseModel)


def line_of(node: Any, loc: tuple[int | str, ...]) -> int | None:
    """The 1-based line of the deepest element of ``loc`` found in a ruamel YAML tree."""
    line: int | None = None
    for step in loc:
        if isinstance(node, CommentedMap) and step not in node and node.get("type") == step:
            continue   # a discriminated union's tag in pydantic's error location, not a key
        if isinstance(node, CommentedMap) and step in node:
            line = node.lc.key(step)[0] + 1
            node = node[step]
        elif isinstance(node, CommentedSeq) and isinstance(step, int) and step < len(node):
            line = node.lc.item(step)[0] + 1
            node = node[step]
        else:
            break
    if line is None and isinstance(node, CommentedMap | CommentedSeq):
        line = node.lc.line + 1
    return line


def parse_document(text: str, source: str, model: type[M]) -> M:
    """Parse YAML ``text`` into ``model``; errors are ConfigError naming ``source``, field and line."""
    try:
        tree = _yaml.load(text)
    except YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        raise ConfigError(f"not valid YAML: {getattr(err, 'problem', err)}", file=source,
                          line=mark.line + 1 if mark else None) from err
    if not isinstance(tree, CommentedMap):
        raise ConfigError("the document must be a mapping", file=source, line=1)
    try:
        return model.model_validate(tree)
    except ValidationError as err:
        first = err.errors()[0]
        loc = tuple(p for p in first["loc"] if not (isinstance(p, str) and p.startswith("function-")))
        field = ".".join(str(p) for p in loc) or "(document)"
        raise ConfigError(first["msg"], file=source, field=field, line=line_of(tree, loc)) from err


def parse_plans(text: str, source: str) -> PlanBook:
    """Parse a tariff file (YAML text) into a :class:`PlanBook`."""
    return parse_document(text, source, PlanBook)
