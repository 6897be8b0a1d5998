"""Per-user rate limits (Flask-Limiter on redis) and the brute-force guard.

The per-user limit is checked after authentication, so one user's quota
cannot be spent by someone who only knows their name.
"""

from __future__ import annotations

from collections.abc import Callable

import redis
from flask import Flask, g, request
from flask_limiter import Limiter

from productionlab.audit import AUDIT_KEYS, LUA_PRELUDE, Actor, clean
from productionlab.errors import TooManyRequests
from productionlab.settings import Settings

FAILURES = "{plab}:authfail:"
WINDOW = 60

_RECORD_FAILURE = (
    LUA_PRELUDE
    + r"""
local pair, addr = KEYS[3], KEYS[4]
local window = tonumber(ARGV[9])
redis.call('INCR', pair)
if redis.call('TTL', pair) < 0 then redis.call('EXPIRE', pair, window) end
redis.call('INCR', addr)
if redis.call('TTL', addr) < 0 then redis.call('EXPIRE', addr, window) end
return audit('auth.failure', ARGV[7], ARGV[8], '')
"""
)


class LoginGuard:
    """At most N failed logins a minute per (address, user), and M per address."""

    def __init__(self, client: redis.Redis, audit_key: bytes, per_pair: int, per_address: int):
        self.client = client
        self.audit_key = audit_key
        self.per_pair = per_pair
        self.per_address = per_address
        self._record = client.register_script(_RECORD_FAILURE)

    @staticmethod
    def _keys(address: str, name: str) -> tuple[str, str]:
        return f"{FAILURES}{clean(address)}|{clean(name, 64)}", f"{FAILURES}{clean(address)}"

    def check(self, address: str, name: str) -> None:
        pair, addr = self._keys(address, name)
        pipe = self.client.pipeline(transaction=False)
        pipe.get(pair)
        pipe.ttl(pair)
        pipe.get(addr)
        pipe.ttl(addr)
        pair_count, pair_ttl, addr_count, addr_ttl = pipe.execute()
        if int(pair_count or 0) >= self.per_pair:
            raise TooManyRequests("too many failed logins; wait and retry", retry_after=pair_ttl)
        if int(addr_count or 0) >= self.per_address:
            raise TooManyRequests("too many failed logins from this address", retry_after=addr_ttl)

    def failed(self, address: str, name: str, reason: str) -> None:
        pair, addr = self._keys(address, name)
        actor = Actor(name="-", client=address, request_id=g.get("request_id", ""))
        self._record(
            keys=[*AUDIT_KEYS, pair, addr],
            args=[*actor.audit_args(self.audit_key), clean(name, 64), clean(reason), WINDOW],
        )


def current_user_key() -> str:
    user = g.get("user")
    return f"user:{user.name}" if user is not None else f"addr:{request.remote_addr}"


def init_app(app: Flask, settings: Settings, client: redis.Redis) -> Callable:
    """Wire Flask-Limiter to our redis pool; return the per-user limit decorator."""
    limiter = Limiter(
        key_func=current_user_key,
        app=app,
        storage_uri="redis://",
        storage_options={"connection_pool": client.connection_pool, "key_prefix": "{plab}:limits"},
        strategy="fixed-window",
        headers_enabled=False,
        swallow_errors=False,
        enabled=settings.rate_limits_enabled,
        default_limits=[],
    )
    app.extensions["plab_limiter"] = limiter
    return limiter.shared_limit(settings.user_rate, scope="user", key_func=current_user_key)
