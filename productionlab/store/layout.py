"""The virtual-shard key layout (issue 12 item 2; docs/design/virtual-shards.md):
how many shards there are, which shard a KV key lives in, each shard's hash tag,
and the name of every key a shard holds, written once.

A redis script touches one slot only, so a *shard* is the unit of atomicity: each
holds its own items, version counter, listing index, audit chain and watch marks
under its own hash tag, and a Redis Cluster spreads the shards' slots over its
masters. A single redis simply holds every shard, so one layout serves both.

**Which shard.** ``shard_of(key) = crc32(key) % SHARDS``, computed in Python (the
scripts are handed their shard's key names; no Lua computes a shard). CRC-32 is
the one of zlib (IEEE 802.3), fixed by its standard: a key never changes shard,
whatever the Python version (a test pins it against its own bitwise CRC-32 and a
digest over many keys). ``SHARDS`` is fixed for a store's life: the layout marker
(``LAYOUT_KEY``) records it and a store written with another number is refused.

**Placed tags.** Shard ``s``'s hash tag is ``{plab:sNN.J}``, where ``J`` was chosen
(once, by search; the table below is literal) so that the tag's cluster slot is
``1024 * s + 512``: the middle of the s-th sixteenth of the 16384 slots. The plain
``{plab:sNN}`` tags hash to whatever slots CRC16 gives them: with the three-master
split ``redis-cli --cluster create`` makes (0-5460, 5461-10922, 10923-16383) eight of
the sixteen land on the first master, half the data on one node. Placed tags split
as 5/6/5 there, and any split of the slots into contiguous, nearly equal ranges
gives every master a share of shards within one of the even share.

**Versions.** A shard counts its own versions; the version a client sees is
``counter * SHARDS + shard``, so versions never repeat across shards and increase
per key (a key never changes shard). ``shard_of_version`` gives the shard back.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from functools import cache

SHARDS = 16
# The marker of the layout a store holds: a hash {shards, version}. Absent on a
# store written before virtual shards (every key under {plab}).
LAYOUT_KEY = "{plab}:layout"
LAYOUT_VERSION = 2
# The hash tag of the keys that stay in one place: users, tokens, limits, usage
# totals, the main audit chain, the change channel.
MAIN_TAG = "{plab}"

# Shard s's hash tag, placed on cluster slot 1024 * s + 512 (see the docstring;
# tests/test_layout.py checks every slot with redis's own CRC16).
TAGS: tuple[str, ...] = (
    "{plab:s00.3021}",
    "{plab:s01.19948}",
    "{plab:s02.68497}",
    "{plab:s03.4487}",
    "{plab:s04.8058}",
    "{plab:s05.2106}",
    "{plab:s06.15229}",
    "{plab:s07.49669}",
    "{plab:s08.6972}",
    "{plab:s09.29202}",
    "{plab:s10.7831}",
    "{plab:s11.88571}",
    "{plab:s12.2017}",
    "{plab:s13.8149}",
    "{plab:s14.19009}",
    "{plab:s15.6916}",
)
# Every shard key starts with this (the ACL key pattern of the shards: ``~{plab:s*``).
SHARD_KEY_PREFIX = "{plab:s"
SLOTS = 16384  # Redis Cluster's slot count


def shard_of(key: str) -> int:
    """The shard that holds ``key`` (a valid KV key: ASCII)."""
    return zlib.crc32(key.encode()) % SHARDS


def shard_of_version(version: int) -> int:
    """The shard whose counter gave ``version``."""
    return version % SHARDS


def version_of(counter: int, shard: int) -> int:
    """The version a client sees for the ``counter``-th version of ``shard``."""
    return counter * SHARDS + shard


@dataclass(frozen=True)
class Shard:
    """Every key name one shard holds, under its own hash tag."""

    number: int
    tag: str

    @property
    def item_prefix(self) -> str:
        """A KV item is the hash ``<item_prefix><key>`` (fields v, ver, o)."""
        return f"{self.tag}:kv:"

    def item(self, key: str) -> str:
        return self.item_prefix + key

    @property
    def counter(self) -> str:
        """The shard's version counter (versions are ``counter * SHARDS + number``)."""
        return f"{self.tag}:kv-version"

    @property
    def index(self) -> str:
        """The shard's listing index (a sorted set of its keys, all scores 0)."""
        return f"{self.tag}:kv-index"

    @property
    def audit(self) -> tuple[str, str]:
        """The shard's audit chain: the log (a list) and its meta hash."""
        return (f"{self.tag}:audit", f"{self.tag}:audit:meta")

    @property
    def tombs(self) -> str:
        return f"{self.tag}:kv-watch:tombs"

    @property
    def floor(self) -> str:
        return f"{self.tag}:kv-watch:floor"

    @property
    def ttl_versions(self) -> str:
        return f"{self.tag}:kv-watch:ttl"

    @property
    def usage_prefix(self) -> str:
        """A user's usage in this shard is ``<usage_prefix><user>`` (keys, bytes),
        with ``:exp`` and ``:ttl`` for the keys written with a TTL."""
        return f"{self.tag}:usage:"

    def usage(self, user: str) -> str:
        return self.usage_prefix + user

    def keys(self) -> dict[str, str]:
        """The shard's fixed key names, by role (the items and usages aside)."""
        log, meta = self.audit
        return {
            "counter": self.counter,
            "index": self.index,
            "audit": log,
            "audit_meta": meta,
            "tombs": self.tombs,
            "floor": self.floor,
            "ttl_versions": self.ttl_versions,
        }


@cache
def shard(number: int) -> Shard:
    """Shard ``number`` (0 <= number < SHARDS)."""
    if not 0 <= number < SHARDS:
        raise ValueError(f"there is no shard {number}: shards are 0 to {SHARDS - 1}")
    return Shard(number, TAGS[number])


def shard_for(key: str) -> Shard:
    """The shard that holds ``key``."""
    return shard(shard_of(key))


def all_shards() -> list[Shard]:
    return [shard(number) for number in range(SHARDS)]


_ITEM_PREFIXES = {f"{tag}:kv:": number for number, tag in enumerate(TAGS)}


def key_of_item(name: str) -> str | None:
    """The KV key whose item is named ``name`` (an expired-key event's payload),
    or None when ``name`` is not a shard's item (or its key is not in that shard)."""
    head, sep, key = name.partition("}:kv:")
    number = _ITEM_PREFIXES.get(head + sep)
    if number is None or not key or shard_of(key) != number:
        return None
    return key
