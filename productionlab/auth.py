"""Authentication and authorization for both planes.

Flask-HTTPAuth does the scheme work (Basic, and Bearer when a token service
is registered); the user store keeps users to itself. Routes ask only for a
role and check grants with :func:`require_grant`.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import wraps
from typing import Any

from flask import Flask, current_app, g, request
from flask_httpauth import HTTPBasicAuth, HTTPTokenAuth, MultiAuth

from productionlab.errors import Forbidden, Unauthorized
from productionlab.limits import LoginGuard
from productionlab.users import User, UserStore

REALM = "productionlab"


class Authenticator:
    def __init__(self, users: UserStore, guard: LoginGuard, user_limit: Callable):
        self.users = users
        self.guard = guard
        self.user_limit = user_limit
        self.basic = HTTPBasicAuth(realm=REALM)
        self.bearer = HTTPTokenAuth(scheme="Bearer", realm=REALM)
        self.multi = MultiAuth(self.basic, self.bearer)
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
            self.guard.failed(request.remote_addr or "-", "-", "bad_token")
            return None
        return self._accept(user)

    @staticmethod
    def _accept(user: User) -> User:
        g.user = user
        return user

    @staticmethod
    def _error(status: int) -> Any:
        if status == 403:
            raise Forbidden("your role does not allow this")
        raise Unauthorized()

    def require(self, role: str) -> Callable:
        """Authenticate (Basic or Bearer), demand ``role``, then apply the per-user limit."""

        def decorate(view: Callable) -> Callable:
            limited = self.user_limit(view)
            return wraps(view)(self.multi.login_required(role=role)(limited))

        return decorate


def init_app(
    app: Flask, users: UserStore, guard: LoginGuard, user_limit: Callable
) -> Authenticator:
    authenticator = Authenticator(users, guard, user_limit)
    app.extensions["plab_auth"] = authenticator
    return authenticator


def authenticator() -> Authenticator:
    return current_app.extensions["plab_auth"]


def current_user() -> User:
    user = g.get("user")
    if user is None:
        raise Unauthorized()
    return user


def require_grant(key: str) -> User:
    """The caller, if their grants cover ``key``; 403 otherwise."""
    user = current_user()
    if not user.covers(key):
        raise Forbidden(f"your grants do not cover key {key!r}")
    return user
