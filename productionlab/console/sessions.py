"""Console sessions: server-side records in redis, a signed id in a cookie.

The cookie holds only a random id, signed with ``PLAB_SECRET_KEY``; redis keeps
the record under ``{plab}:console:session:<sha256(id)>`` (a dump of redis does
not hand out usable ids). A record names its user and the user's *generation*
(``users.py``: every change to a user bumps it, as for access tokens), so a
session dies the moment its user is disabled, rotated, re-granted, demoted or
deleted, through any plane. The record's redis TTL is the idle timeout,
renewed on use; ``created`` bounds the absolute lifetime. A login always makes
a new id (no fixation) and drops any record the browser presented.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from dataclasses import dataclass

import redis
from itsdangerous import BadSignature, Signer

from productionlab.users import USER, User

SESSION = "{plab}:console:session:"
COOKIE = "__Host-plab_console"
LOGIN_COOKIE = "__Host-plab_console_login"


@dataclass(frozen=True)
class ConsoleSession:
    id: str
    user: User
    csrf: str
    created: float
    flash: str = ""


def _record_key(session_id: str) -> str:
    return SESSION + hashlib.sha256(session_id.encode()).hexdigest()


class SessionStore:
    def __init__(self, client: redis.Redis, secret: str, idle: int, lifetime: int):
        self.client = client
        self.signer = Signer(secret, salt="productionlab.console.session")
        self.idle = idle
        self.lifetime = lifetime

    # --- the cookie ----------------------------------------------------------
    def cookie_value(self, session_id: str) -> str:
        return self.signer.sign(session_id).decode()

    def unsign(self, cookie: str | None) -> str | None:
        if not cookie or len(cookie) > 200:
            return None
        try:
            return self.signer.unsign(cookie).decode()
        except BadSignature:
            return None

    # --- records -------------------------------------------------------------
    def create(self, user: User) -> tuple[str, str]:
        """A new session for ``user``: (id, csrf token)."""
        session_id = secrets.token_urlsafe(32)
        csrf = secrets.token_urlsafe(32)
        key = _record_key(session_id)
        pipe = self.client.pipeline(transaction=True)
        pipe.hset(
            key,
            mapping={
                "user": user.name,
                "gen": str(user.generation),
                "csrf": csrf,
                "created": f"{time.time():.3f}",
            },
        )
        pipe.expire(key, self.idle)
        pipe.execute()
        return session_id, csrf

    def load(self, session_id: str | None) -> ConsoleSession | None:
        """The live session for ``session_id``, renewing its idle timer; None when it is
        unknown, idle too long, past its lifetime, or its user changed in any way."""
        if not session_id:
            return None
        key = _record_key(session_id)
        record = self.client.hgetall(key)
        if not record:
            return None
        name = record.get(b"user", b"").decode()
        created = float(record.get(b"created", b"0"))
        data = self.client.hgetall(USER + name) if name else {}
        user = User.from_hash(data) if data else None
        if (
            user is None
            or user.disabled
            or user.role != "admin"
            or str(user.generation) != record.get(b"gen", b"").decode()
            or time.time() - created > self.lifetime
        ):
            self.client.delete(key)
            return None
        pipe = self.client.pipeline(transaction=False)
        pipe.expire(key, self.idle)
        pipe.hget(key, "flash")
        pipe.hdel(key, "flash")
        _, flash, _ = pipe.execute()
        return ConsoleSession(
            session_id,
            user,
            record.get(b"csrf", b"").decode(),
            created,
            (flash or b"").decode(),
        )

    def flash(self, session_id: str, message: str) -> None:
        """A one-line message shown by the next page (no secrets: it sits in redis)."""
        key = _record_key(session_id)
        pipe = self.client.pipeline(transaction=True)
        pipe.hset(key, "flash", message[:500])
        pipe.expire(key, self.idle)
        pipe.execute()

    def revoke(self, session_id: str | None) -> None:
        if session_id:
            self.client.delete(_record_key(session_id))


def tokens_equal(given: str | None, expected: str) -> bool:
    return bool(given) and bool(expected) and hmac.compare_digest(given.encode(), expected.encode())
