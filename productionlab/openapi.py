"""The OpenAPI 3 document of each plane, served at ``GET /openapi.json``.

Written by hand (not derived from the routes) so that it is a claim the
tests can check: ``tests/test_openapi.py`` walks ``app.url_map`` and fails on
any route this document does not describe, and schemathesis fuzzes the live
planes against it (no 5xx, no answer outside the schema).
"""

from __future__ import annotations

import re
from typing import Any

from flask import Blueprint, Response, jsonify

from productionlab.contract import (
    GRANT_PATTERN,
    KEY_PATTERN,
    MAX_BULK_ITEMS,
    MAX_GRANTS,
    MAX_TXN_OPS,
    MAX_WATCH_KEYS,
    MAX_WATCH_WAIT,
    PREFIX_PATTERN,
    ROLES,
    USER_NAME_PATTERN,
)
from productionlab.services import services
from productionlab.watch_routes import MAX_INDEX

# Flask rules that are degenerate forms of a documented path: the empty-tail
# routes exist only so that a missing key gets a JSON 400, not a 404.
RULE_ALIASES = {
    "/write/": "/write/{key}/{value}",
    "/write/<tail:_rest>": "/write/{key}/{value}",
    "/read/": "/read/{key}",
    "/read/<tail:_rest>": "/read/{key}",
    "/v1/kv/": "/v1/kv/{key}",
    "/v1/kv/<tail:_rest>": "/v1/kv/{key}",
    "/v1/watch/": "/v1/watch/{key}",
    "/v1/watch/<tail:_rest>": "/v1/watch/{key}",
}
OPS_PREFIX = "/ops"  # where the control plane mounts the KV routes


def documented_path(rule: str) -> str:
    """The OpenAPI path that documents the Flask ``rule``."""
    prefix = OPS_PREFIX if rule.startswith(OPS_PREFIX + "/") else ""
    bare = rule[len(prefix) :]
    if bare in RULE_ALIASES:
        return prefix + RULE_ALIASES[bare]
    return prefix + re.sub(r"<(?:[a-z_]+:)?([A-Za-z_]+)>", r"{\1}", bare)


_ERROR_TEXT = {
    "400": "Malformed request: bad key, value, header or query parameter; or (code "
    "cross_shard) a transaction on a Redis Cluster whose keys span shards",
    "401": "No or wrong credentials",
    "403": "The caller's role or grants do not cover this; or (code quota_exceeded) the "
    "write would take the caller past their key or byte quota and changed nothing",
    "404": "No such key or resource",
    "409": "Conflict with the current state",
    "412": "The If-Match / If-None-Match precondition failed",
    "413": "The value or body is too large",
    "429": "Rate limited, or too many failed logins; on a watch route also when this "
    "process already holds its bound of watches (PLAB_WATCH_MAX_PER_PROCESS)",
    "503": "The store is unavailable, full (redis at maxmemory refuses writes), cannot "
    "promise durability now, or is being moved to the shard layout at an upgrade; "
    "retry later",
}


def _ref(name: str) -> dict:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: dict) -> dict:
    return {"application/json": {"schema": schema}}


def _error(code: str) -> dict:
    response: dict[str, Any] = {"description": _ERROR_TEXT[code], "content": _json(_ref("Error"))}
    if code in ("429", "503"):
        response["headers"] = {"Retry-After": {"$ref": "#/components/headers/RetryAfter"}}
    if code == "401":
        response["headers"] = {"WWW-Authenticate": {"$ref": "#/components/headers/Authenticate"}}
    return response


def _errors(*codes: str) -> dict:
    return {code: _error(code) for code in codes}


AUTHED = ("400", "401", "403", "404", "429", "503")


def _ok(description: str, schema: dict | None = None, headers: dict | None = None) -> dict:
    response: dict[str, Any] = {"description": description}
    if schema is not None:
        response["content"] = _json(schema)
    if headers:
        response["headers"] = headers
    return response


