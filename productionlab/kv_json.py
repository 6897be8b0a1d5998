"""How the KV routes (single keys, listings, transactions, bulk) write JSON: one
``json.dumps`` per answer, without Flask's JSON provider (the hot routes' bodies
are plain dicts), and a value as a UTF-8 string or, when it is not UTF-8, base64
with ``"encoding": "base64"``."""

from __future__ import annotations

import base64
import json

from flask import Response


def json_response(body: dict, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(
        json.dumps(body, separators=(",", ":")) + "\n",
        status=status,
        headers=headers,
        mimetype="application/json",
    )


def encoded(value: bytes) -> dict:
    """A value as JSON fields: ``value``, plus ``"encoding": "base64"`` when not UTF-8."""
    try:
        return {"value": value.decode("utf-8")}
    except UnicodeDecodeError:
        return {"value": base64.b64encode(value).decode(), "encoding": "base64"}
