"""Our exceptions and the one handler that renders every error as contract JSON.

No stack trace, framework page or server version ever reaches a client:
framework errors, redis outages and bugs all pass through here.
"""

from __future__ import annotations

import logging

from flask import Flask, Response, g, jsonify
from redis.exceptions import (
    AskError,
    ClusterDownError,
    ClusterError,
    MovedError,
    OutOfMemoryError,
    RedisClusterException,
    RedisError,
    TryAgainError,
)
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from werkzeug.exceptions import HTTPException

from productionlab.contract import ERROR_CODES, KEY_RULE

log = logging.getLogger("productionlab.errors")

REDIS_RETRY_AFTER = 2
REDIS_FULL_RETRY_AFTER = 10  # freeing memory takes an operator or expiries


class PlabError(HTTPException):
    """Base of our errors: a werkzeug ``HTTPException`` (``code`` is the HTTP status,
    ``description`` the message) with the contract's machine-readable ``error_code``
    and extra response headers. Names are ours on purpose (``KeyNotFound``, not
    ``NotFound``) so no reader mistakes one for werkzeug's own class."""

    # No status on the base: Flask files a handler under its class's ``code``, and
    # only a handler filed under ``None`` is found for every subclass's status.
    code: int | None = None
    error_code = "internal"
    description = "internal error"

    def __init__(self, message: str | None = None, *, headers: dict[str, str] | None = None):
        super().__init__(message or self.description)
        self.headers = headers or {}

    @property
    def message(self) -> str:
        return self.description or ""

    def __init_subclass__(cls, **kwargs: object) -> None:
        super().__init_subclass__(**kwargs)
        if "code" in cls.__dict__ and "error_code" not in cls.__dict__:
            cls.error_code = ERROR_CODES[cls.code]  # the contract's code for the status

    def __str__(self) -> str:  # the message alone, as CLI and console print it
        return self.message

    def get_headers(self, *args: object, **kwargs: object) -> list[tuple[str, str]]:
        return [*super().get_headers(*args, **kwargs), *self.headers.items()]  # type: ignore[arg-type]


class MalformedRequest(PlabError):
    code, description = 400, "the request is malformed"


class InvalidKey(MalformedRequest):
    error_code = "invalid_key"
    description = KEY_RULE


class CrossShardTransaction(MalformedRequest):
    """A transaction on a Redis Cluster whose keys lie in more than one shard
    (a shard is the unit of atomicity: docs/ARCHITECTURE.md, "Virtual shards")."""

    error_code = "cross_shard"


class InvalidValue(MalformedRequest):
    error_code = "invalid_value"
    description = "the value is not acceptable"


class AuthenticationRequired(PlabError):
    code, description = 401, "authentication required"

    def __init__(self, message: str | None = None):
        super().__init__(
            message, headers={"WWW-Authenticate": 'Basic realm="productionlab", charset="UTF-8"'}
        )


class NotGranted(PlabError):
    code, description = 403, "your grants do not cover this"


class QuotaExceeded(NotGranted):
    """A write that would take its writer past their per-user key or byte quota.

    403, not 413: the refusal is about the account's standing, not this
    request's size (a one-byte write of a new key is refused when the key count
    is spent), and retrying the same request will not help until the user
    deletes or shrinks keys. 507 is not in the contract.
    """

    error_code, description = "quota_exceeded", "this write would exceed your quota"


class ResourceNotFound(PlabError):
    code, description = 404, "no such resource"


class KeyNotFound(ResourceNotFound):
    pass


class UserNotFound(ResourceNotFound):
    pass


class StateConflict(PlabError):
    code, description = 409, "the resource already exists"


class UserExists(StateConflict):
    pass


class VersionConflict(PlabError):
    code, description = 412, "the version does not match"


class ValueTooLarge(PlabError):
    code, description = 413, "the value is too large"


class RateLimited(PlabError):
    code, description = 429, "too many requests"

    def __init__(self, message: str | None = None, *, retry_after: int = 1):
        super().__init__(message, headers={"Retry-After": str(max(1, int(retry_after)))})


