"""The schema's protective extensions: a depth limit, and validation that is cached per query text."""

from __future__ import annotations

from usagehub.graphql.bounded import cache_info
from usagehub.graphql.schema import build_schema

DEEP = "{ accounts { edges { node { id } } } }"


async def test_deep_queries_are_refused_and_validation_is_cached() -> None:
    schema = build_schema(max_depth=2)
    refused = await schema.execute(DEEP)
    assert refused.errors and "exceeds maximum operation depth" in refused.errors[0].message
    before = cache_info()
    for _ in range(5):
        assert (await schema.execute("{ __typename }")).data == {"__typename": "Query"}
    after = cache_info()
    for b, a in zip(before, after, strict=True):  # parse and validation
        assert a.hits - b.hits >= 4 and a.misses - b.misses <= 1
