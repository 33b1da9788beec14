"""The rule language's AST nodes and its positioned error."""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal

from usagehub.errors import DomainError


class RuleError(DomainError):
    """A rule that cannot be parsed or typed; names the 0-based character position."""

    def __init__(self, message: str, position: int, text: str = "") -> None:
        self.position, self.reason = position, message
        snippet = f" near {text[position:position + 15]!r}" if text[position:position + 1] else " at end"
        super().__init__("BAD_RULE", f"position {position}{snippet}: {message}")


@dataclass(frozen=True, slots=True, kw_only=True)
class Node:
    """An AST node and its position in the rule text."""

    pos: int


@dataclass(frozen=True, slots=True, kw_only=True)
class Num(Node):
    """A number literal."""

    value: Decimal


@dataclass(frozen=True, slots=True, kw_only=True)
class Text(Node):
    """A text literal."""

    value: str


@dataclass(frozen=True, slots=True, kw_only=True)
class Field(Node):
    """A feature by name."""

    name: str


@dataclass(frozen=True, slots=True, kw_only=True)
class Unary(Node):
    """``-x`` or ``not x``."""

    op: str
    operand: Node


@dataclass(frozen=True, slots=True, kw_only=True)
class Binary(Node):
    """Arithmetic, comparison, ``and``/``or``."""

    op: str
    left: Node
    right: Node


@dataclass(frozen=True, slots=True, kw_only=True)
class IsNull(Node):
    """``x is null`` / ``x is not null``."""

    operand: Node
    negated: bool


@dataclass(frozen=True, slots=True, kw_only=True)
class Rule:
    """A parsed, type-checked rule and the fields it reads."""

    text: str
    root: Node
    fields: tuple[str, ...]
