"""Prepaid balances, cards, authorizations and block events (issue 5)."""

from __future__ import annotations

# Strawberry types merged into the root Query, Mutation and Subscription by schema.py.
QUERIES: tuple[type, ...] = ()
MUTATIONS: tuple[type, ...] = ()
SUBSCRIPTIONS: tuple[type, ...] = ()
