"""The contract, written once: what a key, a prefix and a user name look like,
the roles, the limits a request meets, and the error codes a client can get.

Everything that checks or documents these reads them from here: the KV core and
the routes, the user store, the errors, the console, the operator CLI, the
OpenAPI document and the edge's nginx template (rendered with these values), so
the edge's regex and the app's can never drift apart.

Python patterns are anchored with ``\\A...\\Z``, never ``^...$``: ``$`` also
matches before a trailing newline, which would let ``key\\n`` (sent as
``key%0A``) through. The ``*_PATTERN`` strings are the same rule in the form
OpenAPI and error messages show (``^...$``).
"""

from __future__ import annotations

import re

# --- keys and prefixes ---------------------------------------------------------
KEY_CHARS = "A-Za-z0-9_-"
KEY_MAX = 256
KEY_CLASS = f"[{KEY_CHARS}]{{1,{KEY_MAX}}}"  # unanchored, for the edge's locations
KEY_PATTERN = f"^{KEY_CLASS}$"
KEY_RE = re.compile(rf"\A{KEY_CLASS}\Z")
KEY_RULE = f"keys match {KEY_PATTERN}"

PREFIX_CLASS = f"[{KEY_CHARS}]{{0,{KEY_MAX}}}"
PREFIX_PATTERN = f"^{PREFIX_CLASS}$"
PREFIX_RE = re.compile(rf"\A{PREFIX_CLASS}\Z")
# A grant is "*" (everything) or a non-empty key prefix.
GRANT_PATTERN = f"^(\\*|{PREFIX_CLASS})$"
GRANT_RULE = f"each prefix is '*' or matches {KEY_PATTERN}"

# --- users and roles -------------------------------------------------------------
USER_NAME_CLASS = "[a-z0-9][a-z0-9_-]{0,63}"
USER_NAME_PATTERN = f"^{USER_NAME_CLASS}$"
USER_NAME_RE = re.compile(rf"\A{USER_NAME_CLASS}\Z")
USER_NAME_RULE = f"user names match {USER_NAME_PATTERN}"

ROLES = ("reader", "writer", "admin")
ROLE_IMPLIES = {
    "reader": ("reader",),
    "writer": ("reader", "writer"),
    "admin": ("reader", "writer", "admin"),
}


def html_pattern(pattern_class: str) -> str:
    """A ``*_CLASS`` as an HTML ``pattern`` attribute: browsers compile it with the
    ``v`` flag, where a literal ``-`` in a character class must be escaped."""
    return pattern_class.replace("_-]", "_\\-]")


# --- request ids ------------------------------------------------------------------
REQUEST_ID_CLASS = "[A-Za-z0-9._-]{1,64}"
REQUEST_ID_RE = re.compile(rf"\A{REQUEST_ID_CLASS}\Z")

# --- limits -------------------------------------------------------------------------
MAX_TTL = 10 * 365 * 24 * 3600  # seconds: ten years
MAX_LIST_LIMIT = 1000  # keys per listing page
MAX_TXN_OPS = 64  # operations in one POST /v1/txn
MAX_BULK_ITEMS = 1000  # items in one POST /v1/bulk
MAX_GRANTS = 100  # key prefixes one user may be granted
MAX_WATCH_WAIT = 300  # seconds one GET /v1/watch may wait
DEFAULT_WATCH_WAIT = 60
MAX_WATCH_KEYS = 1000  # keys one prefix watch answers (the rest: truncated)


def whole_number(raw: str, low: int, high: int) -> int | None:
    """``raw`` as a number from ``low`` to ``high`` (ASCII digits only), else None.
    A string with more significant digits than ``high`` is refused before
    ``int()``, which raises on more than 4,300 digits (a 500, not a 400)."""
    if not (raw.isascii() and raw.isdigit()):
        return None
    digits = raw.lstrip("0") or "0"
    if len(digits) > len(str(high)):
        return None
    value = int(digits)
    return value if low <= value <= high else None


# --- errors ---------------------------------------------------------------------------
# Every status a client can get and its machine-readable ``error.code``. The
# planes (productionlab.errors), the edge's error pages (the nginx template) and
# the OpenAPI document all read this table; the messages are each layer's own.
ERROR_CODES: dict[int, str] = {
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
    500: "internal",
    503: "unavailable",
}
# Codes that refine a status (same status, a more precise reason).
REFINED_CODES: dict[str, int] = {
    "invalid_key": 400,
    "invalid_value": 400,
    "quota_exceeded": 403,
    "condition_failed": 409,  # a transaction's condition (POST /v1/txn)
    "cross_shard": 400,  # a transaction over several shards on a Redis Cluster
    "https_required": 301,  # the edge's plain-HTTP port: the body of its redirect
}
