"""Per-user rate limits (a fixed window in redis).

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
from typing import TYPE_CHECKING, NoReturn

import redis
from flask import g, request
from limits import parse as parse_rate

from productionlab import securitymetrics
from productionlab.errors import RateLimited
from productionlab.luascripts import script

if TYPE_CHECKING:
    from productionlab.users import User

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

    def ticket(self, user: User | None = None) -> Ticket:
        """This request's charge: against ``user`` (the caller), else the client address."""
        if user is None:
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
                here = g._get_current_object()  # one context-local lookup, not three
                here.plab_ticket = self.ticket(here.get("user"))
                try:
                    return view(*args, **kwargs)
                finally:
                    # Views that failed before the store (400, 403) are charged too.
                    ticket = here.pop("plab_ticket", None)
                    if ticket is not None:
                        self.charge(ticket)

            return deferred

        @wraps(view)
        def limited(*args, **kwargs):
            self.charge(self.ticket())
            return view(*args, **kwargs)

        return limited


def rides_on_store(view: Callable) -> Callable:
    """Mark a view whose store call takes the per-user charge (see :func:`take_ticket`)."""
    view.plab_rides_on_store = True  # type: ignore[attr-defined]
    return view


def take_ticket() -> Ticket | None:
    """The current request's pending charge, handed over once to the KV core."""
    return g.pop("plab_ticket", None)


def limit_spent(wait: int) -> NoReturn:
    """Raise 429: a script refused the request because the caller's window is spent
    (its ``-2`` status), ``wait`` seconds before it reopens (Retry-After is at least 1)."""
    securitymetrics.throttled("user_limit")
    raise RateLimited("too many requests for this user; wait and retry", retry_after=wait)


def refused(wait: int) -> None:
    """Raise 429 when a limit script answered a positive wait in seconds."""
    if wait > 0:
        limit_spent(wait)
