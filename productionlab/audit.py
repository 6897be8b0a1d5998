"""Tamper-evident audit log: one entry per change, written in the same Lua
script as the change it records, so there is no change without its entry and
no entry without its change.

Each entry carries a sequence number, the MAC of the previous entry and its
own MAC: HMAC-SHA1 over ``seq, prev, ts, actor, action, target, outcome,
request_id, client, version``, keyed by ``PLAB_AUDIT_KEY``. The key is never
stored in redis: the script receives the HMAC pads as arguments on each call.
Modifying, deleting, inserting or reordering entries breaks either a MAC, the
sequence or the chain, and :func:`verify` names the first bad entry.

Entries never hold a value, password or token.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import json
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass

import redis

AUDIT_LIST = "{plab}:audit"
AUDIT_META = "{plab}:audit:meta"
_SAFE = re.compile(r"[^A-Za-z0-9_.:@/+-]")
_BLOCK = 64

# Shared Lua prelude. Scripts that record a change use KEYS[1], KEYS[2] and
# ARGV[1..8] for the audit log and append with audit(action, target, outcome, version).
LUA_PRELUDE = r"""
-- Refuse before any write if the log's keys hold the wrong type: redis does
-- not roll a script back, so a change must never run ahead of a failing append.
for i, want in ipairs({'list', 'hash'}) do
  local t = redis.call('TYPE', KEYS[i])['ok']
  if t ~= 'none' and t ~= want then
    return redis.error_reply('ERR audit log key ' .. KEYS[i] .. ' holds a ' .. t)
  end
end
local function hmac_sha1(ipad, opad, msg)
  local inner = redis.sha1hex(ipad .. msg)
  local bin = (inner:gsub('..', function(h) return string.char(tonumber(h, 16)) end))
  return redis.sha1hex(opad .. bin)
end
local function audit(action, target, outcome, version)
  local seq = redis.call('HINCRBY', KEYS[2], 'seq', 1)
  local prev = redis.call('HGET', KEYS[2], 'mac') or ''
  local ts, actor, rid, client = ARGV[3], ARGV[4], ARGV[5], ARGV[6]
  version = tostring(version or '')
  local msg = table.concat(
    {seq, prev, ts, actor, action, target, outcome, rid, client, version}, '\n')
  local mac = hmac_sha1(ARGV[1], ARGV[2], msg)
  redis.call('HSET', KEYS[2], 'mac', mac)
  redis.call('RPUSH', KEYS[1], cjson.encode({seq = seq, prev = prev, ts = ts, actor = actor,
    action = action, target = target, outcome = outcome, request_id = rid, client = client,
    version = version, mac = mac}))
  return seq
end
"""
AUDIT_KEYS = (AUDIT_LIST, AUDIT_META)
AUDIT_ARGC = 6

APPEND_SCRIPT = LUA_PRELUDE + "return audit(ARGV[7], ARGV[8], ARGV[9], ARGV[10])"

# Retention: drop the oldest entries, remember where the kept chain starts
# (``first``, ``first_prev``) and record the trim itself as a MAC'd entry, so
# removing the head without a recorded trim is detected by verification.
TRIM_SCRIPT = (
    LUA_PRELUDE
    + r"""
