"""``POST /v1/txn`` and ``POST /v1/bulk``: parse the body, check every key
against the caller's role and grants before anything runs, call
:mod:`productionlab.batch`, render one result per operation.

A 403 names the index of the first operation the caller may not run, never
its key, so a refused request tells nothing about keys outside the grants.
"""

from __future__ import annotations

import base64
import binascii
import json
from functools import wraps

from flask import Blueprint, Response, g, request

from productionlab.auth import actor, current_user
from productionlab.batch import (
    CONDITIONS,
    WRITES,
    ConditionFailed,
    Op,
    OpResult,
    TxnQuotaExceeded,
)
from productionlab.contract import KEY_RE, KEY_RULE, MAX_BULK_ITEMS, MAX_TTL, MAX_TXN_OPS
from productionlab.errors import (
    InvalidKey,
    InvalidValue,
    MalformedRequest,
    NotGranted,
    QuotaExceeded,
)
from productionlab.kv_json import encoded, json_response
from productionlab.ratelimit import rides_on_store, take_ticket
from productionlab.services import services
from productionlab.shardkv import ShardedKV
from productionlab.store.layout import shard_for

TXN_KINDS = frozenset({"get", *WRITES, *CONDITIONS})
BULK_KINDS = frozenset({"get", *WRITES})


def parse_ops(field: str, kinds: frozenset[str], most: int) -> list[Op]:
    """The body's ``field`` list as operations; 400 on anything malformed."""
    try:
        body = json.loads(request.get_data(cache=False) or b"null")
    except (ValueError, UnicodeDecodeError) as exc:
        raise MalformedRequest("the body is not JSON") from exc
    if not isinstance(body, dict) or set(body) != {field}:
        raise MalformedRequest(f'the body is {{"{field}": [...]}}')
    raw_ops = body[field]
    if not isinstance(raw_ops, list) or not raw_ops:
        raise MalformedRequest(f"{field} is a non-empty list")
    if len(raw_ops) > most:
        raise MalformedRequest(f"{field} holds at most {most} operations")
    return [parse_op(i, raw, kinds) for i, raw in enumerate(raw_ops)]


def parse_op(index: int, raw: object, kinds: frozenset[str]) -> Op:
    where = f"operation {index}"
    if not isinstance(raw, dict):
        raise MalformedRequest(f"{where} is an object")
    kind = raw.get("op")
    if kind not in kinds:
        raise MalformedRequest(f"{where}: op is one of {', '.join(sorted(kinds))}")
    allowed = {"op", "key"}
    if kind == "put":
        allowed |= {"value", "encoding", "ttl"}
    if kind == "version_equals":
        allowed |= {"version"}
    if not set(raw) <= allowed:
        raise MalformedRequest(f"{where}: unknown fields {sorted(set(raw) - allowed)}")
    key = raw.get("key")
    if not isinstance(key, str) or not KEY_RE.match(key):
        raise InvalidKey(f"{where}: {KEY_RULE}")
    if kind == "put":
        return Op(kind, key, parse_value(where, raw), ttl=parse_ttl(where, raw.get("ttl")))
    if kind == "version_equals":
        version = raw.get("version")
        if isinstance(version, bool) or not isinstance(version, int) or version < 1:
            raise MalformedRequest(f"{where}: version is a whole number from 1")
        return Op(kind, key, version=version)
    return Op(kind, key)


def parse_value(where: str, raw: dict) -> bytes:
    value, encoding = raw.get("value"), raw.get("encoding", "utf-8")
    if not isinstance(value, str):
        raise InvalidValue(f"{where}: value is a string")
    if encoding == "utf-8":
        try:
            return value.encode("utf-8")
        except UnicodeEncodeError as exc:  # lone surrogates
            raise InvalidValue(f"{where}: value is not valid UTF-8") from exc
    if encoding == "base64":
        try:
            return base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise InvalidValue(f"{where}: value is not valid base64") from exc
    raise InvalidValue(f'{where}: encoding is "utf-8" or "base64"')


