"""Listing the audit log across its chains (``GET /admin/audit``, the CLI, the console).

The log is several chains (``audit_chains.chain_keys``: ``main`` for users,
tokens and auth events, and one per virtual shard for its KV changes). Every
listed entry says its ``chain``. Two ways to page:

- one chain (``chain=<name>``): oldest first from ``since`` (that chain's
  sequence number), ``next_since`` to continue: the listing as it was when
  there was one chain;
- every chain merged (the default): newest first by the entries' time, at most
  ``limit`` per page, ``next_cursor`` to continue. The cursor holds, per chain,
  the sequence number below which that chain is still to be read, so no entry is
  skipped or listed twice however the chains interleave. At most ``budget``
  entries are read per page (a rare actor's filter answers in bounded time): a
  page may then be short, or empty, with a cursor that has moved on.
"""

from __future__ import annotations

from dataclasses import dataclass

import redis

from productionlab.audit import AuditLog, parse_entry
from productionlab.audit_chains import chain_keys
from productionlab.errors import MalformedRequest

NEWEST = 2**62  # a bound above every sequence number


def chain_log(client: redis.Redis, chain: str) -> AuditLog:
    """The named chain's log; 400 for a name that is no chain."""
    keys = chain_keys().get(chain)
    if keys is None:
        raise MalformedRequest(f"chain is one of {', '.join(chain_keys())}")
    return AuditLog(client, keys)


def chain_page(
    client: redis.Redis, chain: str, since: int, limit: int, actor: str | None
) -> tuple[list[dict], int | None]:
    """One chain, oldest first from ``since`` (``AuditLog.page``), each entry with its chain."""
    entries, next_since = chain_log(client, chain).page(since=since, limit=limit, actor=actor)
    return [{**entry, "chain": chain} for entry in entries], next_since


def _time(entry: dict) -> float:
    try:
        return float(entry.get("ts", 0))
    except (TypeError, ValueError):
        return 0.0


@dataclass
class _Chain:
    name: str
    log: AuditLog
    bound: int  # entries with seq below this are still to be read; 0: none left
    found: list[dict]  # matching entries read this page, newest first
    frontier: int = 0  # the lowest seq read this page (0: read to the chain's start)
    frontier_time: float | None = None  # its time, when the budget stopped the read


def encode_cursor(bounds: dict[str, int]) -> str | None:
    if not any(bounds.values()):
        return None
    return ".".join(str(bounds[name]) for name in chain_keys())


def decode_cursor(cursor: str | None) -> dict[str, int] | None:
    """The per-chain bounds of a ``next_cursor`` (None: start at every chain's newest)."""
    if cursor is None:
        return None
    names = list(chain_keys())
    parts = cursor.split(".")
    if len(parts) != len(names) or not all(p.isdigit() and len(p) <= 19 for p in parts):
        raise MalformedRequest("cursor is a next_cursor this listing answered")
    return dict(zip(names, (int(p) for p in parts), strict=True))


def _read_back(chain: _Chain, limit: int, actor: str | None, budget: int) -> None:
    """Read ``chain`` backwards from its bound until ``limit`` matches, the budget
    or its first kept entry."""
    snap = chain.log.snapshot()
    last = snap.first + snap.length - 1
    upper = min(chain.bound - 1, last)  # the newest seq still to read
    chain.frontier = 0
    while upper >= snap.first and budget > 0 and len(chain.found) < limit:
        lowest = max(snap.first, upper - min(budget, 500) + 1)
        raws = chain.log.client.lrange(chain.log.list_key, lowest - snap.first, upper - snap.first)
        for offset in range(len(raws) - 1, -1, -1):
            seq = lowest + offset
            entry = parse_entry(raws[offset])
            entry.setdefault("seq", seq)
            budget -= 1
            chain.frontier = seq
            if actor is None or entry.get("actor") == actor:
                chain.found.append({**entry, "chain": chain.name})
            if len(chain.found) >= limit or budget <= 0:
                if seq > snap.first and len(chain.found) < limit:
                    chain.frontier_time = _time(entry)
                return
        upper = lowest - 1
    if upper < snap.first:
        chain.frontier = 0  # read to the start of the kept chain


def merged_page(
    client: redis.Redis,
    cursor: str | None,
    limit: int,
    actor: str | None,
    budget: int = 10_000,
) -> tuple[list[dict], str | None]:
    """Every chain's entries merged, newest first (see the module doc)."""
    bounds = decode_cursor(cursor)
    chains = [
        _Chain(
            name,
            AuditLog(client, keys),
            NEWEST if bounds is None else min(bounds[name], NEWEST),
            [],
        )
        for name, keys in chain_keys().items()
    ]
    each = max(1, budget // len(chains))
    for chain in chains:
        if chain.bound > 0:
            _read_back(chain, limit, actor, each)
    # A chain stopped by the budget may hold older unread entries newer than another
    # chain's candidates: only what is newer than every such stop is listed now.
    stops = [c.frontier_time for c in chains if c.frontier_time is not None]
    cutoff = max(stops) if stops else None
    candidates = [
        (_time(entry), chain.name, entry)
        for chain in chains
        for entry in chain.found
        if cutoff is None or _time(entry) >= cutoff
    ]
    candidates.sort(key=lambda c: (c[0], c[1], c[2].get("seq", 0)), reverse=True)
    taken = candidates[:limit]
    next_bounds: dict[str, int] = {}
    for chain in chains:
        mine = [entry["seq"] for _, name, entry in taken if name == chain.name]
        if mine:
            next_bounds[chain.name] = min(mine)
        elif chain.found:
            next_bounds[chain.name] = chain.bound  # its matches wait for a later page
        else:
            next_bounds[chain.name] = chain.frontier if chain.bound > 0 else 0
    return [entry for _, _, entry in taken], encode_cursor(next_bounds)
