"""Watches (blocking queries): wait until a key, or anything under a prefix,
changes past an index, without polling redis and without taking the threads
ordinary requests need.

Indexes. Every change takes a version from its shard's counter (the virtual
shards, ``store/layout.py``), deletes and expiries included: a delete leaves a
*tombstone* (the key and a new version in its shard's ``kv-watch:tombs``), and a
key redis expires gets its tombstone when the expired-key event reaches a
process where a watch waits for it, or from the next watch or listing that
meets the key, whichever comes first (``lua/shard_marks.lua``).
So a key's index (its version while it lives, its tombstone's after) never
goes back, and a watch can tell a delete from "nothing happened". The newest
100,000 tombstones are kept; a key whose tombstone was dropped reads as the
floor (the newest dropped version), which is still past any index a client
saw before the delete. A prefix's index is the highest version any shard has
given at the time of the read (``shardwatch.py``): whatever changes under the
prefix later has a higher version.

Wake-ups. The KV scripts publish ``"<version> <key>"`` on ``{plab}:kv-changes``
(no value: a subscriber learns only that a key changed); redis publishes
expiries as keyspace events (``notify-keyspace-events Ex``). One listener
thread per process (:class:`ChangeFeed`, started by the first watch) hears
both and wakes only the watches whose key or granted prefix the change
touches and whose index is below its version; a woken watch reads its state
again in one script. A (re)subscription or a lost connection wakes every
watch, since messages may have been missed while it was away.

Threads. A parked watch holds a Waitress thread. ``serve`` gives each process
two pools behind its one listener (``serve.SplitDispatcher``): ``PLAB_THREADS``
for ordinary requests and ``PLAB_WATCH_MAX_PER_PROCESS`` for watches, and
:class:`WatchSlots` lets at most that many watches be held; the next one is
refused with 429 and ``Retry-After``. Ordinary requests keep their threads.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, TypeVar

import redis
from redis.cluster import RedisCluster

from productionlab.contract import whole_number
from productionlab.errors import MalformedRequest, RateLimited
from productionlab.store.connection import REDIS_FAULTS
from productionlab.subscription import Subscription

if TYPE_CHECKING:
    from productionlab.shardwatch import ShardWatchStore

log = logging.getLogger("productionlab.watch")
State = TypeVar("State")

CHANGES = "{plab}:kv-changes"
TOMBS_KEPT = 100_000
MAX_VERSION = 2**63 - 1  # redis INCR's most
RESET = "*"  # a change message's key that wakes every watch (a restore)
SLOTS_RETRY_AFTER = 5  # seconds a client waits when a process holds all the watches it may


@dataclass(frozen=True)
class KeyState:
    key: str
    index: int
    exists: bool
    version: int = 0
    value: bytes = b""


@dataclass(frozen=True)
class PrefixState:
    newest: int  # the highest version of a change under the prefix past the asked index
    index: int  # the index to pass next
    keys: list[tuple[str, int]] = field(default_factory=list)


class PrefixTooBroad(MalformedRequest):
    pass


@dataclass(eq=False)
class Waiter:
    """One parked watch: woken by a change to ``key`` (or under one of
    ``prefixes``) whose version is past ``index``."""

    index: int
    key: str | None = None
    prefixes: tuple[str, ...] = ()
    event: threading.Event = field(default_factory=threading.Event)

    def wants(self, key: str, version: int) -> bool:
        if version <= self.index:
            return False
        if self.key is not None:
            return key == self.key
        return any(key.startswith(prefix) for prefix in self.prefixes)


class ChangeFeed:
    """This process's one subscription to the change messages and expired-key
    events, and the watches it wakes."""

    def __init__(self, client: redis.Redis, store: ShardWatchStore):
        self.client = client
        self.store = store
        pool = getattr(client, "connection_pool", None)
        db = getattr(pool, "connection_kwargs", {}).get("db", 0)
        self.expired_channel = f"__keyevent@{db}__:expired"
        self._lock = threading.Lock()
        self._by_key: dict[str, set[Waiter]] = {}
        self._by_prefix: set[Waiter] = set()
        self.subscribed = threading.Event()
        # Keyspace events are node-local: on a cluster, each master's expiries are
        # heard on that master (the change messages reach every node's subscribers).
        self.cluster = isinstance(client, RedisCluster)
        self.expiries: list[Subscription] = []
        self._expiries_lock = threading.Lock()
        self.changes = Subscription(
            client,
            (CHANGES,) if self.cluster else (CHANGES, self.expired_channel),
            self._handle,
            name="kv-changes",
            lost=self._lost,
        )

    def ensure_started(self) -> None:
        self.changes.start()
        if self.cluster and not self.expiries:
            self._follow_every_master()

    def _follow_every_master(self) -> None:
        """One expired-key subscription per master the cluster client knows (tried
        again at the next watch while it knows none)."""
        with self._expiries_lock:
            if self.expiries:
                return
            try:
                masters = self.client.get_primaries()  # type: ignore[attr-defined]
            except REDIS_FAULTS:
                return
            for node in masters:
                follower = Subscription(
                    self.client.get_redis_connection(node),  # type: ignore[attr-defined]
                    (self.expired_channel,),
                    self._handle,
                    name=f"kv-expired-{node.port}",
                    lost=self._lost,
                )
                follower.start()
                self.expiries.append(follower)

    def stop(self) -> None:
        self.changes.stop()
        for follower in self.expiries:
            follower.stop()

    def _lost(self) -> None:
        self.subscribed.clear()
        self.wake_all()  # their state reads answer 503 while redis is away

    @contextlib.contextmanager
    def registered(self, waiter: Waiter) -> Iterator[Waiter]:
        """``waiter`` is woken by matching changes while inside (register
        before reading the state, so no change falls between the two)."""
        self.ensure_started()
        with self._lock:
            if waiter.key is not None:
                self._by_key.setdefault(waiter.key, set()).add(waiter)
            else:
                self._by_prefix.add(waiter)
        try:
            yield waiter
        finally:
            with self._lock:
                if waiter.key is not None:
                    waiting = self._by_key.get(waiter.key)
                    if waiting is not None:
                        waiting.discard(waiter)
                        if not waiting:
                            del self._by_key[waiter.key]
                else:
                    self._by_prefix.discard(waiter)

    @property
    def waiting(self) -> int:
        with self._lock:
            return sum(len(w) for w in self._by_key.values()) + len(self._by_prefix)

    def cares(self, key: str) -> bool:
        """Whether a watch here waits on ``key`` (at any index)."""
        with self._lock:
            return key in self._by_key or any(
                key.startswith(prefix) for w in self._by_prefix for prefix in w.prefixes
            )

    def notify(self, key: str, version: int) -> int:
        """Wake the watches this change matters to; returns how many."""
        with self._lock:
            if key == RESET:
                woken = [*self._by_prefix, *(w for ws in self._by_key.values() for w in ws)]
            else:
                woken = [w for w in self._by_key.get(key, ()) if w.wants(key, version)]
                woken += [w for w in self._by_prefix if w.wants(key, version)]
        for waiter in woken:
            waiter.event.set()
        return len(woken)

    def wake_all(self) -> None:
        self.notify(RESET, 0)

    def _handle(self, message: dict) -> None:
        kind = message.get("type")
        if kind == "subscribe":
            self.subscribed.set()
            self.wake_all()  # changes may have been missed while unsubscribed
            return
        if kind != "message":
            return
        channel, data = message.get("channel"), message.get("data")
        if isinstance(channel, bytes):
            channel = channel.decode()
        text = data.decode() if isinstance(data, bytes) else str(data)
        if channel == CHANGES:
            raw, _, key = text.partition(" ")
            version = whole_number(raw, 0, MAX_VERSION)
            if version is not None and key:
                self.notify(key, version)
        elif channel == self.expired_channel:
            key = self.store.key_of_item(text)
            # The tombstone publishes its own change message. Given only where a
            # watch waits for it: otherwise the next read that meets the key does.
            if key is not None and self.cares(key):
                self.store.mark_expired(key)


class WatchSlots:
    """At most ``size`` watches held at once in this process."""

    def __init__(self, size: int):
        self.size = size
        self.holding = 0  # watches held now (the plab_watches_held gauge)
        self._lock = threading.Lock()

    @contextlib.contextmanager
    def held(self) -> Iterator[None]:
        with self._lock:
            full = self.holding >= self.size
            if not full:
                self.holding += 1
        if full:
            raise RateLimited(
                f"this server holds its most watches ({self.size}); retry later",
                retry_after=SLOTS_RETRY_AFTER,
            )
        try:
            yield
        finally:
            with self._lock:
                self.holding -= 1


def wait_for(
    feed: ChangeFeed,
    waiter: Waiter,
    read: Callable[[], tuple[bool, State]],
    wait: float,
) -> tuple[bool, State]:
    """Read the state until it has changed past the waiter's index or ``wait``
    seconds have gone; returns (changed, the last state read)."""
    deadline = time.monotonic() + wait
    with feed.registered(waiter):
        changed, state = read()
        while not changed:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not waiter.event.wait(remaining):
                break
            waiter.event.clear()
            changed, state = read()
    return changed, state


@dataclass(eq=False)
class Watches:
    """A plane's watches: their states, this process's change feed, its bound."""

    store: ShardWatchStore
    feed: ChangeFeed
    slots: WatchSlots
