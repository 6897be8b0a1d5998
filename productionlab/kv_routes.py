"""The KV routes, one blueprint served by both planes: parse, authorize, call
the core, render. The app plane asks reader/writer roles; the control plane
asks admin for everything.

Keys are parsed from the raw request line, not the decoded path, so that an
encoded slash (``%2F``) cannot turn one key into a key plus a value.
"""

from __future__ import annotations

import base64
import binascii
import re
from urllib.parse import quote, unquote, unquote_to_bytes

from flask import Blueprint, Response, current_app, jsonify, request
from werkzeug.routing import PathConverter

from productionlab import batch_routes
from productionlab.auth import Authenticator, actor, current_user, require_grant
from productionlab.contract import (
    KEY_RE,
    MAX_LIST_LIMIT,
    MAX_TTL,
    PREFIX_PATTERN,
    PREFIX_RE,
    whole_number,
)
from productionlab.errors import (
    InvalidKey,
    InvalidValue,
    MalformedRequest,
    NotGranted,
    ValueTooLarge,
)
from productionlab.kv import effective_prefixes
from productionlab.kv_json import encoded, json_response
from productionlab.ratelimit import rides_on_store, take_ticket
from productionlab.services import services

_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_BAD_ESCAPE = re.compile(r"%(?![0-9A-Fa-f]{2})")


class TailConverter(PathConverter):
    """Like ``path`` but also matching newlines, so a CRLF in a path reaches
    our validation (and a 400) instead of falling through to a 404."""

    regex = r"(?s:.+?)"
    part_isolating = False


def raw_path() -> str:
    """The path as the client sent it, percent-encoding intact."""
    raw = request.environ.get("REQUEST_URI") or request.environ.get("RAW_URI")
    if not raw:
        raw = quote(request.environ.get("PATH_INFO", ""), safe="/%")
    raw = raw.split("?", 1)[0]
    if "://" in raw:  # absolute-form request target
        raw = "/" + raw.split("://", 1)[1].partition("/")[2]
    return raw


def raw_tail(route_prefix: str) -> str:
    path = raw_path()
    if not path.startswith(route_prefix):
        raise InvalidKey()
    return path[len(route_prefix) :]


def parse_key(raw: str) -> str:
    try:
        key = unquote(raw, errors="strict")
    except UnicodeDecodeError as exc:
        raise InvalidKey() from exc
    if not KEY_RE.match(key):
        raise InvalidKey()
    return key


def parse_path_value(raw: str) -> bytes:
    if _BAD_ESCAPE.search(raw):  # nginx refuses these too: the two layers agree
        raise InvalidValue("a % in the path starts a two-digit hex escape")
    value = unquote_to_bytes(raw)
    limit = current_app.config["PLAB_MAX_PATH_VALUE"]
    if len(value) > limit:
        raise ValueTooLarge(f"a value in the path is at most {limit} bytes; PUT larger ones")
    if not value:
        raise InvalidValue("the value is empty")
    try:
        text = value.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidValue("a value in the path must be UTF-8") from exc
    if _CONTROL.search(text):
        raise InvalidValue("a value in the path cannot hold control characters")
    return value


def int_arg(name: str, default: int, low: int, high: int) -> int:
    """The query parameter ``name``, a whole number from ``low`` to ``high``; 400 otherwise."""
    raw = request.args.get(name)
    if raw is None:
        return default
    value = whole_number(raw, low, high)
    if value is None:
        raise MalformedRequest(f"{name} is a whole number from {low} to {high}")
    return value


def parse_ttl() -> int | None:
    raw = request.args.get("ttl")
    if raw is None:
        return None
    ttl = whole_number(raw, 1, MAX_TTL)
    if ttl is None:
        raise MalformedRequest(f"ttl is a whole number of seconds from 1 to {MAX_TTL}")
    return ttl


def parse_if_match() -> list[str] | None:
    if "If-Match" not in request.headers:
        return None
    tags = request.if_match
    if tags.star_tag:
        return ["*"]
    versions = [t for t in tags.as_set() if t and t.isascii() and t.isdigit()]
    return versions or ["none"]


def wants_if_absent() -> bool:
    header = request.headers.get("If-None-Match")
    if header is None:
        return False
    if header.strip() != "*":
        raise MalformedRequest("writes support only If-None-Match: *")
    return True


def etag(version: int) -> str:
    return f'"{version}"'


def written(key: str, version: int, created: bool, url_prefix: str = "") -> Response:
    headers = {"ETag": etag(version)}
    if created:
        headers["Location"] = f"{url_prefix}/v1/kv/{key}"
    return json_response({"key": key, "version": version}, 201 if created else 200, headers)