def _op(
    summary: str,
    responses: dict,
    *,
    parameters: list | None = None,
    body: dict | None = None,
    public: bool = False,
    errors: tuple[str, ...] = AUTHED,
) -> dict:
    operation: dict[str, Any] = {
        "summary": summary,
        "responses": {**responses, **_errors(*errors)},
    }
    if parameters:
        operation["parameters"] = parameters
    if body is not None:
        operation["requestBody"] = body
    if public:
        operation["security"] = []
    return operation


def _path_param(name: str, schema: dict, description: str = "") -> dict:
    return {
        "name": name,
        "in": "path",
        "required": True,
        "schema": schema,
        "description": description,
    }


def _query(name: str, schema: dict, description: str = "") -> dict:
    return {
        "name": name,
        "in": "query",
        "required": False,
        "schema": schema,
        "description": description,
    }


KEY = _path_param("key", {"type": "string", "pattern": KEY_PATTERN})
NAME = _path_param("name", {"type": "string", "pattern": USER_NAME_PATTERN})
TTL = _query("ttl", {"type": "integer", "minimum": 1, "maximum": 315360000}, "expiry in seconds")
ETAG = {"ETag": {"$ref": "#/components/headers/ETag"}}


def _schemas() -> dict:
    string = {"type": "string"}
    integer = {"type": "integer"}
    return {
        "Error": {
            "type": "object",
            "required": ["error", "request_id"],
            "properties": {
                "error": {
                    "type": "object",
                    "required": ["code", "message"],
                    "properties": {"code": string, "message": string},
                },
                "request_id": string,
            },
        },
        "Status": {
            "type": "object",
            "required": ["status"],
            "properties": {"status": {"type": "string", "enum": ["ok", "ready", "unavailable"]}},
        },
        "Written": {
            "type": "object",
            "required": ["key", "version"],
            "properties": {"key": string, "version": {"type": "integer", "minimum": 1}},
        },
        "Read": {
            "type": "object",
            "required": ["key", "value", "version"],
            "properties": {
                "key": string,
                "value": string,
                "version": {"type": "integer", "minimum": 1},
                "encoding": {"type": "string", "enum": ["base64"]},
            },
        },
        "KeyPage": {
            "type": "object",
            "required": ["next_cursor"],
            # "keys" by default; "items" (keys with values) with values=true
            "anyOf": [{"required": ["keys"]}, {"required": ["items"]}],
            "properties": {
                "keys": {"type": "array", "items": {"type": "string", "pattern": KEY_PATTERN}},
                "items": {"type": "array", "items": _ref("Read")},
                "next_cursor": {"type": ["string", "null"]},
            },
        },
        **_batch_schemas(),
        **_watch_schemas(),
        "User": {
            "type": "object",
            "required": ["name", "role", "prefixes", "disabled"],
            "properties": {
                "name": string,
                "role": {"type": "string", "enum": list(ROLES)},
                "prefixes": {"type": "array", "items": string},
                "disabled": {"type": "boolean"},
                "created": {"type": "number"},
                "updated": {"type": "number"},
            },
        },
        "UserWithUsage": {
            "allOf": [
                _ref("User"),
                {
                    "type": "object",
                    "required": ["usage"],
                    "properties": {
                        "usage": {
                            "type": "object",
                            "required": ["keys", "bytes", "max_keys", "max_bytes"],
                            "properties": {
                                "keys": {"type": "integer", "minimum": 0},
                                "bytes": {"type": "integer", "minimum": 0},
                                "max_keys": {"type": "integer", "minimum": 1},
                                "max_bytes": {"type": "integer", "minimum": 1},
                            },
                        }
                    },
                },
            ]
        },
        "UserWithPassword": {
            "allOf": [
                _ref("User"),
                {"type": "object", "required": ["password"], "properties": {"password": string}},
            ]
        },
        "UserList": {
            "type": "object",
            "required": ["users"],
            "properties": {"users": {"type": "array", "items": _ref("User")}},
        },
        "AccessReview": {
            "type": "object",
            "required": ["users"],
            "properties": {
                "users": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "required": [
                            "name",
                            "role",
                            "grants",
                            "disabled",
                            "created",
                            "last_used",
                            "token_families",
                            "flags",
                        ],
                        "properties": {
                            "name": {"type": "string"},
                            "role": {"type": "string", "enum": list(ROLES)},
                            "grants": {"type": "array", "items": {"type": "string"}},
                            "disabled": {"type": "boolean"},
                            "created": {"type": "integer"},
                            "last_used": {"type": ["number", "null"]},
                            "token_families": {"type": "array", "items": {"type": "object"}},
                            "flags": {
                                "type": "array",
                                "items": {
                                    "type": "string",
                                    "enum": ["admin", "wildcard", "unused_90_days", "disabled"],
                                },
                            },
                        },
                    },
                }
            },
        },
        "NewUser": {
            "type": "object",
            "required": ["name", "role"],
            "additionalProperties": False,
            "properties": {
                "name": {"type": "string", "pattern": USER_NAME_PATTERN},
                "role": {"type": "string", "enum": list(ROLES)},
                "prefixes": {
                    "type": "array",
                    "maxItems": MAX_GRANTS,
                    "items": {"type": "string", "pattern": GRANT_PATTERN},
                },
            },
        },
        "GrantChange": {
            "type": "object",
            "minProperties": 1,
            "additionalProperties": False,
            "properties": {
                "role": {"type": "string", "enum": list(ROLES)},
                "prefixes": {
                    "type": "array",
                    "maxItems": MAX_GRANTS,
                    "items": {"type": "string", "pattern": GRANT_PATTERN},
                },
            },
        },
        "AuditPage": {
            "type": "object",
            "required": ["entries", "next_since", "next_cursor"],
            "properties": {
                "entries": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        # "mac": an entry of the previous release not yet migrated;
                        # "invalid": something appended to the list that is no entry
                        "required": ["seq"],
                        "properties": {
                            "seq": integer,
                            "chain": string,
                            "prev": string,
                            "ts": string,
                            "actor": string,
                            "action": string,
                            "target": string,
                            "outcome": string,
                            "request_id": string,
                            "client": string,
                            "version": string,
                            "mac": string,
                            "invalid": string,
                        },
                    },
                },
                "next_since": {"type": ["integer", "null"]},
                "next_cursor": {"type": ["string", "null"]},
            },
        },
        "AuditVerify": {
            "type": "object",
            "required": ["ok", "checked"],
            "properties": {
                "ok": {"type": "boolean"},
                "checked": integer,
                "first_bad_seq": {"type": ["integer", "null"]},
                "first_bad_index": {"type": ["integer", "null"]},
                "reason": string,
                "archived": integer,
                "first": integer,
                "last": integer,
                "checkpoints": integer,
                "latest_checkpoint": {"oneOf": [{"type": "null"}, _ref("AuditCheckpoint")]},
                "legacy": string,
                "problems": {"type": "array", "items": string},
            },
        },
        "AuditCheckpoint": {
            "type": "object",
            "required": ["seq", "head", "first", "origin", "time", "key", "sig"],
            "properties": {
                "seq": integer,
                "head": string,
                "first": integer,
                "origin": integer,
                "time": {"type": "number"},
                "key": string,
                "sig": string,
            },
        },
        "TokenPair": {
            "type": "object",
            "required": ["access_token", "refresh_token", "token_type", "expires_in"],
            "properties": {
                "access_token": string,
                "refresh_token": string,
                "token_type": {"type": "string", "enum": ["Bearer"]},
                "expires_in": integer,
                "refresh_expires_in": integer,
            },
        },
        "TokenFamilies": {
            "type": "object",
            "required": ["families"],
            "properties": {"families": {"type": "array", "items": {"type": "object"}}},
        },
        "FamilyRevoked": {
            "type": "object",
            "required": ["family", "revoked"],
            "properties": {"family": string, "revoked": {"type": "boolean"}},
        },
        "TokenKeys": {
            "type": "object",
            "required": ["current", "previous"],
            "properties": {"current": string, "previous": {"type": "array", "items": string}},
        },
        "AuditTrimmed": {
            "type": "object",
            "required": ["dropped", "first"],
            "properties": {
                "dropped": integer,
                "first": {"type": ["integer", "null"]},
                "archived": {"type": ["string", "null"]},
            },
        },
        "Backup": {
            "type": "object",
            "required": ["name", "keys", "digest"],
            "properties": {
                "name": string,
                "keys": integer,
                "digest": string,
                "kv_version": integer,
                "key_id": string,
                "created": {"type": ["number", "string"]},
                "size": integer,
            },
        },
        "BackupList": {
            "type": "object",
            "required": ["backups"],
            "properties": {
                "backups": {
                    "type": "array",
                    "items": {"type": "object", "required": ["name", "size"]},
                }
            },
        },
        "BackupVerified": {
            "type": "object",
            "required": ["name", "ok", "keys", "digest"],
            "properties": {
                "name": string,
                "ok": {"type": "boolean"},
                "keys": integer,
                "digest": string,
            },
        },
        "CheckProd": {
            "type": "object",
            "required": ["ok", "findings"],
            "properties": {"ok": {"type": "boolean"}, "findings": {"type": "array"}},
        },
        "Stats": {
            "type": "object",
            "required": ["keys", "users", "audit_entries"],
            "properties": {
                "keys": integer,
                "users": integer,
                "audit_entries": integer,
                "redis_used_memory": {"type": ["integer", "null"]},
                "redis_maxmemory": {"type": ["integer", "null"]},
                "usage_unattributed": {
                    "type": "object",
                    "description": "keys from before quotas that no audit entry attributes",
                    "properties": {"keys": integer, "bytes": integer},
                },
                "aof_enabled": {"type": "boolean"},
                "aof_last_write_status": {"type": ["string", "null"]},
                "redis_masters": {
                    "type": "array",
                    "description": "each master's memory and AOF state (one entry "
                    "for a single redis; the memory fields above are the fullest "
                    "master's, aof_enabled is true only if every master's AOF is on)",
                    "items": {"type": "object"},
                },
            },
        },
    }


