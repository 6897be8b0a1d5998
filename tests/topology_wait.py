"""Waiting for a multi-node redis topology (Sentinel, Cluster) to settle."""

from __future__ import annotations

import time
from collections.abc import Callable

import redis


def wait_until_ready(problem: Callable[[], str | None], what: str, timeout: float) -> None:
    """Poll ``problem`` (None when ready, else what is still wrong) until it is None;
    fail with the last problem after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    last: str | None = "not asked yet"
    while time.monotonic() < deadline:
        try:
            last = problem()
        except redis.RedisError as exc:
            last = f"{type(exc).__name__}: {exc}"
        if last is None:
            return
        time.sleep(0.1)
    raise AssertionError(f"{what} never got ready: {last}")
