"""Relay-style connections with opaque cursors."""

from __future__ import annotations

import base64
from typing import Generic, TypeVar

import orjson
import strawberry

from usagehub.graphql.auth import api_error

T = TypeVar("T")
MAX_PAGE = 500


@strawberry.type
class PageInfo:
    """Relay page information."""

    has_next_page: bool
    end_cursor: str | None


@strawberry.type
class Edge(Generic[T]):
    """One node and its cursor."""

    cursor: str
    node: T


@strawberry.type
class Connection(Generic[T]):
    """A page of nodes."""

    edges: list[Edge[T]]
    page_info: PageInfo


def encode_cursor(value: object) -> str:
    """An opaque cursor for a keyset position."""
    return base64.urlsafe_b64encode(orjson.dumps(value)).decode()


def decode_cursor(cursor: str | None) -> object:
    """The keyset position of a cursor; BAD_CURSOR when it was not made by us."""
    if cursor is None:
        return None
    try:
        return orjson.loads(base64.urlsafe_b64decode(cursor.encode()))
    except (ValueError, orjson.JSONDecodeError) as err:
        raise api_error("BAD_CURSOR", "the cursor is not valid") from err


def page_size(first: int) -> int:
    """``first`` checked against the page limit."""
    if first < 1 or first > MAX_PAGE:
        raise api_error("BAD_REQUEST", f"first must be between 1 and {MAX_PAGE}")
    return first


def connection(nodes: list[T], first: int, key: object) -> Connection[T]:
    """A connection from ``first + 1`` fetched nodes; ``key(node)`` gives each cursor position."""
    has_next = len(nodes) > first
    nodes = nodes[:first]
    edges = [Edge(cursor=encode_cursor(key(n)), node=n) for n in nodes]  # type: ignore[operator]
    return Connection(edges=edges, page_info=PageInfo(has_next_page=has_next,
                                                      end_cursor=edges[-1].cursor if edges else None))
