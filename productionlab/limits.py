"""Per-user rate limits (a fixed window in redis) and the brute-force guard.

The per-user limit is checked after authentication, so one user's quota
cannot be spent by someone who only knows their name.

The limit costs no extra round trip on the data routes: a view marked
:func:`rides_on_store` hands its pending charge (:func:`take_ticket`) to the
KV core, whose Lua script takes it in the same call as the read or write and
refuses the operation, writing nothing, when the window is spent. Any other
view, and a data view that fails before reaching the store, is charged by
its own small script. Windows are shared by every process through redis, so
the limit holds however many app processes run.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import wraps

import redis
from flask import Flask, g, request
from limits import parse as parse_rate

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


LIMITS = "{plab}:limits:"

# Lua shared by every script that takes a per-user charge. KEYS[n] is the
# window's counter; limit 0 means limits are off. Returns 0, or the seconds
# until the window resets when it is spent (the caller then changes nothing).
LIMIT_LUA = r"""
local function take_limit(counter, limit, window)
  if limit <= 0 then return 0 end
  local used = redis.call('INCR', counter)
  if used == 1 then redis.call('EXPIRE', counter, window) end
  if used <= limit then return 0 end
  local ttl = redis.call('TTL', counter)
  if ttl < 0 then redis.call('EXPIRE', counter, window) ttl = window end
  return math.max(ttl, 1)
end
"""

# allow-oom: at maxmemory, charging a few bytes of counter must not turn every
# read and admin request into an error (see kv.ALLOW_OOM).
_CHARGE = (
    "#!lua flags=allow-oom\n"
    + LIMIT_LUA
    + "return take_limit(KEYS[1], tonumber(ARGV[1]), tonumber(ARGV[2]))"
)


@dataclass(frozen=True)
class Ticket:
    """One request's charge against its caller's window."""

    counter: str
    limit: int
    window: int

    def args(self) -> list[int]:
        return [self.limit, self.window]


class UserLimit:
    """``amount`` requests per ``window`` seconds per authenticated user (or address)."""

    def __init__(self, client: redis.Redis, rate: str, enabled: bool = True):
        item = parse_rate(rate)
        self.amount = int(item.amount) if enabled else 0
        self.window = int(item.get_expiry())
        self._charge = client.register_script(_CHARGE)

    def ticket(self) -> Ticket:
        user = g.get("user")
        who = f"user:{user.name}" if user is not None else f"addr:{request.remote_addr}"
        return Ticket(f"{LIMITS}{who}:{self.window}", self.amount, self.window)

    def charge(self, ticket: Ticket) -> None:
        """Take ``ticket`` now, in its own round trip; 429 when the window is spent."""
        if ticket.limit <= 0:
            return
        refused(int(self._charge(keys=[ticket.counter], args=ticket.args())))

    def decorate(self, view: Callable) -> Callable:
        if getattr(view, "plab_rides_on_store", False):

            @wraps(view)
            def deferred(*args, **kwargs):
                g.plab_ticket = self.ticket()
                try:
                    return view(*args, **kwargs)
                finally:
                    # Views that failed before the store (400, 403) are charged too.
                    self._charge_if_untaken()

            return deferred

        @wraps(view)
        def limited(*args, **kwargs):
            self.charge(self.ticket())
            return view(*args, **kwargs)

        return limited

    def _charge_if_untaken(self) -> None:
        ticket = g.pop("plab_ticket", None)
        if ticket is not None:
            self.charge(ticket)


def rides_on_store(view: Callable) -> Callable:
    """Mark a view whose store call takes the per-user charge (see :func:`take_ticket`)."""
    view.plab_rides_on_store = True  # type: ignore[attr-defined]
    return view


def take_ticket() -> Ticket | None:
    """The current request's pending charge, handed over once to the KV core."""
    return g.pop("plab_ticket", None)


def refused(wait: int) -> None:
    """Raise 429 when a limit script answered a positive wait in seconds."""
    if wait > 0:
        raise TooManyRequests("too many requests for this user; wait and retry", retry_after=wait)


def init_app(app: Flask, settings: Settings, client: redis.Redis) -> Callable:
    """Return the per-user limit decorator that :mod:`productionlab.auth` applies."""
    user_limit = UserLimit(client, settings.user_rate, settings.rate_limits_enabled)
    app.extensions["plab_user_limit"] = user_limit
    return user_limit.decorate
