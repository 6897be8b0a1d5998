"""The KV core on the virtual-shard layout (issue 12 item 2): every KV route of
both planes calls it (``wiring.py``; docs/ARCHITECTURE.md, "The key layout").

Each key lives in its shard (:mod:`productionlab.store.layout`): the item, the
shard's version counter (versions ``counter * 16 + shard``), listing index,
watch marks, the exact usage of each user in that shard and the shard's own
audit chain change in one script on the shard's slot. The per-user limit and
the quota total stay in ``{plab}`` (the design's "Per-user limit and quota"):

- a read sends the limit ticket (``user_limit_charge.lua`` on ``{plab}``) and the
  shard read in one pipeline; a refused ticket drops the value read (429);
- a write, in cluster mode, is three scripts: ``shard_reserve.lua`` on ``{plab}``
  (the ticket and a hold of what the write may grow the writer's usage by),
  ``shard_put.lua``/``shard_delete.lua`` on the shard, ``shard_settle.lua`` on
  ``{plab}`` (release the hold, record the shard's report of each changed user's
  usage there). On a single redis, which holds ``{plab}`` and every shard, the
  same fragments compose one script (``shard_put_fused.lua``,
  ``shard_delete_fused.lua``): one round trip, as before the shards.

A write refused for quota while a TTL charge of the writer in another shard
has expired reconciles those shards and is tried once more, so a user whose
keys expired can write again at once.
"""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass

import redis
from redis.cluster import RedisCluster
from redis.exceptions import NoScriptError

from productionlab.audit import Actor
from productionlab.errors import KeyNotFound, QuotaExceeded, VersionConflict
from productionlab.kv import Item, PutResult, Quota, Usage, validate_key
from productionlab.luascripts import LuaScript, script
from productionlab.ratelimit import NO_TICKET, USER_LIMIT_CHARGE, Ticket, limit_spent, refused
from productionlab.store.durability import Durability
from productionlab.store.layout import SHARDS, Shard, all_shards, shard, shard_for

# The quota total of a user (usage_ledger.lua's USAGE_TOTAL; a test pins it) and
# the record of its holds in flight. Not today's ``{plab}:usage:<user>`` (kv.py's
# total), so the two never mix during the migration.
USAGE_TOTAL = "{plab}:usage-total:"
HOLDS = "{plab}:usage-holds:"
# A hold outlives any request that takes it (the settle releases it); after its
# deadline a reservation may count it as lost (design, "Crashes and reconcile").
HOLD_MS = 120_000

SHARD_PUT = script("shard_put")
SHARD_PUT_FUSED = script("shard_put_fused")
SHARD_DELETE = script("shard_delete")
SHARD_DELETE_FUSED = script("shard_delete_fused")
SHARD_RESERVE = script("shard_reserve")
SHARD_SETTLE = script("shard_settle")
SHARD_USAGE = script("shard_usage")
SHARD_LIST = script("shard_list")


def two_digits(number: int) -> str:
    return f"{number:02d}"


@dataclass(frozen=True)
class Hold:
    keys: int
    bytes: int
    member: str


def shard_keys(place: Shard, key: str) -> dict[str, object]:
    """The KEYS a shard write script starts with."""
    return {
        "audit": place.audit,
        "item": place.item(key),
        "counter": place.counter,
        "index": place.index,
    }


def pipelined(client: redis.Redis, commands: list[tuple], text: str) -> list:
    """Run ``commands`` together: one round trip on a single redis (on the thread's
    kept connection when the client keeps one, ``PinnableRedis.pipeline_held``), one
    per master on a cluster; loads the script ``text`` once when redis lost it.
    Raises the first error reply."""
    held = getattr(client, "pipeline_held", None)
    for attempt in (1, 2):
        if held is not None:
            results = held(commands)
        else:
            pipe = client.pipeline(transaction=False)
            for command in commands:
                pipe.execute_command(*command)
            results = pipe.execute(raise_on_error=False)
        if attempt == 1 and any(isinstance(r, NoScriptError) for r in results):
            client.script_load(text)
            continue
        for result in results:
            if isinstance(result, Exception):
                raise result
        return results
    raise AssertionError("unreachable")


