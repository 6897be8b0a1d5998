"""``GET /v1/watch/<key>`` and ``GET /v1/watch?prefix=``: blocking queries over
the KV store (see :mod:`productionlab.watch`), one blueprint served by both
planes (the control plane mounts it under ``/ops``, as the KV routes).

A watch answers 200 as soon as its key, or a key under its granted part of
the prefix, changes past ``index``, or after ``wait`` seconds with the state
as it is; either way with the index to pass next (in the body and in
``X-Plab-Index``). It is charged one request of the caller's per-user limit.
"""

from __future__ import annotations

from flask import Blueprint, Response

from productionlab.auth import Authenticator, current_user, require_grant
from productionlab.contract import DEFAULT_WATCH_WAIT, MAX_WATCH_KEYS, MAX_WATCH_WAIT
from productionlab.errors import NotGranted
from productionlab.kv import effective_prefixes
from productionlab.kv_json import encoded, json_response
from productionlab.kv_routes import int_arg, parse_key, parse_prefix, raw_tail, require_layout
from productionlab.services import services
from productionlab.watch import KeyState, PrefixState, Waiter, wait_for

INDEX_HEADER = "X-Plab-Index"
MAX_INDEX = 2**53  # versions are redis integers kept exact in Lua's doubles


def watch_blueprint(auth: Authenticator, read_role: str, url_prefix: str = "") -> Blueprint:
    bp = Blueprint("watch", __name__, url_prefix=url_prefix or None)
    bp.before_request(require_layout)

    @bp.get("/v1/watch/")
    @bp.get("/v1/watch/<tail:_rest>")
    @auth.require(read_role)
    def watch_key(_rest: str = "") -> Response:
        key = parse_key(raw_tail(url_prefix + "/v1/watch/"))
        index = int_arg("index", 0, 0, MAX_INDEX)
        wait = int_arg("wait", DEFAULT_WATCH_WAIT, 0, MAX_WATCH_WAIT)
        require_grant(key)
        watches = services().watches

        def read() -> tuple[bool, KeyState]:
            state = watches.store.key_state(key)
            return state.index > index, state

        with watches.slots.held():
            changed, state = wait_for(watches.feed, Waiter(index, key=key), read, wait)
        body: dict = {"key": key, "index": state.index, "changed": changed}
        body["exists"] = state.exists
        if state.exists:
            body.update(version=state.version, **encoded(state.value))
        return json_response(body, headers={INDEX_HEADER: str(state.index)})

    @bp.get("/v1/watch")
    @auth.require(read_role)
    def watch_prefix() -> Response:
        prefix = parse_prefix()
        index = int_arg("index", 0, 0, MAX_INDEX)
        wait = int_arg("wait", DEFAULT_WATCH_WAIT, 0, MAX_WATCH_WAIT)
        prefixes = effective_prefixes(current_user().grants, prefix)
        if not prefixes:
            raise NotGranted("your grants cover no key under this prefix")
        watches = services().watches

        def read() -> tuple[bool, PrefixState]:
            state = watches.store.prefix_state(prefixes, index)
            return state.newest > index, state

        waiter = Waiter(index, prefixes=tuple(prefixes))
        with watches.slots.held():
            changed, state = wait_for(watches.feed, waiter, read, wait)
        keys = [{"key": k, "version": v} for k, v in state.keys[:MAX_WATCH_KEYS]]
        body = {
            "prefix": prefix,
            "index": state.index,
            "changed": changed,
            "keys": keys,
            "truncated": len(state.keys) > MAX_WATCH_KEYS,
        }
        return json_response(body, headers={INDEX_HEADER: str(state.index)})

    return bp
