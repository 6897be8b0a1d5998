"""Our exceptions and the one handler that renders every error as contract JSON.

No stack trace, framework page or server version ever reaches a client:
framework errors, redis outages and bugs all pass through here.
"""

from __future__ import annotations

import logging

from flask import Flask, Response, g, jsonify
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import OutOfMemoryError, RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError
from werkzeug.exceptions import HTTPException

log = logging.getLogger("productionlab.errors")

REDIS_RETRY_AFTER = 2
REDIS_FULL_RETRY_AFTER = 10  # freeing memory takes an operator or expiries


class APIError(Exception):
    status = 500
    code = "internal"
    message = "internal error"

    def __init__(self, message: str | None = None, *, headers: dict[str, str] | None = None):
        super().__init__(message or self.message)
        self.message = message or self.message
        self.headers = headers or {}


class BadRequest(APIError):
    status, code, message = 400, "bad_request", "the request is malformed"


class InvalidKey(BadRequest):
    code = "invalid_key"
    message = "keys match ^[A-Za-z0-9_-]{1,256}$"


class InvalidValue(BadRequest):
    code = "invalid_value"
    message = "the value is not acceptable"


class Unauthorized(APIError):
    status, code, message = 401, "unauthorized", "authentication required"

    def __init__(self, message: str | None = None):
        super().__init__(
            message, headers={"WWW-Authenticate": 'Basic realm="productionlab", charset="UTF-8"'}
        )


class Forbidden(APIError):
    status, code, message = 403, "forbidden", "your grants do not cover this"


class QuotaExceeded(Forbidden):
    """A write that would take its writer past their per-user key or byte quota.

    403, not 413: the refusal is about the account's standing, not this
    request's size (a one-byte write of a new key is refused when the key count
    is spent), and retrying the same request will not help until the user
    deletes or shrinks keys. 507 is not in the contract.
    """

    code, message = "quota_exceeded", "this write would exceed your quota"


class NotFound(APIError):
    status, code, message = 404, "not_found", "no such resource"


class MethodNotAllowed(APIError):
    status, code, message = 405, "method_not_allowed", "method not allowed here"


class Conflict(APIError):
    status, code, message = 409, "conflict", "the resource already exists"


class PreconditionFailed(APIError):
    status, code, message = 412, "precondition_failed", "the version does not match"


class PayloadTooLarge(APIError):
    status, code, message = 413, "payload_too_large", "the value is too large"


class TooManyRequests(APIError):
    status, code, message = 429, "rate_limited", "too many requests"

    def __init__(self, message: str | None = None, *, retry_after: int = 1):
        super().__init__(message, headers={"Retry-After": str(max(1, int(retry_after)))})


class Unavailable(APIError):
    status, code, message = 503, "unavailable", "the store is unavailable; retry later"

    def __init__(self, message: str | None = None, *, retry_after: int = REDIS_RETRY_AFTER):
        super().__init__(message, headers={"Retry-After": str(retry_after)})


_HTTP_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    408: "request_timeout",
    409: "conflict",
    411: "length_required",
    412: "precondition_failed",
    413: "payload_too_large",
    414: "uri_too_long",
    415: "unsupported_media_type",
    416: "range_not_satisfiable",
    428: "precondition_required",
    429: "rate_limited",
    431: "headers_too_large",
}


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


def init_app(app: Flask) -> None:
    @app.errorhandler(APIError)
    def handle_api_error(exc: APIError) -> Response:
        return error_response(exc.status, exc.code, exc.message, exc.headers)

    @app.errorhandler(HTTPException)
    def handle_http_exception(exc: HTTPException) -> Response:
        status = exc.code or 500
        headers: dict[str, str] = {}
        if status == 405 and getattr(exc, "valid_methods", None):
            headers["Allow"] = ", ".join(sorted(exc.valid_methods))
        if status == 429:
            # Our own limits raise TooManyRequests with their wait; a bare 429 gets 1 s.
            headers["Retry-After"] = "1"
            return error_response(429, "rate_limited", "too many requests", headers)
        if status >= 500:
            log.error("http exception %s", status)
            return error_response(500, "internal", "internal error")
        code = _HTTP_CODES.get(status, "error")
        return error_response(status, code, code.replace("_", " "), headers)

    @app.errorhandler(RedisConnectionError)
    @app.errorhandler(RedisTimeoutError)
    def handle_redis_down(exc: RedisError) -> Response:
        log.warning("redis unavailable: %s", type(exc).__name__)
        return error_response(
            503,
            "unavailable",
            "the store is unavailable; retry later",
            {"Retry-After": str(REDIS_RETRY_AFTER)},
        )

    @app.errorhandler(OutOfMemoryError)
    def handle_redis_full(exc: RedisError) -> Response:
        # noeviction past maxmemory: the write changed nothing (redis refuses a
        # script before its first write). Reads still work; deletes free room.
        log.error("redis refuses writes: out of memory (maxmemory)")
        return error_response(
            503,
            "unavailable",
            "the store is full and refuses writes; retry later",
            {"Retry-After": str(REDIS_FULL_RETRY_AFTER)},
        )

    @app.errorhandler(RedisError)
    def handle_redis_error(exc: RedisError) -> Response:
        # Loading, read-only replica, MISCONF (disk full, AOF write failing):
        # all transient from the client's point of view.
        log.error("redis error: %s", exc)
        return error_response(
            503,
            "unavailable",
            "the store cannot accept this now; retry later",
            {"Retry-After": str(REDIS_RETRY_AFTER)},
        )

    @app.errorhandler(Exception)
    def handle_unexpected(exc: Exception) -> Response:
        log.exception("unhandled error")
        return error_response(500, "internal", "internal error")