def evalsha_many(client: redis.Redis, lua: LuaScript, calls: list[tuple[dict, dict]]) -> list:
    """``lua`` once per (keys, args) in ``calls``, all sent together (:func:`pipelined`)."""
    commands = []
    for keys, args in calls:
        flat_keys, flat_args = lua.keys.flatten(keys), lua.args.flatten(args)
        commands.append(("EVALSHA", lua.sha, len(flat_keys), *flat_keys, *flat_args))
    return pipelined(client, commands, lua.text)


class ShardedKV:
    """get, put, delete, listing and usage over the 16 shards (see the module doc)."""

    def __init__(
        self,
        client: redis.Redis,
        durability: Durability,
        quota: Quota | None = None,
        composed: bool | None = None,
    ):
        self.client = client
        self.durability = durability
        self.quota = quota or Quota()
        # One script per write where one redis holds every shard (no cross-slot check).
        self.composed = not isinstance(client, RedisCluster) if composed is None else composed
        self.hold_ms = HOLD_MS

    # --- reads ------------------------------------------------------------------------
    def get(self, key: str, limit: Ticket | None = None) -> Item:
        """The item at ``key``; 404 if absent; 429 if ``limit`` is spent (the value
        read in the same round trip is dropped)."""
        item = shard_for(validate_key(key)).item(key)
        if limit is None or limit.limit <= 0:
            value, version = self.client.hmget(item, "v", "ver")
        else:
            wait, (value, version) = self._pipelined(
                [
                    ("EVALSHA", USER_LIMIT_CHARGE.sha, 1, limit.counter, limit.limit, limit.window),
                    ("HMGET", item, "v", "ver"),
                ],
                USER_LIMIT_CHARGE.text,
            )
            refused(int(wait))
        if version is None:
            raise KeyNotFound(f"key {key!r} not found")
        return Item(key, value or b"", int(version))

    def _pipelined(self, commands: list[tuple], text: str) -> list:
        return pipelined(self.client, commands, text)

    # --- writes -----------------------------------------------------------------------
    def put(
        self,
        key: str,
        value: bytes,
        actor: Actor,
        *,
        ttl: int | None = None,
        if_match: list[str] | None = None,
        if_absent: bool = False,
        limit: Ticket | None = None,
    ) -> PutResult:
        validate_key(key)
        cond, expected = "", ""
        if if_absent:
            cond = "absent"
        elif if_match is not None:
            cond, expected = "match", ",".join(if_match)
        write = {
            "key": key,
            "value": value,
            "ttl_ms": ttl * 1000 if ttl else 0,
            "cond": cond,
            "expected": expected,
            "owner": actor.name,
        }
        self.durability.before_write()
        ticket = limit or NO_TICKET
        status, version, extra = self._put(key, value, actor, write, ticket)
        if status == -3 and self._reconcile_expired(actor.name):
            # The ticket is taken once: the retry carries none.
            status, version, extra = self._put(key, value, actor, write, NO_TICKET)
        if status == -2:
            limit_spent(int(version))
        if status == -3:
            raise QuotaExceeded(
                f"this write would take you past your quota of {self.quota.max_keys} keys "
                f"and {self.quota.max_bytes} bytes (you use {int(version)} keys and "
                f"{int(extra)} bytes); delete or shrink keys first"
            )
        if status < 0:
            raise VersionConflict(
                "the key already exists" if if_absent else "the version does not match",
                headers={"ETag": f'"{int(version)}"'} if version not in (b"", "", None) else None,
            )
        self.durability.after_write()
        return PutResult(key, int(version), created=status == 0)

    def _put(
        self, key: str, value: bytes, actor: Actor, write: dict, ticket: Ticket
    ) -> tuple[int, object, object]:
        """One attempt: (status, version or wait or used keys, used bytes)."""
        place = shard_for(key)
        common = {"audit": actor.audit_args(), "tag": place.tag, "shard": place.number, **write}
        user = actor.name
        if self.composed:
            status, version, *extra = SHARD_PUT_FUSED(
                self.client,
                keys={
                    **shard_keys(place, key),
                    "limit": ticket.counter,
                    "usage": USAGE_TOTAL + user,
                },
                args={
                    **common,
                    "max_keys": self.quota.max_keys,
                    "max_bytes": self.quota.max_bytes,
                    "limit": ticket.limit,
                    "window": ticket.window,
                },
                held=True,
            )
            return int(status), version, (extra[0] if extra else None)
        hold, wait = self._reserve(user, ticket, 1, len(key) + len(value), place.number)
        if hold is None:
            return -2, wait, None
        status, version, *reports = SHARD_PUT(
            self.client,
            keys=shard_keys(place, key),
            args={**common, "grant_keys": hold.keys, "grant_bytes": hold.bytes},
        )
        used = self._settle(user, hold.member, place.number, reports)
        if int(status) == -3:
            return -3, used[0], used[1]
        return int(status), version, None

    def delete(
        self,
        key: str,
        actor: Actor,
        *,
        if_match: list[str] | None = None,
        limit: Ticket | None = None,
    ) -> int:
        place = shard_for(validate_key(key))
        self.durability.before_write()
        ticket = limit or NO_TICKET
        common = {
            "audit": actor.audit_args(),
            "tag": place.tag,
            "shard": place.number,
            "key": key,
            "expected": ",".join(if_match or []),
        }
        if self.composed:
            status, version = SHARD_DELETE_FUSED(
                self.client,
                keys={**shard_keys(place, key), "limit": ticket.counter},
                args={**common, "limit": ticket.limit, "window": ticket.window},
                held=True,
            )
        else:
            hold, wait = self._reserve(actor.name, ticket, 0, 0, place.number)
            if hold is None:
                status, version = -2, wait
            else:
                status, version, *reports = SHARD_DELETE(
                    self.client, keys=shard_keys(place, key), args=common
                )
                if reports:
                    self._settle(actor.name, "", place.number, reports)
        if int(status) == -2:
            limit_spent(int(version))
        if int(status) == 0:
            raise KeyNotFound(f"key {key!r} not found")
        if int(status) < 0:
            raise VersionConflict(headers={"ETag": f'"{int(version)}"'})
        self.durability.after_write()
        return int(version)

    # --- the {plab} side of a write in cluster mode -------------------------------------
    def _reserve(
        self, user: str, ticket: Ticket, keys: int, size: int, number: int = 0, charge: int = 1
    ) -> tuple[Hold | None, int]:
        """The ticket and a hold of up to ``keys`` and ``size`` bytes for a write in
        shard ``number``; (None, the seconds to wait) when the limit is spent.

        Holds past their deadline (a request that died between its reservation
        and its settle) are repaired first: their shard is reconciled, which
        records what the lost write did or did not do there, then the hold is
        released, and the reservation runs again (its ticket already taken)."""
        if ticket.limit <= 0 and keys == 0 and size == 0:
            return Hold(0, 0, ""), 0
        for _ in range(4):
            status, *granted = SHARD_RESERVE(
                self.client,
                keys={"limit": ticket.counter, "usage": USAGE_TOTAL + user, "holds": HOLDS + user},
                args={
                    "limit": ticket.limit,
                    "window": ticket.window,
                    "charge": charge,
                    "hold_id": f"{two_digits(number)}.{secrets.token_hex(8)}",
                    "now": int(time.time() * 1000),
                    "deadline": int(time.time() * 1000) + self.hold_ms,
                    "want_keys": keys,
                    "want_bytes": size,
                    "max_keys": self.quota.max_keys,
                    "max_bytes": self.quota.max_bytes,
                },
            )
            if int(status) == -2:
                return None, int(granted[0])
            if int(status) == 1:
                for lost in granted:
                    member = lost.decode() if isinstance(lost, bytes) else str(lost)
                    place = shard(int(member[:2]))
                    self._reconcile_shard(user, place)
                    self._settle(user, member, place.number, [])
                ticket = NO_TICKET
                continue
            member = granted[2].decode() if isinstance(granted[2], bytes) else str(granted[2])
            return Hold(int(granted[0]), int(granted[1]), member), 0
        # Lost holds keep coming (more than 16 at once, or a clock gone wrong):
        # grant nothing this time; a write that grows the usage is refused.
        return Hold(0, 0, ""), 0

    def _settle(self, user: str, member: str, number: int, reports: list) -> tuple[int, int]:
        """Release a hold and record a shard's reports; the user's counted usage."""
        keys, size = SHARD_SETTLE(
            self.client,
            keys={"usage": USAGE_TOTAL + user, "holds": HOLDS + user},
            args={"member": member, "shard": two_digits(number), "reports": reports},
        )
        return int(keys), int(size)

    # --- usage --------------------------------------------------------------------------
    def _reconcile_shard(self, user: str, place: Shard) -> tuple[int, int]:
        """Release ``user``'s expired charges in ``place`` and record its usage there."""
        used = (0, 0)
        for _ in range(1000):
            more, *reports = SHARD_USAGE(
                self.client,
                keys={"usage": place.usage(user)},
                args={"tag": place.tag, "shard": place.number, "user": user, "batch": 1000},
            )
            used = self._settle(user, "", place.number, reports)
            if not int(more):
                break
        return used

    def _reconcile_expired(self, user: str) -> bool:
        """Reconcile the shards where one of ``user``'s TTL charges has expired by
        now (the ledger's eNN); True if there was one."""
        fields = self.client.hgetall(USAGE_TOTAL + user)
        now = int(time.time() * 1000)
        due = [
            number
            for number in range(SHARDS)
            if 0 < int(fields.get(f"e{two_digits(number)}".encode(), b"0")) <= now
        ]
        for number in due:
            self._reconcile_shard(user, shard(number))
        return bool(due)

    def usage(self, user: str) -> Usage:
        """What ``user``'s keys hold now: every shard reconciled and recorded."""
        used = (0, 0)
        for place in all_shards():
            used = self._reconcile_shard(user, place)
        return Usage(user, used[0], used[1], self.quota)

    # --- listing ------------------------------------------------------------------------
    def list_keys(
        self, prefixes: list[str], after: str = "", limit: int = 100
    ) -> tuple[list[str], str | None]:
        """One page of keys under ``prefixes`` (disjoint, sorted) after ``after``,
        merged from every shard behind one cursor (the last key of the page)."""
        if not prefixes:
            return [], None
        merged: list[str] = []
        complete_to: str | None = None  # every shard's keys up to here were seen
        calls = [
            (
                {"index": place.index, "counter": place.counter},
                {
                    "tag": place.tag,
                    "shard": place.number,
                    "after": after,
                    "limit": limit + 1,
                    "budget": max(limit * 10, 1000),
                    "prefixes": prefixes,
                },
            )
            for place in all_shards()
        ]
        # Every shard's part at once: one round trip on a single redis.
        for found, last, more in evalsha_many(self.client, SHARD_LIST, calls):
            merged += [k.decode() for k in found]
            if int(more):
                seen = last.decode() if isinstance(last, bytes) else str(last)
                complete_to = seen if complete_to is None else min(complete_to, seen)
        page = sorted(k for k in merged if complete_to is None or k <= complete_to)
        if len(page) > limit:
            return page[:limit], page[limit - 1]
        return page, complete_to
