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

import base64
import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import wraps

import redis
from flask import Flask, Response, g, request
from flask_limiter import Limiter, RateLimitExceeded
from limits import parse as parse_rate

from productionlab import securitymetrics
from productionlab.audit import AUDIT_KEYS, Actor, clean
from productionlab.errors import RateLimited, error_response
from productionlab.luascripts import script
from productionlab.settings import Settings

FAILURES = "{plab}:authfail:"
# Failed tokens (and any credential that is not Basic) are counted per address
# under their own key: they never feed the Basic guard's per-address counter.
TOKEN_FAILURES = FAILURES + "tok:"
# The open aggregation window of failure audit entries (see lua/auth_failures.lua).
FAILURE_WINDOW = FAILURES + "window"
WINDOW = 60
# Guard names that start with "-" are not user names (those start with [a-z0-9]):
# the token service counts forged refresh tokens as "-refresh", a token failure.
NON_USER_PREFIX = "-"

# Failures are audited in aggregate, not one entry each (lua/auth_failures.lua):
# unauthenticated traffic adds at most cap + 1 entries per window.
AUTH_FAILURE_RECORD = script("auth_failure_record")
AUTH_FAILURE_CLOSE_WINDOW = script("auth_failure_close_window")


class LoginGuard:
    """The brute-force guard and the aggregated audit of authentication failures.

    Basic (password) failures: at most N a minute per (address, user) and M per
    address, then 429 even for the right password from that address (unless
    already verified). Token failures (and credentials in any scheme but Basic)
    are counted per address on their own and never count toward the Basic
    guard, so junk tokens from a shared address cannot lock out passwords.
    Every failure is audited in aggregate (one entry per address and window).
    """

    def __init__(
        self,
        client: redis.Redis,
        per_pair: int,
        per_address: int,
        per_address_tokens: int = 100,
        audit_window: int = WINDOW,
        audit_addresses: int = 100,
    ):
        self.client = client
        self.per_pair = per_pair
        self.per_address = per_address
        self.per_address_tokens = per_address_tokens
        self.audit_window = audit_window
        self.audit_addresses = audit_addresses

    @staticmethod
    def _keys(address: str, name: str) -> tuple[str, str]:
        return f"{FAILURES}{clean(address)}|{clean(name, 64)}", f"{FAILURES}{clean(address)}"

    @staticmethod
    def _is_token(name: str) -> bool:
        return name.startswith(NON_USER_PREFIX)

    def check(self, address: str, name: str) -> None:
        """429 when this address (and user) may not try a password (or refresh token) now."""
        if self._is_token(name):
            counter = TOKEN_FAILURES + clean(address)
            pipe = self.client.pipeline(transaction=False)
            pipe.get(counter)
            pipe.ttl(counter)
            count, ttl = pipe.execute()
            if int(count or 0) >= self.per_address_tokens:
                securitymetrics.throttled("login_guard")
                raise RateLimited("too many failed tokens from this address", retry_after=ttl)
            return
        pair, addr = self._keys(address, name)
        pipe = self.client.pipeline(transaction=False)
        pipe.get(pair)
        pipe.ttl(pair)
        pipe.get(addr)
        pipe.ttl(addr)
        pair_count, pair_ttl, addr_count, addr_ttl = pipe.execute()
        if int(pair_count or 0) >= self.per_pair:
            securitymetrics.throttled("login_guard")
            raise RateLimited("too many failed logins; wait and retry", retry_after=pair_ttl)
        if int(addr_count or 0) >= self.per_address:
            securitymetrics.throttled("login_guard")
            raise RateLimited("too many failed logins from this address", retry_after=addr_ttl)

    def failed(self, address: str, name: str, reason: str, now: float | None = None) -> None:
        """Count one failure (Basic, or a token when ``name`` starts with "-").

        A token failure past the address's limit raises 429 (still counted in the
        audit window). ``reason`` is kept for callers; the aggregate entry holds
        only counts per address.
        """
        if self._is_token(name):
            self.token_failed(address, now)
            return
        securitymetrics.auth_failed(reason)
        self._count(address, list(self._keys(address, name)), 0, now)

    def token_failed(self, address: str, now: float | None = None) -> None:
        """Count a refused token from ``address``; 429 once the address is past its limit."""
        securitymetrics.auth_failed("bad_token")
        counter = TOKEN_FAILURES + clean(address)
        wait = self._count(address, [counter], self.per_address_tokens, now)
        if wait > 0:
            securitymetrics.throttled("login_guard")
            raise RateLimited("too many failed tokens from this address", retry_after=wait)

    def _count(self, address: str, counters: list[str], limit: int, now: float | None) -> int:
        # The entries this may append (a closed window's) are not this request's:
        # they carry no client or request id of their own, the address is the target.
        actor = Actor(name="-")
        return int(
            AUTH_FAILURE_RECORD(
                self.client,
                keys={"audit": AUDIT_KEYS, "window": FAILURE_WINDOW, "counters": counters},
                args={
                    "audit": actor.audit_args(),
                    "now": f"{time.time() if now is None else now:.3f}",
                    "span": self.audit_window,
                    "cap": self.audit_addresses,
                    "address": clean(address),
                    "limit": limit,
                    "window": WINDOW,
                },
            )
        )

    def close_window(self, actor: Actor, now: float | None = None) -> int:
        """Append the aggregate entries of a window that has ended; return how many.

        Called by the control plane before it reads or verifies the log, so a
        quiet window's failures do not wait for the next failure to show.
        """
        now = time.time() if now is None else now
        return int(
            AUTH_FAILURE_CLOSE_WINDOW(
                self.client,
                keys={"audit": AUDIT_KEYS, "window": FAILURE_WINDOW},
                args={"audit": actor.audit_args(), "now": f"{now:.3f}", "span": self.audit_window},
            )
        )


