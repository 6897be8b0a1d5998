"""Request ids and one JSON log line per request.

The line holds request id, user, route, method, status and latency, never a
password, token or value: only the route pattern is logged, not the path.

The per-request line is written straight to stderr (the same fields the JSON
formatter gives every other logger): going through ``logging`` and
python-json-logger cost more than the rest of a cached read. It is the text
``json.dumps`` gives for those fields, put together by :func:`access_line`
from the parts that change (each string escaped by the JSON encoder's own
``encode_basestring_ascii``) and a time stamp formatted once a second: a
``json.dumps`` of the dict and a ``strftime`` per request were ~10 us of a read's
~280 (bench/levers.md).
"""

from __future__ import annotations

import logging
import secrets
import sys
import time
from json.encoder import encode_basestring_ascii

from flask import Flask, Response, g, request
from pythonjsonlogger.json import JsonFormatter

from productionlab.contract import REQUEST_ID_RE

ACCESS = logging.getLogger("productionlab.access")
_REQUEST_ID = REQUEST_ID_RE


def configure_logging(level: str = "INFO") -> None:
    """JSON lines on stderr for every logger (ours, Waitress's, the libraries')."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        JsonFormatter(
            "%(asctime)s %(levelname)s %(name)s %(message)s",
            rename_fields={"asctime": "time", "levelname": "level", "name": "logger"},
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)


def _quoted(text: str | None) -> str:
    """``text`` as ``json.dumps`` writes it (``null`` for None)."""
    return "null" if text is None else encode_basestring_ascii(text)


class _Clock:
    """``logging``'s time stamp (``2026-11-26 21:20:00,123``, local time), the
    seconds formatted once per second."""

    def __init__(self) -> None:
        self._second = (-1, "")

    def stamp(self, now: float) -> str:
        whole = int(now)
        second, text = self._second
        if second != whole:
            text = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(whole))
            self._second = (whole, text)
        return f"{text},{int(now % 1 * 1000):03d}"


def access_line(
    stamp: str,
    plane: str,
    request_id: str,
    user: str | None,
    method: str,
    route: str | None,
    status: int,
    latency_ms: float,
    client: str | None,
) -> str:
    """The request's JSON line: the text of ``json.dumps`` of the same fields
    (tests/test_observability.py holds the two equal)."""
    return (
        f'{{"time": {_quoted(stamp)}, "level": "INFO", "logger": "{ACCESS.name}", '
        f'"message": "request", "plane": {_quoted(plane)}, '
        f'"request_id": {_quoted(request_id)}, "user": {_quoted(user)}, '
        f'"method": {_quoted(method)}, "route": {_quoted(route)}, "status": {status!r}, '
        f'"latency_ms": {latency_ms!r}, "client": {_quoted(client)}}}\n'
    )


def init_app(app: Flask, plane: str) -> None:
    clock = _Clock()

    # ``request`` and ``g`` are context-local proxies: each attribute read through
    # one costs ~1 us. The hooks take the objects once (``_get_current_object``).
    @app.before_request
    def assign_request_id() -> None:
        here = g._get_current_object()
        here.started = time.perf_counter()
        incoming = request.headers.get("X-Request-ID", "")
        here.request_id = incoming if _REQUEST_ID.match(incoming) else secrets.token_hex(16)

    @app.after_request
    def log_request(response: Response) -> Response:
        here = g._get_current_object()
        request_id = here.get("request_id", "")
        response.headers["X-Request-ID"] = request_id
        if not ACCESS.isEnabledFor(logging.INFO):
            return response
        asked = request._get_current_object()
        user = here.get("user")
        started = here.get("started")
        rule = asked.url_rule
        line = access_line(
            clock.stamp(time.time()),
            plane,
            request_id,
            user.name if user is not None else None,
            asked.method,
            rule.rule if rule else None,
            response.status_code,
            round((time.perf_counter() - started) * 1000, 2) if started else 0.0,
            asked.remote_addr,
        )
        sys.stderr.write(line)
        return response
