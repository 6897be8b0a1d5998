"""Per-route limits on the control plane: Flask-Limiter on ``/admin/*`` and
``/auth/*``, per address and (for the token routes) per claimed user.
"""

from __future__ import annotations

import base64
import json
import math
import time
from collections.abc import Callable
from typing import ClassVar

import redis
from flask import Flask, Response, request
from flask_limiter import Limiter, RateLimitExceeded
from limits.storage import RedisClusterStorage, RedisStorage, Storage
from redis.cluster import RedisCluster

from productionlab import securitymetrics
from productionlab.audit import clean
from productionlab.errors import error_response
from productionlab.settings import Settings

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


class PlaneClusterStorage(RedisClusterStorage):
    """limits' Redis Cluster storage over the plane's own cluster client, as the
    single-redis path shares the plane's pool: limits' own storage makes a new
    ``RedisCluster``, which fails the plane's start-up while no cluster node
    answers (store/connection.py's ``StartingRedisCluster`` waits for one)."""

    STORAGE_SCHEME: ClassVar[list[str]] = ["plab-redis+cluster"]

    def __init__(
        self,
        uri: str,
        key_prefix: str = RedisStorage.PREFIX,
        wrap_exceptions: bool = False,
        client: RedisCluster | None = None,
        **options: float | str | bool,
    ) -> None:
        if client is None:
            raise ValueError("PlaneClusterStorage needs the plane's cluster client")
        self.key_prefix = key_prefix
        self.target_server = "redis"
        self.dependency = self.dependencies["redis"].module
        self.storage = client
        self.initialize_storage(uri)
        Storage.__init__(self, uri, wrap_exceptions, **options)


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
        else:  # a cluster client has no single pool: the storage uses the client itself
            storage_uri, options = f"{PlaneClusterStorage.STORAGE_SCHEME[0]}://", {"client": client}
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