def _probe_paths() -> dict:
    status = _ref("Status")
    return {
        "/health": {
            "get": _op("The process runs", {"200": _ok("Alive", status)}, public=True, errors=())
        },
        "/ready": {
            "get": _op(
                "Redis answers and AOF writes are healthy",
                {"200": _ok("Ready", status)},
                public=True,
                errors=("503",),
            )
        },
        "/_plab/edge-auth-failure": {
            "post": _op(
                "Internal (the edge does not route it from clients): the edge reports a "
                "request that failed its Basic check; counted by the brute-force guard, "
                "nothing verified",
                {},
                public=True,
                errors=("401", "429", "503"),
            )
        },
        "/metrics": {
            "get": {
                "summary": "Prometheus metrics (the edge does not route this)",
                "security": [],
                "responses": {
                    "200": {
                        "description": "Prometheus text exposition",
                        "content": {"text/plain": {"schema": {"type": "string"}}},
                    }
                },
            }
        },
        "/openapi.json": {
            "get": {
                "summary": "This document",
                "security": [],
                "responses": {
                    "200": {
                        "description": "OpenAPI 3.1",
                        "content": _json({"type": "object"}),
                    }
                },
            }
        },
    }


def _batch_schemas() -> dict:
    """Transactions and bulk requests (productionlab/batch_routes.py)."""
    op = {
        "type": "object",
        "required": ["op", "key"],
        "additionalProperties": False,
        "properties": {
            "op": {
                "type": "string",
                "enum": ["get", "put", "delete", "version_equals", "exists", "absent"],
            },
            "key": {"type": "string", "pattern": KEY_PATTERN},
            "value": {"type": "string", "description": "put: the value (UTF-8, or base64)"},
            "encoding": {"type": "string", "enum": ["utf-8", "base64"]},
            "ttl": {"type": "integer", "minimum": 1, "maximum": 315360000},
            "version": {"type": "integer", "minimum": 1, "description": "version_equals"},
        },
    }
    result = {
        "type": "object",
        "required": ["op", "key", "outcome"],
        "properties": {
            "op": {"type": "string"},
            "key": {"type": "string", "pattern": KEY_PATTERN},
            "outcome": {
                "type": "string",
                "enum": [
                    "found",
                    "absent",
                    "created",
                    "updated",
                    "deleted",
                    "held",
                    "quota_exceeded",
                ],
            },
            "version": {"type": "integer", "minimum": 1},
            "value": {"type": "string"},
            "encoding": {"type": "string", "enum": ["base64"]},
        },
    }
    return {
        "BatchOp": op,
        "TxnRequest": {
            "type": "object",
            "required": ["ops"],
            "additionalProperties": False,
            "properties": {
                "ops": {
                    "type": "array",
                    "minItems": 1,
                    "maxItems": MAX_TXN_OPS,
                    "items": _ref("BatchOp"),
                }
            },
        },
        "BulkRequest": {
            "type": "object",
            "required": ["items"],
            "additionalProperties": False,
            "properties": {
                "items": {
                    "type": "array",
                    "minItems": 1,
                    "maxItems": MAX_BULK_ITEMS,
                    "items": _ref("BatchOp"),
                }
            },
        },
        "BatchResults": {
            "type": "object",
            "required": ["results"],
            "properties": {"results": {"type": "array", "items": result}},
        },
        "TxnFailed": {
            "type": "object",
            "required": ["error", "failed_index", "current_version", "request_id"],
            "properties": {
                "error": {
                    "type": "object",
                    "required": ["code", "message"],
                    "properties": {"code": {"type": "string"}, "message": {"type": "string"}},
                },
                "failed_index": {"type": "integer", "minimum": 0},
                "current_version": {"type": ["integer", "null"]},
                "request_id": {"type": "string"},
            },
        },
    }


