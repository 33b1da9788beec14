"""Roles and the errors the API returns, each with a stable ``code`` in ``extensions``."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from graphql import GraphQLError
from strawberry.types import Info

from usagehub.errors import DomainError, StorageError

READ_ALL = ("admin", "operator", "billing", "analytics")
# Who sees personal data (account ids and names, per-account usage, money): analytics keys only when
# granted (usagehub analytics grant-personal); otherwise they see pseudonymous aggregates (issue 9).
PERSONAL_READ = ("admin", "operator", "billing")
# What each role may change.
MANAGE_REGISTRY = ("admin", "operator")
BILLING_WRITE = ("admin", "billing")
QUARANTINE_WRITE = ("admin", "operator")


def api_error(code: str, message: str) -> GraphQLError:
    """A GraphQL error carrying a stable machine-readable code."""
    return GraphQLError(message, extensions={"code": code})


async def require_personal(info: Info, *roles: str) -> str:
    """The caller's tenant if it may see personal data: one of ``roles``, or an analytics key granted it."""
    principal = info.context.principal
    if principal.role == "analytics":
        analytics = info.context.services.analytics
        if analytics is not None and await analytics.personal(principal):
            return str(principal.tenant)
        raise api_error("FORBIDDEN", "analytics keys see pseudonymous aggregates (the analytics fields); "
                                     "personal data needs a grant: usagehub analytics grant-personal KEY_ID")
    return require(info, *(roles or PERSONAL_READ))


def not_found(kind: str, ident: object) -> GraphQLError:
    """The one answer for an id the caller may not see: the same whether it exists in another tenant or not."""
    return api_error("NOT_FOUND", f"no {kind} {str(ident)[:200]!r}")


async def own(info: Info, tenant: str, kind: str, ident: str | None) -> None:
    """NOT_FOUND unless ``ident`` (an account, device, card, reservation or quarantine item) is the tenant's."""
    if ident is not None and await info.context.services.reads.owner(kind, ident) != tenant:
        raise not_found(kind, ident)


def require(info: Info, *roles: str) -> str:
    """The caller's tenant, if its role is among ``roles``; a FORBIDDEN error otherwise."""
    principal = info.context.principal
    if principal.role not in roles:
        raise api_error("FORBIDDEN", f"role {principal.role!r} may not do this (needs {' or '.join(roles)})")
    return str(principal.tenant)


@contextlib.contextmanager
def domain_errors() -> Iterator[None]:
    """Turn domain and storage errors into coded GraphQL errors."""
    try:
        yield
    except DomainError as err:
        raise api_error(err.code, str(err)) from err
    except StorageError as err:
        raise api_error("STORAGE", "the database refused or failed; see the hub log") from err
