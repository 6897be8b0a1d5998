"""The states watches wait on, on the virtual shards (issue 12 item 2; what
``/v1/watch`` reads; the waiting itself is watch.py's).

A key's watch reads its shard alone (``shard_watch_key.lua``): its index is its
version, or its tombstone's, as today. A prefix's index stays one integer, by a
Lamport fast-forward over the shards' counters:

1. read every shard's counter; the index ``M`` is the highest version any shard
   has given (``counter * 16 + shard``);
2. in every shard, one script moves the counter up to at least ``M // 16`` (so
   every version the shard gives from then on is above ``M``) and reads that
   shard's state under the prefix.

A write after step 2 has a version above ``M`` wherever it lands, so a watch
that waits past ``M`` sees it; a write between the steps shows up in step 2's
state (at worst a wake-up the client did not need, never a missed one).
"""

from __future__ import annotations

import redis

from productionlab.luascripts import script
from productionlab.shardkv import evalsha_many
from productionlab.store.layout import all_shards, key_of_item, shard_for, version_of
from productionlab.watch import KeyState, PrefixState, PrefixTooBroad

SHARD_WATCH_KEY = script("shard_watch_key")
SHARD_WATCH_PREFIX = script("shard_watch_prefix")
SHARD_EXPIRE_MARK = script("shard_expire_mark")


class ShardWatchStore:
    """``key_state``, ``prefix_state`` and ``mark_expired`` over the shards."""

    def __init__(self, client: redis.Redis, prefix_keys: int = 10_000):
        self.client = client
        self.prefix_keys = prefix_keys

    def key_state(self, key: str) -> KeyState:
        place = shard_for(key)
        found = SHARD_WATCH_KEY(
            self.client,
            keys={"item": place.item(key), "counter": place.counter},
            args={"tag": place.tag, "shard": place.number, "key": key},
        )
        if int(found[0]):
            version = int(found[1])
            return KeyState(key, version, True, version, found[2] or b"")
        return KeyState(key, int(float(found[1])), False)

    def current_index(self) -> int:
        """The highest version any shard has given (step 1 of the fast-forward)."""
        pipe = self.client.pipeline(transaction=False)
        for place in all_shards():
            pipe.get(place.counter)
        counters = pipe.execute()
        return max(
            (version_of(int(c), n) for n, c in enumerate(counters) if c is not None), default=0
        )

    def prefix_state(self, prefixes: list[str], since: int) -> PrefixState:
        """The live keys under ``prefixes`` (disjoint, sorted) in every shard, the
        newest change past ``since`` and the index to pass next; 400 when they
        hold more keys than the budget."""
        index = self.current_index()
        newest, keys = 0, []
        calls = [
            (
                {"index": place.index, "counter": place.counter},
                {
                    "tag": place.tag,
                    "shard": place.number,
                    "since": since,
                    "index": index,
                    "budget": self.prefix_keys,
                    "prefixes": prefixes,
                },
            )
            for place in all_shards()
        ]
        # Every shard's step 2 at once (one round trip on a single redis); each may
        # scan up to the whole budget, the sum is checked after.
        for found in evalsha_many(self.client, SHARD_WATCH_PREFIX, calls):
            if int(found[0]) < 0:
                keys = None
                break
            newest = max(newest, int(found[0]))
            pairs = found[1:]
            keys += [(pairs[i].decode(), int(pairs[i + 1])) for i in range(0, len(pairs), 2)]
        if keys is None or len(keys) > self.prefix_keys:
            raise PrefixTooBroad(
                f"the prefix holds more than {self.prefix_keys} keys; watch a narrower one"
            )
        keys.sort()
        # The index is M, even when a write between the steps gave a newer version:
        # a later write in a shard that lagged may take a version between the two.
        return PrefixState(newest, index, keys)

    def key_of_item(self, name: str) -> str | None:
        """The key whose shard item an expired-key event names, or None."""
        return key_of_item(name)

    def mark_expired(self, key: str) -> int:
        place = shard_for(key)
        return int(
            SHARD_EXPIRE_MARK(
                self.client,
                keys={"item": place.item(key), "counter": place.counter},
                args={"tag": place.tag, "shard": place.number, "key": key},
            )
        )