def _batch_paths() -> dict:
    return {
        "/v1/txn": {
            "post": _op(
                f"Up to {MAX_TXN_OPS} operations applied all or nothing, in order "
                "(conditions first checked)",
                {
                    "200": _ok("Every operation's result", _ref("BatchResults")),
                    "409": _ok("A condition failed; nothing was applied", _ref("TxnFailed")),
                },
                body={"required": True, "content": _json(_ref("TxnRequest"))},
                errors=(*AUTHED, "413"),
            )
        },
        "/v1/bulk": {
            "post": _op(
                f"Up to {MAX_BULK_ITEMS:,} independent get/put/delete items (not atomic); "
                "one result each",
                {"200": _ok("Every item's result", _ref("BatchResults"))},
                body={"required": True, "content": _json(_ref("BulkRequest"))},
                errors=(*AUTHED, "413"),
            )
        },
    }


def _watch_schemas() -> dict:
    """Watches (blocking queries, productionlab/watch_routes.py)."""
    index = {"type": "integer", "minimum": 0, "maximum": MAX_INDEX}
    version = {"type": "integer", "minimum": 1}
    key = {"type": "string", "pattern": KEY_PATTERN}
    return {
        "KeyWatch": {
            "type": "object",
            "description": "index: the key's version while it exists, its tombstone's "
            "version after a delete or an expiry (never goes back)",
            "required": ["key", "index", "changed", "exists"],
            # the value only while the key exists; a deleted or expired key's index
            # is its tombstone's version
            "oneOf": [
                {
                    "required": ["version", "value"],
                    "properties": {"exists": {"const": True}},
                },
                {
                    "properties": {
                        "exists": {"const": False},
                        "version": False,
                        "value": False,
                        "encoding": False,
                    },
                },
            ],
            "properties": {
                "key": key,
                "index": index,
                "changed": {"type": "boolean"},
                "exists": {"type": "boolean"},
                "version": version,
                "value": {"type": "string"},
                "encoding": {"type": "string", "enum": ["base64"]},
            },
        },
        "PrefixWatch": {
            "type": "object",
            "required": ["prefix", "index", "changed", "keys", "truncated"],
            "properties": {
                "prefix": {"type": "string", "pattern": PREFIX_PATTERN},
                "index": {
                    **index,
                    "description": "the store's version counter when read: any later change "
                    "under the prefix has a higher version",
                },
                "changed": {"type": "boolean"},
                "keys": {
                    "type": "array",
                    "maxItems": MAX_WATCH_KEYS,
                    "items": {
                        "type": "object",
                        "required": ["key", "version"],
                        "properties": {"key": key, "version": version},
                    },
                },
                "truncated": {"type": "boolean"},
            },
        },
    }


