"""What both planes' KV core shares, whatever the layout: key validation, the
items and results it answers, the per-user quota and usage, and the prefixes a
caller may list.

The core itself is :class:`productionlab.shardkv.ShardedKV` (the virtual shards,
``store/layout.py``); the one-tag layout before it (every key under ``{plab}``)
is only read, once, by the start-up migration (``shardmigrate.py``). Keys whose
writer is unknown (from before quotas, or restored from a backup) are charged to
``UNATTRIBUTED``.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from productionlab.contract import KEY_RE
from productionlab.errors import InvalidKey
from productionlab.settings import DEFAULT_USER_MAX_BYTES, DEFAULT_USER_MAX_KEYS

UNATTRIBUTED = "-"  # owner of pre-quota keys the audit log cannot attribute


def validate_key(key: str) -> str:
    if not isinstance(key, str) or not KEY_RE.match(key):
        raise InvalidKey()
    return key


@dataclass(frozen=True)
class Item:
    key: str
    value: bytes
    version: int


@dataclass(frozen=True)
class Quota:
    """What one user's keys may hold: ``PLAB_USER_MAX_KEYS`` and ``PLAB_USER_MAX_BYTES``."""

    max_keys: int = DEFAULT_USER_MAX_KEYS
    max_bytes: int = DEFAULT_USER_MAX_BYTES


@dataclass(frozen=True)
class Usage:
    user: str
    keys: int
    bytes: int
    quota: Quota

    def as_dict(self, with_quota: bool = True) -> dict:
        if not with_quota:
            return {"keys": self.keys, "bytes": self.bytes}
        return {
            "keys": self.keys,
            "bytes": self.bytes,
            "max_keys": self.quota.max_keys,
            "max_bytes": self.quota.max_bytes,
        }


@dataclass(frozen=True)
class PutResult:
    key: str
    version: int
    created: bool


def effective_prefixes(grants: Iterable[str], requested: str) -> list[str]:
    """The disjoint, sorted prefix ranges a caller with ``grants`` may list under ``requested``."""
    ranges: set[str] = set()
    for grant in grants:
        grant = "" if grant == "*" else grant
        if requested.startswith(grant):
            ranges.add(requested)
        elif grant.startswith(requested):
            ranges.add(grant)
    ordered = sorted(ranges)
    disjoint: list[str] = []
    for prefix in ordered:
        if not any(prefix.startswith(kept) for kept in disjoint):
            disjoint.append(prefix)
    return disjoint
