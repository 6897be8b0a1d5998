"""Authentication and authorization for both planes.

Flask-HTTPAuth does the scheme work (Basic, and Bearer when a token service
is registered); the user store keeps users to itself. Routes ask only for a
role and check grants with :func:`require_grant`.

Scheme names are strict: only ``Basic`` (any case) carries a user and
password, only ``Bearer`` (any case) a token; any other scheme is 401 (the
edge routes the same way). Flask-HTTPAuth's own Basic parser takes any scheme
name, which let ``Token <base64(user:password)>`` pass as Basic.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import wraps
from typing import Any

from flask import Blueprint, Flask, Response, g, request
from flask_httpauth import HTTPBasicAuth, HTTPTokenAuth

from productionlab.audit import Actor
from productionlab.configfiles import EDGE_FAILURE_PATH
from productionlab.errors import AuthenticationRequired, NotGranted
from productionlab.lastused import LastUsed
from productionlab.loginguard import LoginGuard
from productionlab.routelimits import RouteLimits
from productionlab.services import Services, services
from productionlab.token_keys import TokenError
from productionlab.tokens import TokenService
from productionlab.users import User, UserStore

REALM = "productionlab"


def scheme_of(header: str) -> str:
    """The Authorization scheme, lower-cased ("" when there is none)."""
    return header.strip().partition(" ")[0].lower()


class SyncCallbacks:
    """Our callbacks and views are plain functions: Flask-HTTPAuth's per-call
    ``ensure_sync`` (an ``inspect.iscoroutinefunction`` check, four a request)
    has nothing to convert."""

    def ensure_sync(self, f: Callable) -> Callable:
        return f


class StrictBasicAuth(SyncCallbacks, HTTPBasicAuth):
    """Basic credentials only under the scheme name ``Basic`` (any case)."""

    def get_auth(self):
        if scheme_of(request.headers.get("Authorization", "")) != "basic":
            return None
        return super().get_auth()


class StrictTokenAuth(SyncCallbacks, HTTPTokenAuth):
    """Tokens only under the scheme name ``Bearer`` (any case: Flask-HTTPAuth's own check)."""


class Authenticator:
    def __init__(
        self,
        users: UserStore,
        guard: LoginGuard,
        user_limit: Callable,
        route_limits: RouteLimits | None = None,
        lastused: LastUsed | None = None,
    ):
        self.users = users
        self.lastused = lastused
        self.guard = guard
        self.user_limit = user_limit
        self.route_limits = route_limits
        self.basic = StrictBasicAuth(realm=REALM)
        self.bearer = StrictTokenAuth(scheme="Bearer", realm=REALM)
        self.token_verifier: Callable[[str], User | None] | None = None
        self.basic.verify_password(self._verify_password)
        self.bearer.verify_token(self._verify_token)
        for scheme in (self.basic, self.bearer):
            scheme.get_user_roles(lambda user: list(user.roles))
            scheme.error_handler(self._error)

    def _verify_password(self, name: str, password: str) -> User | None:
        if not name and not password:
            return None
        cached = self.users.cache.get(name, password)
        if cached is not None:
            return self._accept(cached)
        address = request.remote_addr or "-"
        self.guard.check(address, name)
        user = self.users.verify(name, password)
        if user is None:
            self.guard.failed(address, name, "bad_credentials")
            return None
        return self._accept(user)

    def _verify_token(self, token: str) -> User | None:
        if not token or self.token_verifier is None:
            return None
        user = self.token_verifier(token)
        if user is None:
            # Counted apart from the Basic guard; 429 past the address's limit.
            # A good token is verified first, so junk never locks one out.
            self.guard.token_failed(request.remote_addr or "-")
            return None
        return self._accept(user)

    def _accept(self, user: User) -> User:
        here = g._get_current_object()  # one context-local lookup, not three
        here.user = user
        # At most one redis write a minute per user (lastused.py).
        lastused = self.lastused or services().lastused
        lastused.touch(user.name, here.get("plab_token_family"))
        return user

    @staticmethod
    def _error(status: int) -> Any:
        if status == 403:
            raise NotGranted("your role does not allow this")
        raise AuthenticationRequired()

    def require(self, role: str) -> Callable:
        """Authenticate (Basic or Bearer), demand ``role``, then apply the per-user limit.

        The scheme is chosen as Flask-HTTPAuth's ``MultiAuth`` chooses it (Bearer
        when the header says ``Bearer``, Basic otherwise), but each scheme's
        ``login_required`` wraps the view once, here: ``MultiAuth`` built the
        chosen scheme's decorator (and its ``functools.wraps``) on every request."""

        def decorate(view: Callable) -> Callable:
            limited = self.user_limit(view)
            by_basic = self.basic.login_required(role=role)(limited)
            by_bearer = self.bearer.login_required(role=role)(limited)

            @wraps(view)
            def authenticated(*args: Any, **kwargs: Any) -> Any:
                if scheme_of(request.headers.get("Authorization", "")) == "bearer":
                    return by_bearer(*args, **kwargs)
                return by_basic(*args, **kwargs)

            return authenticated

        return decorate


def edge_failure_blueprint(guard: LoginGuard) -> Blueprint:
    """Where the edge reports a request that failed its Basic check.

    The edge answers such a request itself; the original method, path and body
    never reach the plane. It sends only the client address (X-Forwarded-For),
    the scheme class and the Basic user name nginx parsed. This endpoint counts
    the failure (brute-force guard, aggregated audit), verifies nothing, and
    answers 401, or 429 with Retry-After once the guard is tripped.
    """
    bp = Blueprint("edge_auth", __name__)

    @bp.post(EDGE_FAILURE_PATH)
    def edge_auth_failure() -> Response:
        address = request.remote_addr or "-"
        scheme = request.headers.get("X-Plab-Auth-Scheme", "")
        name = request.headers.get("X-Plab-Auth-User", "")
        if scheme == "basic" and name:
            guard.check(address, name)
            guard.failed(address, name, "edge_basic")
        elif scheme in ("basic", "other"):
            guard.token_failed(address)
        raise AuthenticationRequired()

    return bp


def bearer_verifier(tokens: TokenService) -> Callable[[str], User | None]:
    """Accept Bearer access tokens signed for this plane (see tokens.py)."""

    def verify(token: str) -> User | None:
        try:
            return tokens.verify_access(token)
        except TokenError:
            return None

    return verify


def init_app(app: Flask, wired: Services, route_limits: RouteLimits | None = None) -> Authenticator:
    """Basic and Bearer authentication for ``app``, and the edge's failure reports."""
    authenticator = Authenticator(
        wired.users, wired.guard, wired.user_limit.decorate, route_limits, wired.lastused
    )
    authenticator.token_verifier = bearer_verifier(wired.tokens)  # Bearer tokens on both planes
    app.register_blueprint(edge_failure_blueprint(wired.guard))
    return authenticator


def current_user() -> User:
    user = g.get("user")
    if user is None:
        raise AuthenticationRequired()
    return user


def require_grant(key: str) -> User:
    """The caller, if their grants cover ``key``; 403 otherwise."""
    user = current_user()
    if not user.covers(key):
        raise NotGranted(f"your grants do not cover key {key!r}")
    return user


def actor(name: str | None = None) -> Actor:
    """Who acts in this request, for the audit log: the authenticated user (or
    ``name``, for a caller not yet authenticated), their address, the request id."""
    who = current_user().name if name is None else name
    return Actor(who, request.remote_addr or "", g.get("request_id", ""))
