"""Consumption series, behaviour features, segments and candidates (issue 9)."""

from __future__ import annotations

# Strawberry types merged into the root Query, Mutation and Subscription by schema.py.
QUERIES: tuple[type, ...] = ()
MUTATIONS: tuple[type, ...] = ()
SUBSCRIPTIONS: tuple[type, ...] = ()
