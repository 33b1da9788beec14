"""Consumer tokens (``ct_<id>_<secret>``, only a hash stored) and what a consumer may read of their own account."""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from typing import Any

from usagehub.storage.pool import Connection


@dataclass(frozen=True, slots=True, kw_only=True)
class Consumer:
    """Whom a consumer token speaks for."""

    token_id: str
    tenant: str
    account_id: str


def _hash(secret: str) -> bytes:
    return hashlib.sha256(secret.encode()).digest()


async def holds_account(conn: Connection, *, tenant: str, account_id: str) -> bool:
    """Whether ``account_id`` is an account of ``tenant``."""
    cur = await conn.execute("SELECT 1 FROM accounts WHERE account_id = %s AND tenant = %s", (account_id, tenant))
    return await cur.fetchone() is not None


async def create_token(conn: Connection, *, tenant: str, account_id: str, created_by: str) -> tuple[str, str]:
    """A new token for ``account_id`` (shown once) and its id."""
    token_id, secret = secrets.token_hex(6), secrets.token_urlsafe(24)
    await conn.execute("INSERT INTO consumer_tokens (token_id, tenant, account_id, secret_hash, created_by) "
                       "VALUES (%s, %s, %s, %s, %s)", (token_id, tenant, account_id, _hash(secret), created_by))
    return f"ct_{token_id}_{secret}", token_id


async def revoke_token(conn: Connection, *, tenant: str, token_id: str) -> bool:
    """Revoke a token of ``tenant``; True when it was active."""
    cur = await conn.execute("UPDATE consumer_tokens SET revoked_at = now() WHERE token_id = %s AND tenant = %s "
                             "AND revoked_at IS NULL", (token_id, tenant))
    return cur.rowcount == 1


async def resolve(conn: Connection, token: str) -> Consumer | None:
    """The consumer of an active token; None otherwise (checked on every request: revocation is immediate)."""
    parts = token.split("_", 2)
    if len(parts) != 3 or parts[0] != "ct" or len(token) > 200:
        return None
    _, token_id, secret = parts
    cur = await conn.execute("SELECT tenant, account_id, secret_hash FROM consumer_tokens "
                             "WHERE token_id = %s AND revoked_at IS NULL", (token_id,))
    row: Any = await cur.fetchone()
    if row is None or not hmac.compare_digest(bytes(row[2]), _hash(secret)):
        return None
    return Consumer(token_id=token_id, tenant=str(row[0]), account_id=str(row[1]))


async def _dicts(conn: Connection, sql: str, params: tuple[Any, ...]) -> list[dict[str, Any]]:
    cur = await conn.execute(sql, params)
    names = [c.name for c in cur.description or []]
    return [dict(zip(names, r, strict=True)) for r in await cur.fetchall()]


async def own_summary(conn: Connection, account_id: str, *, days: int = 31, months: int = 12) -> dict[str, Any]:
    """One account's own view: usage per local day and month and product, prepaid state, ledger, open
    reservations, blocks and restores."""
    account = (await _dicts(conn, "SELECT account_id, name, timezone, currency, prepaid FROM accounts "
                                  "WHERE account_id = %s", (account_id,)))[0]
    usage = ("SELECT date_trunc(%s, p.start_ts AT TIME ZONE a.timezone)::date AS day, p.product, min(r.unit) AS unit, "
             "sum(p.value) AS quantity FROM session_points p JOIN accounts a USING (account_id) "
             "LEFT JOIN LATERAL (SELECT unit FROM billing_records b WHERE b.account_id = p.account_id "
             "AND b.product = p.product LIMIT 1) r ON true "
             "WHERE p.account_id = %s AND p.kind = 'usage' AND p.start_ts >= now() - %s::interval "
             "GROUP BY 1, 2 ORDER BY 1, 2")
    daily = await _dicts(conn, usage, ("day", account_id, f"{days} days"))
    monthly = await _dicts(conn, usage, ("month", account_id, f"{months} months"))
    prepaid = await _dicts(conn, "SELECT currency, balance, held, balance - held AS funds, overdraft, blocked, "
                                 "low_threshold FROM prepaid_accounts WHERE account_id = %s", (account_id,))
    ledger = await _dicts(conn, "SELECT kind, amount, currency, balance_after, created_at, payment_ref, product, "
                                "quantity FROM ledger_entries WHERE account_id = %s ORDER BY entry_id DESC LIMIT 50",
                          (account_id,))
    events = await _dicts(conn, "SELECT kind, balance, currency, at FROM prepaid_events WHERE account_id = %s "
                                "ORDER BY event_id DESC LIMIT 20", (account_id,))
    reservations = await _dicts(conn, "SELECT r.device_id, r.product, r.units, r.hold, a.currency, r.created_at, "
                                      "r.expires_at FROM prepaid_reservations r JOIN prepaid_accounts a "
                                      "USING (account_id) WHERE r.account_id = %s AND r.state = 'open' "
                                      "AND r.expires_at > now() ORDER BY r.created_at DESC LIMIT 20", (account_id,))
    return {"account": account, "daily": daily, "monthly": monthly, "prepaid": prepaid[0] if prepaid else None,
            "ledger": ledger, "events": events, "reservations": reservations}
