"""Schemathesis hooks for tests/test_openapi.py (loaded via SCHEMATHESIS_HOOKS).

The fuzzer authenticates as ``admin`` and reuses names it has seen in
responses, so left alone it soon rotates, demotes or disables its own account
and spends the rest of the run on 401s. Every other account is fair game.

The watch routes block for up to ``wait`` seconds (default 60, at most 300),
longer than the run's request timeout. For the fuzz run only, ``wait`` is
bounded to 0..1 second just before the request is sent: a generated 0 or 1 is
sent as it is (so the wait-then-answer path is still reached), any other wait
the route could accept, and a missing one (which means 60), becomes 0. Mapping
them all to 1 instead spent half the app plane's time budget in parked
watches. A ``wait`` the route must refuse (negative, over 300, not a number)
is sent as generated: it must still get a documented 400 with a JSON error.
"""

from __future__ import annotations

from typing import Any

import schemathesis

from productionlab.contract import MAX_WATCH_WAIT

PROTECTED = {"admin"}
FUZZ_MAX_WAIT = 1  # seconds a fuzzed watch may block


@schemathesis.hook
def filter_path_parameters(ctx, path_parameters) -> bool:
    return not (path_parameters and path_parameters.get("name") in PROTECTED)


def is_watch(path: str) -> bool:
    return path.endswith(("/v1/watch", "/v1/watch/{key}"))


def bounded_wait(value: Any) -> Any:
    """``value`` bounded to 0..1 when a lenient parser could read it as a wait of
    0..300 seconds (``int()`` also takes spaces, ``_`` and non-ASCII digits);
    otherwise unchanged."""
    if isinstance(value, list):
        return [bounded_wait(item) for item in value]
    if isinstance(value, bool) or not isinstance(value, int | str):
        return value
    try:
        seconds = int(value)
    except ValueError:
        return value
    if 0 <= seconds <= MAX_WATCH_WAIT:
        return str(seconds) if seconds <= FUZZ_MAX_WAIT else "0"
    return value


@schemathesis.hook
def before_call(ctx, case, kwargs) -> None:
    if not is_watch(case.operation.path):
        return
    query = dict(case.query or {})
    query["wait"] = bounded_wait(query["wait"]) if "wait" in query else "0"
    case.query = query
