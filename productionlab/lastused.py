"""When users and token families were last used, and the quarterly access review.

Recording is cheap: each plane process remembers when it last wrote a user's
record and writes again only after :data:`WRITE_EVERY` seconds, so a user
costs at most one redis write a minute per process (one pipeline: HSET of
``at`` and, for a Bearer request, ``fam:<family>``, and an EXPIRE), never one
per request. The record is its own key, ``{plab}:lastused:<user>``, because
the app plane's redis user may not write user records (the ACL in
templates/redis.conf.j2 lets it write exactly these keys). The times are
therefore precise to about a minute, and a token family used in the same
minute as another credential of its user is recorded with the next write.
A failed write is logged and forgotten: it never fails a request.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

import redis

from productionlab.store.connection import REDIS_FAULTS
from productionlab.users import User

log = logging.getLogger("productionlab.lastused")

LAST_USED = "{plab}:lastused:"
WRITE_EVERY = 60.0
KEEP_SECONDS = 400 * 86400  # a deleted user's record goes away on its own
UNUSED_DAYS = 90


class LastUsed:
    def __init__(self, client: redis.Redis, every: float = WRITE_EVERY):
        self.client = client
        self.every = every
        self._written: dict[str, float] = {}
        self._lock = threading.Lock()

    def touch(self, name: str, family: str | None = None, now: float | None = None) -> bool:
        """Record a use of ``name`` (and its token ``family``); True when redis was written."""
        tick = time.monotonic()
        with self._lock:
            last = self._written.get(name)
            if last is not None and tick - last < self.every:
                return False
            self._written[name] = tick
        stamp = f"{time.time() if now is None else now:.0f}"
        fields = {"at": stamp}
        if family:
            fields[f"fam:{family}"] = stamp
        key = LAST_USED + name
        try:
            pipe = self.client.pipeline(transaction=False)
            pipe.hset(key, mapping=fields)
            pipe.expire(key, KEEP_SECONDS)
            pipe.execute()
        except REDIS_FAULTS as exc:
            log.warning("last-used of %s not recorded: %s", name, type(exc).__name__)
            return False
        return True


def read(client: redis.Redis, names: list[str]) -> dict[str, dict[str, int]]:
    pipe = client.pipeline(transaction=False)
    for name in names:
        pipe.hgetall(LAST_USED + name)
    return {
        name: {k.decode(): int(v) for k, v in data.items()}
        for name, data in zip(names, pipe.execute(), strict=True)
    }


def review(
    users: list[User],
    client: redis.Redis,
    families: Callable[[str], list[dict]],
    now: float | None = None,
) -> list[dict]:
    """One row per user: role, grants, created, last used, live token families, flags.

    Flags: ``admin`` (the admin role), ``wildcard`` (a grant covering every key:
    ``*``, or admin), ``unused_90_days`` (no use recorded for
    90 days; an account created in the last 90 days and never used is not
    flagged yet), ``disabled``.
    """
    now = time.time() if now is None else now
    used = read(client, [u.name for u in users])
    horizon = now - UNUSED_DAYS * 86400
    rows = []
    for user in users:
        record = used.get(user.name, {})
        last = record.get("at")
        live = []
        for family in families(user.name):
            if family.get("revoked"):
                continue
            live.append({**family, "last_used": record.get(f"fam:{family['family']}")})
        flags = []
        if user.role == "admin":
            flags.append("admin")
        if user.role == "admin" or "*" in user.prefixes:
            flags.append("wildcard")
        if (last if last is not None else user.created) < horizon:
            flags.append("unused_90_days")
        if user.disabled:
            flags.append("disabled")
        rows.append(
            {
                "name": user.name,
                "role": user.role,
                "grants": list(user.grants),
                "disabled": user.disabled,
                "created": int(user.created),
                "last_used": last,
                "token_families": live,
                "flags": flags,
            }
        )
    return rows
