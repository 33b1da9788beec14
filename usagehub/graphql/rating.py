"""Price plans, VAT, invoice previews and vendor settlement (issue 4)."""

from __future__ import annotations

# Strawberry types merged into the root Query, Mutation and Subscription by schema.py.
QUERIES: tuple[type, ...] = ()
MUTATIONS: tuple[type, ...] = ()
SUBSCRIPTIONS: tuple[type, ...] = ()