class StoreUnavailable(PlabError):
    code = 503
    description = "the store is unavailable; retry later"

    def __init__(self, message: str | None = None, *, retry_after: int = REDIS_RETRY_AFTER):
        super().__init__(message, headers={"Retry-After": str(retry_after)})


def error_response(
    status: int, code: str, message: str, headers: dict[str, str] | None = None
) -> Response:
    response = jsonify(
        {"error": {"code": code, "message": message}, "request_id": g.get("request_id", "")}
    )
    response.status_code = status
    for name, value in (headers or {}).items():
        response.headers[name] = value
    return response


def store_unavailable(message: str, retry_after: int = REDIS_RETRY_AFTER) -> Response:
    """503 with ``Retry-After``: what every redis fault becomes, never a 500."""
    return error_response(503, "unavailable", message, {"Retry-After": str(retry_after)})


def init_app(app: Flask) -> None:
    @app.errorhandler(PlabError)
    def handle_plab_error(exc: PlabError) -> Response:
        return error_response(exc.code or 500, exc.error_code, exc.message, exc.headers)

    @app.errorhandler(HTTPException)
    def handle_http_exception(exc: HTTPException) -> Response:
        status = exc.code or 500
        headers: dict[str, str] = {}
        if status == 405 and getattr(exc, "valid_methods", None):
            headers["Allow"] = ", ".join(sorted(exc.valid_methods))
        if status == 429:
            # Our own limits raise RateLimited with their wait; a bare 429 gets 1 s.
            headers["Retry-After"] = "1"
            return error_response(429, "rate_limited", "too many requests", headers)
        if status >= 500:
            log.error("http exception %s", status)
            return error_response(500, "internal", "internal error")
        code = ERROR_CODES.get(status, "error")
        return error_response(status, code, code.replace("_", " "), headers)

    @app.errorhandler(RedisConnectionError)
    @app.errorhandler(RedisTimeoutError)
    def handle_redis_down(exc: RedisError) -> Response:
        log.warning("redis unavailable: %s", type(exc).__name__)
        return store_unavailable("the store is unavailable; retry later")

    @app.errorhandler(OutOfMemoryError)
    def handle_redis_full(exc: RedisError) -> Response:
        # noeviction past maxmemory: the write changed nothing (redis refuses a
        # script before its first write). Reads still work; deletes free room.
        log.error("redis refuses writes: out of memory (maxmemory)")
        return store_unavailable(
            "the store is full and refuses writes; retry later", REDIS_FULL_RETRY_AFTER
        )

    @app.errorhandler(RedisError)
    def handle_redis_error(exc: RedisError) -> Response:
        # Loading, read-only replica, MISCONF (disk full, AOF write failing):
        # all transient from the client's point of view.
        log.error("redis error: %s", exc)
        return store_unavailable("the store cannot accept this now; retry later")

    @app.errorhandler(ClusterError)
    @app.errorhandler(ClusterDownError)
    @app.errorhandler(TryAgainError)
    @app.errorhandler(AskError)
    @app.errorhandler(MovedError)
    def handle_slot_moving(exc: RedisError) -> Response:
        # A slot being resharded or failing over: redis-py follows MOVED/ASK and
        # retries TRYAGAIN (a script or MULTI whose keys are split between the two
        # masters mid-migration) a bounded number of times, then gives up with one
        # of these ("TTL exhausted"). Nothing was applied; a retry will succeed
        # once the slot has moved. Expected during resharding: a warning, not an error.
        log.warning("redis cluster slot moving: %s: %s", type(exc).__name__, exc)
        return store_unavailable("the store is moving data; retry later")

    @app.errorhandler(RedisClusterException)
    def handle_cluster_unreachable(exc: RedisClusterException) -> Response:
        # redis-py's cluster client raises this (not a RedisError) when no node
        # answers or a slot has no master: the store is down, not the request bad.
        log.warning("redis cluster unavailable: %s", type(exc).__name__)
        return store_unavailable("the store is unavailable; retry later")

    @app.errorhandler(Exception)
    def handle_unexpected(exc: Exception) -> Response:
        log.exception("unhandled error")
        return error_response(500, "internal", "internal error")