def require_layout() -> None:
    """503 + Retry-After until the store is on the shard layout (shardmigrate.LayoutGate)."""
    gate = services().layout
    if gate is not None:
        gate.require()


def kv_blueprint(
    auth: Authenticator, read_role: str, write_role: str, url_prefix: str = ""
) -> Blueprint:
    """The KV routes; the control plane mounts them under ``/ops``."""
    bp = Blueprint("kv", __name__, url_prefix=url_prefix or None)
    bp.before_request(require_layout)

    @bp.post("/write/")
    @bp.post("/write/<tail:_rest>")
    @auth.require(write_role)
    @rides_on_store
    def write(_rest: str = "") -> Response:
        tail = raw_tail(url_prefix + "/write/")
        raw_key, slash, raw_value = tail.partition("/")
        key = parse_key(raw_key)
        if not slash:
            raise InvalidValue("use /write/<key>/<value>")
        value = parse_path_value(raw_value)
        require_grant(key)
        result = services().kv.put(key, value, actor(), ttl=parse_ttl(), limit=take_ticket())
        return written(key, result.version, result.created, url_prefix)

    @bp.get("/read/")
    @bp.get("/read/<tail:_rest>")
    @auth.require(read_role)
    @rides_on_store
    def read(_rest: str = "") -> Response:
        key = parse_key(raw_tail(url_prefix + "/read/"))
        require_grant(key)
        item = services().kv.get(key, limit=take_ticket())
        body = {"key": key, **encoded(item.value), "version": item.version}
        return json_response(body, headers={"ETag": etag(item.version)})

    @bp.route("/v1/kv/", methods=["GET", "PUT", "DELETE"])
    @bp.route("/v1/kv/<tail:_rest>", methods=["GET", "PUT", "DELETE"])
    @auth.require(read_role)
    @rides_on_store
    def item(_rest: str = "") -> Response:
        key = parse_key(raw_tail(url_prefix + "/v1/kv/"))
        if request.method in ("PUT", "DELETE"):
            if write_role not in current_user().roles:
                raise NotGranted(f"writing needs the {write_role} role")
            require_grant(key)
            if request.method == "PUT":
                return put_item(key)
            services().kv.delete(key, actor(), if_match=parse_if_match(), limit=take_ticket())
            return Response(status=204)
        require_grant(key)
        found = services().kv.get(key, limit=take_ticket())
        tag = etag(found.version)
        if request.if_none_match.contains(str(found.version)):
            return Response(status=304, headers={"ETag": tag})
        return Response(found.value, mimetype="application/octet-stream", headers={"ETag": tag})

    def put_item(key: str) -> Response:
        if_absent = wants_if_absent()
        if_match = parse_if_match()
        if if_absent and if_match is not None:
            raise MalformedRequest("give If-Match or If-None-Match, not both")
        value = request.get_data(cache=False)
        result = services().kv.put(
            key,
            value,
            actor(),
            ttl=parse_ttl(),
            if_match=if_match,
            if_absent=if_absent,
            limit=take_ticket(),
        )
        return written(key, result.version, result.created, url_prefix)

    @bp.get("/v1/kv")
    @auth.require(read_role)
    def listing() -> Response:
        prefix = parse_prefix()
        limit = int_arg("limit", 100, 1, MAX_LIST_LIMIT)
        after = decode_cursor(request.args.get("cursor", ""))
        prefixes = effective_prefixes(current_user().grants, prefix)
        with_values = request.args.get("values", "false")
        if with_values not in ("true", "false"):
            raise MalformedRequest("values is true or false")
        keys, last = services().kv.list_keys(prefixes, after, limit)
        if with_values == "true":
            items, last = batch_routes.with_values(
                services().kv, keys, last, current_app.config["PLAB_LIST_MAX_BYTES"]
            )
            return json_response(
                {"items": items, "next_cursor": encode_cursor(last) if last else None}
            )
        return jsonify({"keys": keys, "next_cursor": encode_cursor(last) if last else None})

    batch_routes.register(bp, auth, read_role, write_role)
    return bp


def parse_prefix() -> str:
    """The ``prefix`` query parameter (empty: every key the caller is granted)."""
    prefix = request.args.get("prefix", "")
    if not PREFIX_RE.match(prefix):
        raise MalformedRequest(f"prefix matches {PREFIX_PATTERN}")
    return prefix


def encode_cursor(key: str) -> str:
    return base64.urlsafe_b64encode(key.encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> str:
    if not cursor:
        return ""
    try:
        key = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode("ascii")
    except (binascii.Error, UnicodeDecodeError, ValueError) as exc:
        raise MalformedRequest("cursor is not one this service gave out") from exc
    if not KEY_RE.match(key):
        raise MalformedRequest("cursor is not one this service gave out")
    return key
