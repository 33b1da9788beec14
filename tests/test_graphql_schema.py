"""The schema's protective extensions: a depth limit, and validation that is cached per query text."""

from __future__ import annotations

from strawberry.extensions.validation_cache import _get_validate_cache

from usagehub.graphql.schema import build_schema

DEEP = "{ accounts { edges { node { id } } } }"


async def test_deep_queries_are_refused_and_validation_is_cached() -> None:
    schema = build_schema(max_depth=2)
    refused = await schema.execute(DEEP)
    assert refused.errors and "exceeds maximum operation depth" in refused.errors[0].message
    cache = _get_validate_cache(256)
    before = cache.cache_info()
    for _ in range(5):
        assert (await schema.execute("{ __typename }")).data == {"__typename": "Query"}
    after = cache.cache_info()
    assert after.hits - before.hits >= 4 and after.misses - before.misses <= 1
