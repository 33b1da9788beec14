"""``Record``: an immutable value class that is cheap to build, for the classes made once per event.

A frozen dataclass sets each field through ``object.__setattr__``, and even a plain slotted one runs a
generated ``__init__`` of Python code: the hub builds several per event (events, readings, entries, points,
parts, receipts). A record is a frozen ``msgspec.Struct``, built by C code: a point of twelve fields costs
~0.12 us against ~0.59 us as a slotted dataclass, and a change of one field ~0.1 us against ~1.7 us
(``dataclasses.replace``). It compares and hashes by its fields, as a frozen dataclass does, refuses
assignment at run time and to the type checker, and pickles. Change one with ``msgspec.structs.replace``.
"""

from __future__ import annotations

import msgspec


class Record(msgspec.Struct, frozen=True, kw_only=True):
    """Base of the value classes made per event.

    Each declares ``frozen=True, kw_only=True`` again: msgspec applies ``kw_only`` to a class's own fields,
    and the type checker reads both from the class statement.
    """