def _watch_paths() -> dict:
    index_header = {
        "X-Plab-Index": {
            "description": "The index to pass as ?index= on the next watch",
            "required": True,
            "schema": {"type": "string", "pattern": "^[0-9]+$"},
        }
    }
    index = _query(
        "index",
        {"type": "integer", "minimum": 0, "maximum": MAX_INDEX},
        "answer as soon as the index passes this (default 0)",
    )
    wait = _query(
        "wait",
        {"type": "integer", "minimum": 0, "maximum": MAX_WATCH_WAIT},
        f"seconds to wait for a change, at most {MAX_WATCH_WAIT} (default 60)",
    )
    return {
        "/v1/watch/{key}": {
            "get": _op(
                "Wait until the key's index passes ?index= (a write, delete or expiry), "
                "or ?wait= seconds; then its current state and index",
                {"200": _ok("The key's state and index", _ref("KeyWatch"), index_header)},
                parameters=[KEY, index, wait],
                errors=("400", "401", "403", "429", "503"),
            )
        },
        "/v1/watch": {
            "get": _op(
                "Wait until something under the prefix the caller may see changes past "
                "?index=, or ?wait= seconds; then its keys and versions (at most "
                f"{MAX_WATCH_KEYS:,}; a prefix holding more than PLAB_WATCH_PREFIX_KEYS "
                "keys is refused with 400)",
                {"200": _ok("The prefix's keys and index", _ref("PrefixWatch"), index_header)},
                parameters=[
                    _query(
                        "prefix",
                        {"type": "string", "pattern": PREFIX_PATTERN},
                        "empty: every key the caller is granted",
                    ),
                    index,
                    wait,
                ],
                errors=("400", "401", "403", "429", "503"),
            )
        },
    }


