"""Schemathesis hooks for tests/test_openapi.py (loaded via SCHEMATHESIS_HOOKS).

The fuzzer authenticates as ``admin`` and reuses names it has seen in
responses, so left alone it soon rotates, demotes or disables its own account
and spends the rest of the run on 401s. Every other account is fair game.
"""

from __future__ import annotations

import schemathesis

PROTECTED = {"admin"}


@schemathesis.hook
def filter_path_parameters(ctx, path_parameters) -> bool:
    return not (path_parameters and path_parameters.get("name") in PROTECTED)