local keep = tonumber(ARGV[7])
local length = redis.call('LLEN', KEYS[1])
if length <= keep then return {0, 0} end
local drop = length - keep
local last_dropped = cjson.decode(redis.call('LINDEX', KEYS[1], drop - 1))
local first_kept = cjson.decode(redis.call('LINDEX', KEYS[1], drop))
redis.call('LTRIM', KEYS[1], drop, -1)
redis.call('HSET', KEYS[2], 'first', first_kept.seq, 'first_prev', last_dropped.mac)
audit('audit.trim', 'first:' .. first_kept.seq, 'ok', '')
return {drop, first_kept.seq}
"""
)
TRIM_ACTION = "audit.trim"


def clean(field: str, limit: int = 128) -> str:
    """Audit fields are plain tokens: no newlines, no separators, bounded length."""
    return _SAFE.sub("_", field)[:limit]


@dataclass(frozen=True)
class Actor:
    """Who did it, from where, in which request."""

    name: str
    client: str = ""
    request_id: str = ""

    def audit_args(self, audit_key: bytes) -> list[bytes | str]:
        ipad, opad = hmac_pads(audit_key)
        ts = f"{time.time():.3f}"
        return [ipad, opad, ts, clean(self.name or "-"), clean(self.request_id), clean(self.client)]


@functools.lru_cache(maxsize=8)
def hmac_pads(key: bytes) -> tuple[bytes, bytes]:
    if len(key) > _BLOCK:
        key = hashlib.sha1(key).digest()  # noqa: S324 - HMAC key reduction, RFC 2104  # nosec B324
    key = key.ljust(_BLOCK, b"\0")
    return bytes(b ^ 0x36 for b in key), bytes(b ^ 0x5C for b in key)


def entry_mac(key: bytes, entry: dict) -> str:
    fields = [
        str(entry.get("seq", "")),
        entry.get("prev", ""),
        entry.get("ts", ""),
        entry.get("actor", ""),
        entry.get("action", ""),
        entry.get("target", ""),
        entry.get("outcome", ""),
        entry.get("request_id", ""),
        entry.get("client", ""),
        str(entry.get("version", "")),
    ]
    message = "\n".join(fields).encode()
    return hmac.new(key, message, hashlib.sha1).hexdigest()


class AuditLog:
    def __init__(self, client: redis.Redis, key: bytes):
        self.client = client
        self.key = key
        self._append = client.register_script(APPEND_SCRIPT)
        self._trim = client.register_script(TRIM_SCRIPT)

    def append(
        self, actor: Actor, action: str, target: str, outcome: str, version: str = ""
    ) -> int:
        """Record an event that changes nothing else (auth failures, token events)."""
        args = [*actor.audit_args(self.key), clean(action), clean(target, 256), clean(outcome)]
        return int(self._append(keys=list(AUDIT_KEYS), args=[*args, version]))

    def trim(self, actor: Actor, keep: int) -> tuple[int, int]:
        """Keep the newest ``keep`` entries; returns (entries dropped, first kept seq)."""
        if keep < 1:
            raise ValueError("keep at least one entry")
        dropped, first = self._trim(
            keys=list(AUDIT_KEYS), args=[*actor.audit_args(self.key), int(keep)]
        )
        return int(dropped), int(first)

    def page(
        self, since: int = 1, limit: int = 100, actor: str | None = None, budget: int = 10_000
    ) -> tuple[list[dict], int | None]:
        """Entries with ``seq >= since`` (oldest first, at most ``limit``, optionally one
        actor's) and the ``since`` of the next page, or None at the end of the log.

        At most ``budget`` entries are read per call, so filtering a long log for a
        rare actor answers in bounded time with a cursor to continue from.
        """
        first = int(self.client.hget(AUDIT_META, "first") or 1)
        start = max(0, since - first)
        found: list[dict] = []
        scanned = 0
        next_since: int | None = None
        while True:
            batch = min(1000, max(limit, 100))
            raw = self.client.lrange(AUDIT_LIST, start, start + batch - 1)
            if not raw:
                return found, None
            start += len(raw)
            for item in raw:
                entry = json.loads(item)
                scanned += 1
                next_since = int(entry.get("seq", 0)) + 1
                if actor is None or entry.get("actor") == actor:
                    found.append(entry)
                    if len(found) >= limit:
                        return found, next_since
                if scanned >= budget:
                    return found, next_since

    def entries(self, since: int = 1, limit: int = 100, actor: str | None = None) -> list[dict]:
        """Entries with ``seq >= since``, oldest first, at most ``limit`` of them."""
        return self.page(since, limit, actor, budget=2**62)[0]

    def head(self) -> dict:
        """The last sequence number and MAC: record them elsewhere to anchor the log."""
        meta = self.client.hgetall(AUDIT_META)
        return {
            "seq": int(meta.get(b"seq", 0)),
            "mac": meta.get(b"mac", b"").decode(),
            "first": int(meta.get(b"first", 1)),
        }

    def iter_all(self, batch: int = 1000) -> Iterator[dict]:
        start = 0
        while True:
            raw = self.client.lrange(AUDIT_LIST, start, start + batch - 1)
            if not raw:
                return
            start += len(raw)
            for item in raw:
                yield json.loads(item)

    def verify(self) -> VerifyResult:
        return verify_entries(self.iter_all(), self.key, self.client.hgetall(AUDIT_META))


@dataclass(frozen=True)
class VerifyResult:
    ok: bool
    checked: int
    first_bad_seq: int | None = None
    first_bad_index: int | None = None
    reason: str = ""

    def as_dict(self) -> dict:
        return {
            "ok": self.ok,
            "checked": self.checked,
            "first_bad_seq": self.first_bad_seq,
            "first_bad_index": self.first_bad_index,
            "reason": self.reason,
        }


def verify_entries(entries: Iterator[dict], key: bytes, meta: dict) -> VerifyResult:
    meta = {(k.decode() if isinstance(k, bytes) else k): v for k, v in meta.items()}
    expected_seq = int(meta.get("first", 1))
    prev_mac = (meta.get("first_prev") or b"").decode() if meta.get("first_prev") else ""
    first_seq = expected_seq
    recorded_first = 1
    checked = 0
    for index, entry in enumerate(entries):
        seq = entry.get("seq")
        if not isinstance(seq, int) or seq != expected_seq:
            return VerifyResult(
                False,
                checked,
                seq if isinstance(seq, int) else None,
                index,
                f"sequence {seq!r} where {expected_seq} was expected",
            )
        if entry.get("prev", "") != prev_mac:
            return VerifyResult(False, checked, seq, index, "chain broken: prev does not match")
        if not hmac.compare_digest(entry_mac(key, entry), str(entry.get("mac", ""))):
            return VerifyResult(False, checked, seq, index, "MAC does not match the entry")
        if entry.get("action") == TRIM_ACTION:
            recorded_first = _trimmed_to(entry.get("target", ""))
        prev_mac = entry["mac"]
        expected_seq += 1
        checked += 1
    if first_seq > 1 and recorded_first != first_seq:
        return VerifyResult(
            False,
            checked,
            first_seq,
            0,
            f"entries before {first_seq} are gone but no trim to {first_seq} is recorded",
        )
    last_seq = int(meta.get("seq", 0))
    if expected_seq - 1 != last_seq:
        return VerifyResult(
            False,
            checked,
            expected_seq,
            checked,
            f"log ends at {expected_seq - 1} but {last_seq} entries were written",
        )
    last_mac = meta.get("mac", b"")
    last_mac = last_mac.decode() if isinstance(last_mac, bytes) else last_mac
    if checked and last_mac != prev_mac:
        return VerifyResult(
            False, checked, last_seq, checked - 1, "last MAC does not match the head"
        )
    return VerifyResult(True, checked)


def _trimmed_to(target: str) -> int:
    try:
        return int(target.removeprefix("first:"))
    except ValueError:
        return -1
