"""Kept per-period partials (migration 0031): the billing truth of an (account, period) without its sessions.

Reconciling a touched (account, period) used to read and parse every session of the period, a cost that grew
with the period (alarm panels open hundreds of sessions a month). Each (account, period) now keeps the merge of
its sessions' partials (``core.billing.kept_partial``), folded forward in the transaction that rewrites
sessions (``note_changes``: removed sessions taken back, added ones merged). Where a removed session held the
period's minimum, maximum, last value or a label that the added ones do not reach, the period is re-read from
its sessions. A period without a kept row (stored before it existed, or dropped with its sessions by a
rebuild) is built from its sessions when first read (``kept_truth``). Callers hold the accounts' locks.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Collection, Iterable, Mapping, Sequence
from decimal import Decimal
from typing import Any

import orjson

from usagehub.core.aggregation import Partial
from usagehub.core.billing import PeriodPartials, TruthKey, fold_partials, period_partials, truth_from_kept
from usagehub.core.periods import Period
from usagehub.core.sessions import Session
from usagehub.storage.pool import Connection
from usagehub.storage.sessions import Pair, partial_json, partial_of, sessions_of_pairs, utc

Removed = tuple[Pair, Mapping[str, Partial]]  # a deleted session's pair and partials


def removed_of(row: Sequence[Any]) -> Removed:
    """A deleted session from ``RETURNING account_id, period_start, period_end, period_label, partials::text``."""
    account, start, end, label, partials = row
    pair = (str(account), Period(start=utc(start), end=utc(end), label=str(label)))
    return pair, {k: partial_of(v) for k, v in orjson.loads(partials).items()}


async def note_changes(conn: Connection, removed: Sequence[Removed], added: Sequence[Session]) -> None:
    """Fold rewritten sessions into the kept partials of their periods (after they were written)."""
    gone: defaultdict[Pair, list[Mapping[str, Partial]]] = defaultdict(list)
    new: defaultdict[Pair, list[Mapping[str, Partial]]] = defaultdict(list)
    for pair, partials in removed:
        gone[pair].append(partials)
    for s in added:
        new[(s.account_id, s.period)].append(s.partials)
    pairs = gone.keys() | new.keys()
    if not pairs:
        return
    kept = await _read(conn, pairs)
    updates: dict[Pair, PeriodPartials] = {}
    reread: list[Pair] = []
    for pair in pairs:
        if pair not in kept:
            continue  # built from its sessions when first read
        folded = fold_partials(kept[pair], gone.get(pair, ()), new.get(pair, ()))
        if folded is None:
            reread.append(pair)
        else:
            updates[pair] = folded
    if reread:
        built = period_partials(await sessions_of_pairs(conn, reread))
        updates.update({pair: built.get(pair, {}) for pair in reread})
    await _write(conn, updates)


async def kept_truth(conn: Connection, pairs: Collection[Pair]) -> dict[TruthKey, Decimal]:
    """The truth of ``pairs`` from their kept partials (building those of periods that have none yet)."""
    kept = await _read(conn, pairs)
    missing = [pair for pair in pairs if pair not in kept]
    if missing:
        built = period_partials(await sessions_of_pairs(conn, missing))
        fresh = {pair: built.get(pair, {}) for pair in missing}
        await _write(conn, fresh)
        kept.update(fresh)
    return truth_from_kept({pair: kept[pair] for pair in pairs})


async def forget(conn: Connection, pairs: Iterable[Pair]) -> None:
    """Drop the kept partials of ``pairs`` (their sessions were dropped; rebuilt from sessions when read)."""
    items = sorted({(a, p.start) for a, p in pairs})
    if items:
        await conn.execute(
            "DELETE FROM period_truth t USING unnest(%b::text[], %b::timestamptz[]) AS d(a, s) "
            "WHERE t.account_id = d.a AND t.period_start = d.s", ([a for a, _ in items], [s for _, s in items]))


async def _read(conn: Connection, pairs: Iterable[Pair]) -> dict[Pair, PeriodPartials]:
    wanted = {(a, p.start): (a, p) for a, p in pairs}
    if not wanted:
        return {}
    keys = sorted(wanted)
    cur = await conn.execute(
        "SELECT t.account_id, t.period_start, t.partials::text FROM period_truth t "
        "JOIN unnest(%b::text[], %b::timestamptz[]) AS k(a, s) ON t.account_id = k.a AND t.period_start = k.s",
        ([a for a, _ in keys], [s for _, s in keys]))
    out: dict[Pair, PeriodPartials] = {}
    for account, start, partials in await cur.fetchall():
        pair = wanted[(str(account), utc(start))]
        out[pair] = {k: partial_of(v) for k, v in orjson.loads(str(partials)).items()}
    return out


async def _write(conn: Connection, kept: Mapping[Pair, PeriodPartials]) -> None:
    if not kept:
        return
    rows = sorted(((a, p.start, p.end, p.label, orjson.dumps({k: partial_json(v) for k, v in parts.items()}).decode())
                   for (a, p), parts in kept.items()), key=lambda r: (r[0], r[1]))
    await conn.execute(
        "INSERT INTO period_truth (account_id, period_start, period_end, period_label, partials) "
        "SELECT a, s, e, l, p::jsonb FROM unnest(%b::text[], %b::timestamptz[], %b::timestamptz[], %b::text[], "
        "%b::text[]) AS u(a, s, e, l, p) "
        "ON CONFLICT (account_id, period_start) DO UPDATE SET partials = excluded.partials",
        [list(c) for c in zip(*rows, strict=True)])