def failure_guard(settings: Settings, client: redis.Redis) -> LoginGuard:
    """The guard as ``settings`` configure it (the planes and the CLI build it alike)."""
    return LoginGuard(
        client,
        settings.login_failures_per_minute,
        settings.address_failures_per_minute,
        per_address_tokens=settings.token_failures_per_minute,
        audit_window=settings.auth_audit_window,
        audit_addresses=settings.auth_audit_addresses,
    )


LIMITS = "{plab}:limits:"

# A request's own charge, for views whose store call does not take it
# (lua/user_limit.lua holds the window, shared with the KV scripts).
USER_LIMIT_CHARGE = script("user_limit_charge")


@dataclass(frozen=True)
class Ticket:
    """One request's charge against its caller's window."""

    counter: str
    limit: int
    window: int


# What a script that takes a charge is given when the request has none: limit 0
# takes nothing (the counter key is never touched).
NO_TICKET = Ticket(LIMITS + "none", 0, 0)


class UserLimit:
    """``amount`` requests per ``window`` seconds per authenticated user (or address)."""

    def __init__(self, client: redis.Redis, rate: str, enabled: bool = True):
        item = parse_rate(rate)
        self.amount = int(item.amount) if enabled else 0
        self.window = int(item.get_expiry())
        self.client = client

    def ticket(self) -> Ticket:
        user = g.get("user")
        who = f"user:{user.name}" if user is not None else f"addr:{request.remote_addr}"
        return Ticket(f"{LIMITS}{who}:{self.window}", self.amount, self.window)

    def charge(self, ticket: Ticket) -> None:
        """Take ``ticket`` now, in its own round trip; 429 when the window is spent."""
        if ticket.limit <= 0:
            return
        refused(
            int(
                USER_LIMIT_CHARGE(
                    self.client,
                    keys={"limit": ticket.counter},
                    args={"limit": ticket.limit, "window": ticket.window},
                )
            )
        )

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
        securitymetrics.throttled("user_limit")
        raise RateLimited("too many requests for this user; wait and retry", retry_after=wait)


# --- per-route limits on the control plane (Flask-Limiter) ----------------------
ROUTE_LIMITS = "{plab}:routelimit"


def client_address() -> str:
    """The client as Waitress resolved it (X-Forwarded-For from the trusted edge only)."""
    return request.remote_addr or "-"


def claimed_user() -> str:
    """The user a request names: the Basic user, or the subject inside a refresh token.

    Nothing is verified here; per-user limits keyed by it deduct only answers
    that succeeded, so someone who merely knows a name cannot spend its budget.
    """
    header = request.headers.get("Authorization", "")
    scheme, _, _ = header.partition(" ")
    if scheme.lower() == "basic":
        authorization = request.authorization
        if authorization is not None and authorization.username:
            return "user:" + clean(authorization.username, 64)
    body = request.get_json(force=True, silent=True)
    presented = body.get("refresh_token") if isinstance(body, dict) else None
    if isinstance(presented, str) and presented.count(".") == 3 and len(presented) <= 4096:
        try:
            payload = presented.split(".")[2]
            claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
            if isinstance(claims, dict) and isinstance(claims.get("sub"), str):
                return "user:" + clean(claims["sub"], 64)
        except (ValueError, json.JSONDecodeError):
            pass
    return "addr:" + client_address()


def _succeeded(response: Response) -> bool:
    return response.status_code < 400


class RouteLimits:
    """Flask-Limiter on the control plane's ``/admin/*`` and ``/auth/*`` routes.

    Its counters live in redis under ``{plab}:routelimit:`` (inside the planes'
    ACL key pattern), written through the plane's own connection pool; its 429
    is the contract's JSON error with ``Retry-After``. The hot KV routes keep
    :class:`UserLimit` (one fused round trip), not this.
    """

    def __init__(self, app: Flask, settings: Settings, client: redis.Redis):
        pool = getattr(client, "connection_pool", None)
        if pool is not None:
            storage_uri, options = "redis://", {"connection_pool": pool}
        else:  # a cluster client has no single pool: connect by URL with the plane's user
            storage_uri = settings.redis_url
            options = {"username": settings.redis_username, "password": settings.redis_password}
        self.limiter = Limiter(
            key_func=client_address,
            app=app,
            storage_uri=storage_uri,
            storage_options={**options, "key_prefix": ROUTE_LIMITS},
            strategy="fixed-window",
            headers_enabled=False,
            # Fail open when its storage errs: a full redis (noeviction) refuses the
            # counter's INCR, and the admin API must stay usable to free memory.
            # The login guard and the routes' own writes still apply.
            swallow_errors=True,
            enabled=settings.rate_limits_enabled,
        )
        self.admin = self.limiter.shared_limit(
            settings.admin_route_rate, scope="admin", key_func=client_address
        )
        per_address = self.limiter.shared_limit(
            settings.auth_address_rate, scope="auth-address", key_func=client_address
        )
        per_user = self.limiter.shared_limit(
            settings.auth_user_rate,
            scope="auth-user",
            key_func=claimed_user,
            deduct_when=_succeeded,
        )

        def token(view: Callable) -> Callable:
            return per_address(per_user(view))

        self.token = token

        @app.errorhandler(RateLimitExceeded)
        def too_many(exc: RateLimitExceeded) -> Response:
            securitymetrics.throttled("flask_limiter")
            current = self.limiter.current_limit
            wait = 1
            if current is not None:
                wait = min(math.ceil(current.reset_at - time.time()), current.limit.get_expiry())
            return error_response(
                429,
                "rate_limited",
                "too many requests to this route; wait and retry",
                {"Retry-After": str(max(1, wait))},
            )
