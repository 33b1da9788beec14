"""Parsing and validation that cannot hold the hub's event loop.

Replaces strawberry's ParserCache and ValidationCache with one extension:
both steps are cached per document text; a document not seen before and
longer than ``THREAD_FROM`` characters is parsed and validated in a small
worker pool, so the event loop (device ingest, /healthz) keeps running while
graphql-core's pure-Python lexer works (~10 µs per token). Parsing stops at
``max_tokens``; the cost rule (``cost.py``) runs before the standard rules and
alone decides a document it refuses, because some standard rules
(overlapping fields) are slow on fragment-heavy documents.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from graphql import DocumentNode, GraphQLError, GraphQLSchema, parse
from graphql.validation import ASTValidationRule
from strawberry.extensions import SchemaExtension
from strawberry.schema.schema import validate_document

from usagehub.graphql.cost import Limits, cost_rule

T = TypeVar("T")
THREAD_FROM = 2_000
CACHE_SIZE = 256
# At most two documents are parsed or validated at once; more wait their turn, not the event loop.
_WORKERS = ThreadPoolExecutor(max_workers=2, thread_name_prefix="graphql-parse")


@functools.lru_cache(maxsize=CACHE_SIZE)
def _parse(query: str, max_tokens: int) -> DocumentNode:
    return parse(query, max_tokens=max_tokens)


@functools.lru_cache(maxsize=CACHE_SIZE)
def _validate(schema: GraphQLSchema, document: DocumentNode, rules: tuple[type[ASTValidationRule], ...],
              limits: Limits) -> list[GraphQLError]:
    refused = validate_document(schema, document, (cost_rule(limits),))
    return refused or validate_document(schema, document, rules)


def cache_info() -> tuple[Any, Any]:
    """Hits and misses of the parse and validation caches."""
    return _parse.cache_info(), _validate.cache_info()


class BoundedDocument(SchemaExtension):
    """Cached, bounded parsing and validation; large new documents off the event loop."""

    def __init__(self, limits: Limits) -> None:
        self.limits = limits

    async def _run(self, big: bool, fn: Callable[..., T], *args: Any) -> T:
        if not big:
            return fn(*args)
        return await asyncio.get_running_loop().run_in_executor(_WORKERS, functools.partial(fn, *args))

    async def on_parse(self) -> AsyncIterator[None]:
        """Parse (GraphQLSyntaxError past ``max_tokens``)."""
        ctx = self.execution_context
        query = ctx.query or ""
        ctx.graphql_document = await self._run(len(query) > THREAD_FROM, _parse, query, self.limits.max_tokens)
        yield

    async def on_validate(self) -> AsyncIterator[None]:
        """Validate: the limits first, then the standard rules."""
        ctx = self.execution_context
        document = ctx.graphql_document
        assert document is not None
        size = document.loc.end if document.loc else 0
        ctx.pre_execution_errors = await self._run(size > THREAD_FROM, _validate, ctx.schema._schema, document,
                                                   tuple(ctx.validation_rules), self.limits)
        yield