def parse_ttl(where: str, ttl: object) -> int | None:
    if ttl is None:
        return None
    if isinstance(ttl, bool) or not isinstance(ttl, int) or not 1 <= ttl <= MAX_TTL:
        raise MalformedRequest(f"{where}: ttl is a whole number of seconds from 1 to {MAX_TTL}")
    return ttl


def authorize(ops: list[Op], write_role: str) -> None:
    """Every operation's role and grant, before anything runs; 403 names an index only."""
    user = current_user()
    for index, op in enumerate(ops):
        if op.kind in WRITES and write_role not in user.roles:
            raise NotGranted(f"operation {index}: writing needs the {write_role} role")
        if not user.covers(op.key):
            raise NotGranted(f"operation {index}: your grants do not cover its key")


def render(result: OpResult) -> dict:
    body: dict = {"op": result.op.kind, "key": result.op.key, "outcome": result.outcome}
    if result.version is not None:
        body["version"] = result.version
    if result.value is not None:
        body.update(encoded(result.value))
    return body


def with_values(
    kv: ShardedKV, keys: list[str], last: str | None, max_bytes: int
) -> tuple[list[dict], str | None]:
    """The page's items with their values, cut where the values pass ``max_bytes``
    (one item at least, so a page always moves on); the cursor follows the cut.
    A key deleted since it was listed is left out."""
    pipe = kv.client.pipeline(transaction=False)
    for key in keys:
        pipe.hmget(shard_for(key).item(key), "v", "ver")
    items: list[dict] = []
    total = 0
    for index, (key, (value, version)) in enumerate(zip(keys, pipe.execute(), strict=True)):
        if version is None:
            continue
        value = value or b""
        if items and total + len(value) > max_bytes:
            return items, keys[index - 1]
        total += len(value)
        items.append({"key": key, **encoded(value), "version": int(version)})
    return items, last


def register(bp: Blueprint, auth, read_role: str, write_role: str) -> None:
    """Add the transaction and bulk routes to the KV blueprint (both planes)."""

    def batch_route(path: str, field: str, kinds: frozenset[str], most: int):
        """``POST path`` taking the body's ``field`` list of operations, parsed and
        authorized (reads: ``read_role``; writes: ``write_role``)."""

        def decorate(view):
            @wraps(view)
            def parsed() -> Response:
                ops = parse_ops(field, kinds, most)
                authorize(ops, write_role)
                return view(ops)

            return bp.post(path)(auth.require(read_role)(rides_on_store(parsed)))

        return decorate

    @batch_route("/v1/txn", "ops", TXN_KINDS, MAX_TXN_OPS)
    def txn(ops: list[Op]) -> Response:
        wired = services()
        try:
            results = wired.batches.run(ops, actor(), atomic=True, limit=take_ticket())
        except TxnQuotaExceeded as over:
            quota = wired.kv.quota
            raise QuotaExceeded(
                f"operation {over.index} would take you past your quota of {quota.max_keys} "
                f"keys and {quota.max_bytes} bytes (you use {over.keys} keys and {over.bytes} "
                "bytes); nothing was applied"
            ) from None
        except ConditionFailed as failed:
            return json_response(
                {
                    "error": {
                        "code": "condition_failed",  # contract.REFINED_CODES
                        "message": f"operation {failed.index} ({ops[failed.index].kind}) "
                        "did not hold; nothing was applied",
                    },
                    "failed_index": failed.index,
                    "current_version": failed.current,
                    "request_id": g.get("request_id", ""),
                },
                409,
            )
        return json_response({"results": [render(r) for r in results]})

    @batch_route("/v1/bulk", "items", BULK_KINDS, MAX_BULK_ITEMS)
    def bulk(ops: list[Op]) -> Response:
        results = services().batches.run(ops, actor(), atomic=False, limit=take_ticket())
        return json_response({"results": [render(r) for r in results]})
