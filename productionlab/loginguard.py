"""The brute-force guard and the aggregated audit of authentication failures.

Failed passwords are counted per (address, user) and per address, failed
tokens per address on their own; past a limit the address gets 429. Every
failure is audited in aggregate, one entry per address and window.
"""

from __future__ import annotations

import time

import redis

from productionlab import securitymetrics
from productionlab.audit import AUDIT_KEYS, Actor, clean
from productionlab.errors import RateLimited
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