def _kv_paths() -> dict:
    written = {
        "200": _ok("Overwritten", _ref("Written"), ETAG),
        "201": _ok("Created", _ref("Written"), ETAG),
    }
    if_match = {
        "name": "If-Match",
        "in": "header",
        "required": False,
        "schema": {"type": "string"},
        "description": 'write only if the current version is one of these ETags ("*": exists)',
    }
    if_none_match_put = {
        "name": "If-None-Match",
        "in": "header",
        "required": False,
        "schema": {"type": "string", "enum": ["*"]},
        "description": "write only if the key does not exist",
    }
    if_none_match_get = {
        "name": "If-None-Match",
        "in": "header",
        "required": False,
        "schema": {"type": "string"},
        "description": "304 when the current version is one of these ETags",
    }
    raw = {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}
    return {
        "/write/{key}/{value}": {
            "post": _op(
                "Write a value given in the path (at most 4096 bytes after URL-decoding)",
                written,
                parameters=[
                    KEY,
                    _path_param(
                        "value",
                        {"type": "string", "minLength": 1},
                        "UTF-8 text without control characters",
                    ),
                    TTL,
                ],
                errors=(*AUTHED, "413"),
            )
        },
        "/read/{key}": {
            "get": _op(
                "Read a value as JSON (base64 when it is not UTF-8)",
                {"200": _ok("The value", _ref("Read"), ETAG)},
                parameters=[KEY],
            )
        },
        "/v1/kv/{key}": {
            "get": _op(
                "Read the raw value",
                {
                    "200": {"description": "The raw value", "headers": ETAG, "content": raw},
                    "304": {"description": "Not modified", "headers": ETAG},
                },
                parameters=[KEY, if_none_match_get],
            ),
            "head": _op(
                "The raw value's headers",
                {
                    "200": {"description": "Exists", "headers": ETAG},
                    "304": {"description": "Not modified", "headers": ETAG},
                },
                parameters=[KEY, if_none_match_get],
            ),
            "put": _op(
                "Write the raw body; compare-and-set with If-Match / If-None-Match: *",
                written,
                parameters=[KEY, TTL, if_match, if_none_match_put],
                body={"required": False, "content": raw},
                errors=(*AUTHED, "412", "413"),
            ),
            "delete": _op(
                "Delete a key; compare-and-set with If-Match",
                {"204": {"description": "Deleted"}},
                parameters=[KEY, if_match],
                errors=(*AUTHED, "412"),
            ),
        },
        **_batch_paths(),
        **_watch_paths(),
        "/v1/kv": {
            "get": _op(
                "One page of the keys the caller may see",
                {"200": _ok("A page of keys", _ref("KeyPage"))},
                parameters=[
                    _query("prefix", {"type": "string", "pattern": PREFIX_PATTERN}),
                    _query("cursor", {"type": "string"}, "next_cursor of the previous page"),
                    _query("limit", {"type": "integer", "minimum": 1, "maximum": 1000}),
                    _query(
                        "values",
                        {"type": "string", "enum": ["true", "false"]},
                        "true: items with values, the page also bounded by PLAB_LIST_MAX_BYTES",
                    ),
                ],
            )
        },
    }


