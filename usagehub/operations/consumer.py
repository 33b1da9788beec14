"""ConsumerService: tokens that let a consumer see their own account, and the summary the /me page shows."""

from __future__ import annotations

from typing import Any

from psycopg_pool import AsyncConnectionPool

from usagehub.errors import DomainError
from usagehub.storage.consumer import Consumer, create_token, holds_account, own_summary, resolve, revoke_token
from usagehub.storage.pool import mapped_errors


class ConsumerService:
    """Tokens are created by billing/operator keys of the account's tenant; a consumer reads only their account."""

    def __init__(self, pool: AsyncConnectionPool) -> None:
        self.pool = pool

    async def create(self, *, tenant: str, account_id: str, created_by: str) -> tuple[str, str]:
        """A token for one of the tenant's accounts (NOT_FOUND for any other id)."""
        async with mapped_errors(), self.pool.connection() as conn:
            if not await holds_account(conn, tenant=tenant, account_id=account_id):
                raise DomainError("NOT_FOUND", f"no account {account_id!r}")
            return await create_token(conn, tenant=tenant, account_id=account_id, created_by=created_by)

    async def revoke(self, *, tenant: str, token_id: str) -> None:
        """Revoke one of the tenant's tokens (NOT_FOUND otherwise)."""
        async with mapped_errors(), self.pool.connection() as conn:
            if not await revoke_token(conn, tenant=tenant, token_id=token_id):
                raise DomainError("NOT_FOUND", f"no active consumer token {token_id!r}")

    async def consumer(self, authorization: str) -> Consumer | None:
        """The consumer of an ``Authorization: Bearer ct_…`` header; None if absent, invalid or revoked."""
        token = authorization[7:].strip() if authorization.lower().startswith("bearer ") else ""
        if not token:
            return None
        async with mapped_errors(), self.pool.connection() as conn:
            return await resolve(conn, token)

    async def summary(self, consumer: Consumer) -> dict[str, Any]:
        """The consumer's own account view."""
        async with mapped_errors(), self.pool.connection() as conn:
            return await own_summary(conn, consumer.account_id)
