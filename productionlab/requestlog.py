"""Request ids and one JSON log line per request.

The line holds request id, user, route, method, status and latency, never a
password, token or value: only the route pattern is logged, not the path.

The per-request line is written as one ``json.dumps`` straight to stderr (the
same fields the JSON formatter gives every other logger): going through
``logging`` and python-json-logger cost more than the rest of a cached read.
"""

from __future__ import annotations

import json
import logging
import secrets
import sys
import time

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


def init_app(app: Flask, plane: str) -> None:
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
        now = time.time()
        line = {
            "time": time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(now))
            + f",{int(now % 1 * 1000):03d}",
            "level": "INFO",
            "logger": ACCESS.name,
            "message": "request",
            "plane": plane,
            "request_id": request_id,
            "user": user.name if user is not None else None,
            "method": asked.method,
            "route": rule.rule if rule else None,
            "status": response.status_code,
            "latency_ms": round((time.perf_counter() - started) * 1000, 2) if started else 0.0,
            "client": asked.remote_addr,
        }
        sys.stderr.write(json.dumps(line) + "\n")
        return response