def _admin_paths() -> dict:
    user = _ref("User")
    with_password = _ref("UserWithPassword")
    json_body = {"application/json": {"schema": _ref("NewUser")}}
    errors = (*AUTHED, "409")

    def user_action(summary: str, answer: str = "The user", schema: dict = user) -> dict:
        return {"post": _op(summary, {"200": _ok(answer, schema)}, parameters=[NAME])}

    return {
        "/admin/users": {
            "post": _op(
                "Create a user; the generated password is shown this once",
                {"201": _ok("Created", with_password)},
                body={"required": True, "content": json_body},
                errors=errors,
            ),
            "get": _op("The users, never their secrets", {"200": _ok("Users", _ref("UserList"))}),
        },
        "/admin/users/review": {
            "get": _op(
                "The access review: every user with role, grants, created, last used, "
                "live token families and flags (admin, wildcard, unused_90_days, disabled)",
                {"200": _ok("The review", _ref("AccessReview"))},
            )
        },
        "/admin/users/{name}": {
            "get": _op(
                "One user, with what their keys hold against their quota",
                {"200": _ok("The user", _ref("UserWithUsage"))},
                parameters=[NAME],
            ),
            "patch": _op(
                "Change a user's role and/or key-prefix grants",
                {"200": _ok("The user", user)},
                parameters=[NAME],
                body={
                    "required": True,
                    "content": {"application/json": {"schema": _ref("GrantChange")}},
                },
            ),
            "delete": _op("Delete a user", {"204": {"description": "Deleted"}}, parameters=[NAME]),
        },
        "/admin/users/{name}/disable": user_action("Disable a user"),
        "/admin/users/{name}/enable": user_action("Enable a user"),
        "/admin/users/{name}/rotate": user_action(
            "Give a user a new generated password", "The user and the new password", with_password
        ),
        "/admin/audit": {
            "get": _op(
                "Audit entries: every chain merged newest first (next_cursor), or one "
                "chain oldest first from since (next_since; since alone: the main chain)",
                {"200": _ok("A page of entries", _ref("AuditPage"))},
                parameters=[
                    _query("chain", {"type": "string", "description": "main, s00 .. s15"}),
                    _query("cursor", {"type": "string"}),
                    _query("since", {"type": "integer", "minimum": 1}),
                    _query("limit", {"type": "integer", "minimum": 1, "maximum": 1000}),
                    _query("actor", {"type": "string"}),
                ],
            )
        },
        "/admin/audit/verify": {
            "post": _op(
                "Verify the audit log: archive, chain and signed checkpoints",
                {
                    "200": _ok("The chain is intact", _ref("AuditVerify")),
                    "409": _ok("The chain is broken", _ref("AuditVerify")),
                },
            )
        },
        "/admin/users/{name}/revoke-tokens": user_action("Revoke every token family of a user"),
        "/admin/tokens": {
            "get": _op(
                "A user's live token families",
                {"200": _ok("Families", _ref("TokenFamilies"))},
                parameters=[
                    {
                        "name": "user",
                        "in": "query",
                        "required": True,
                        "schema": {"type": "string", "pattern": USER_NAME_PATTERN},
                    }
                ],
            )
        },
        "/admin/tokens/{family}/revoke": {
            "post": _op(
                "Revoke one token family",
                {"200": _ok("Revoked", _ref("FamilyRevoked"))},
                parameters=[_path_param("family", {"type": "string"})],
            )
        },
        "/admin/tokens/keys": {
            "get": _op(
                "The ids of the token signing keys in use",
                {"200": _ok("Key ids", _ref("TokenKeys"))},
            )
        },
        "/admin/audit/checkpoint": {
            "post": _op(
                "Sign the audit log's head now (appended to the checkpoint file)",
                {"201": _ok("The signed checkpoint", _ref("AuditCheckpoint"))},
            )
        },
        "/admin/audit/head": {
            "get": _op("The audit chain's head", {"200": _ok("Head", {"type": "object"})})
        },
        "/admin/audit/trim": {
            "post": _op(
                "Archive the oldest audit entries, then drop them from redis, keeping the newest N",
                {"200": _ok("Trimmed", _ref("AuditTrimmed"))},
                body={
                    "required": True,
                    "content": {
                        "application/json": {
                            "schema": {
                                "type": "object",
                                "required": ["keep"],
                                "properties": {"keep": {"type": "integer", "minimum": 1}},
                            }
                        }
                    },
                },
            )
        },
        "/admin/backups": {
            "get": _op("The backups on disk", {"200": _ok("Backups", _ref("BackupList"))}),
            "post": _op(
                "Make an encrypted backup now",
                {"201": _ok("Made", _ref("Backup"))},
            ),
        },
        "/admin/backups/{name}/verify": {
            "post": _op(
                "Decrypt and check a backup",
                {"200": _ok("Intact", _ref("BackupVerified"))},
                parameters=[_path_param("name", {"type": "string"})],
                errors=(*AUTHED, "409"),
            )
        },
        "/admin/check-prod": {
            "get": _op(
                "Production readiness findings",
                {"200": _ok("Findings", _ref("CheckProd"))},
            )
        },
        "/admin/stats": {
            "get": _op("Counts and store health", {"200": _ok("Stats", _ref("Stats"))})
        },
    }


