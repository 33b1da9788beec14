"""``@record``: an immutable value class that is cheap to build, for the classes made once per event.

A ``frozen`` dataclass sets each field through ``object.__setattr__``: building one of twelve fields costs
about three times a plain one, and the hub builds several per event (events, readings, entries, points, parts,
receipts): about 5 % of its CPU. A record is a plain slotted dataclass at run time, with the same ``__eq__``
and field ``__hash__`` as a frozen one, and frozen to the type checker (``dataclass_transform``):
``mypy --strict`` refuses any assignment to a field, which is where this code base enforces immutability.
Use ``dataclasses.replace`` to change one.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TypeVar, dataclass_transform

T = TypeVar("T")


@dataclass_transform(frozen_default=True, kw_only_default=True)
def record(cls: type[T]) -> type[T]:
    """Make ``cls`` a keyword-only, slotted, hashable value class (frozen for the type checker)."""
    return dataclass(slots=True, kw_only=True, unsafe_hash=True)(cls)