def _token_paths() -> dict:
    pair = _ref("TokenPair")
    return {
        "/auth/token": {
            "post": _op(
                "Exchange Basic credentials for an access and a refresh token",
                {"200": _ok("Tokens", pair)},
                errors=("401", "429", "503"),
            )
        },
        "/auth/refresh": {
            "post": _op(
                "Rotate a refresh token (single use; reuse revokes its family)",
                {"200": _ok("Tokens", pair)},
                body={
                    "required": True,
                    "content": {
                        "application/json": {
                            "schema": {
                                "type": "object",
                                "required": ["refresh_token"],
                                "properties": {"refresh_token": {"type": "string"}},
                            }
                        }
                    },
                },
                public=True,
                errors=("400", "401", "429", "503"),
            )
        },
    }


def build(plane: str) -> dict:
    """The OpenAPI 3.1 document of ``plane`` (``ap`` or ``cp``)."""
    paths = _probe_paths()
    if plane == "cp":
        paths.update({OPS_PREFIX + path: item for path, item in _kv_paths().items()})
        paths.update(_admin_paths())
        paths.update(_token_paths())
        description = (
            "Control plane: the admin API, and the KV routes for operators under /ops (admin role)."
        )
    else:
        paths.update(_kv_paths())
        description = "App plane: the data API (reader / writer roles, key-prefix grants)."
    return {
        "openapi": "3.1.0",
        "info": {"title": f"productionlab {plane}", "version": "1", "description": description},
        "servers": [{"url": "/"}],
        "security": [{"basic": []}, {"bearer": []}],
        "paths": paths,
        "components": {
            "securitySchemes": {
                "basic": {"type": "http", "scheme": "basic"},
                "bearer": {"type": "http", "scheme": "bearer"},
            },
            "headers": {
                "ETag": {"description": "The version, quoted", "schema": {"type": "string"}},
                "RetryAfter": {
                    "description": "Seconds to wait",
                    "required": True,
                    "schema": {"type": "string", "pattern": "^[0-9]+$"},
                },
                "Authenticate": {
                    "description": "The Basic challenge",
                    "required": True,
                    "schema": {"type": "string"},
                },
            },
            "schemas": _schemas(),
        },
    }


def openapi_blueprint() -> Blueprint:
    bp = Blueprint("openapi", __name__)

    @bp.get("/openapi.json")
    def document() -> Response:
        return jsonify(build(services().settings.plane))

    return bp
