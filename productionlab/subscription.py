"""A redis pub/sub subscription followed by a thread of its own, resubscribing
after any failure: the user events (users.py) and the KV change messages
(watch.py) are both followed this way.

redis-py reconnects a dropped pub/sub connection and resubscribes silently
inside ``get_message``; messages published while it was away are lost. So the
subscribe confirmations are handed to ``handle`` like any message (type
``subscribe``): each one means "messages may have been missed". ``started``
runs once ``SUBSCRIBE`` is sent, ``lost`` whenever the connection is given up
(an error, or the stop); the next attempt follows half a second later.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Callable

import redis

from productionlab.store.connection import REDIS_FAULTS

log = logging.getLogger("productionlab.subscription")


def _nothing() -> None:
    return None


class Subscription:
    def __init__(
        self,
        client: redis.Redis,
        channels: tuple[str, ...],
        handle: Callable[[dict], None],
        *,
        name: str,
        started: Callable[[], None] = _nothing,
        lost: Callable[[], None] = _nothing,
    ):
        self.client = client
        self.channels = channels
        self.handle = handle
        self.name = name
        self.started = started
        self.lost = lost
        self.thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._lock = threading.Lock()

    def start(self) -> None:
        """Start following (once; later calls do nothing)."""
        with self._lock:
            if self.thread is not None:
                return
            self.thread = threading.Thread(target=self._follow, name=self.name, daemon=True)
            self.thread.start()

    def stop(self) -> None:
        self._stop.set()

    def join(self, timeout: float) -> None:
        if self.thread is not None:
            self.thread.join(timeout)

    def _follow(self) -> None:
        while not self._stop.is_set():
            pubsub = None
            try:
                # Inside the try: a cluster client that has not found its nodes yet
                # raises here (store/connection.py), and this thread must live on.
                pubsub = self.client.pubsub(ignore_subscribe_messages=False)
                pubsub.subscribe(*self.channels)
                self.started()
                while not self._stop.is_set():
                    message = pubsub.get_message(timeout=1.0)
                    if message is not None:
                        self.handle(message)
            except Exception as exc:  # noqa: BLE001 - any failure: give up, resubscribe
                log.warning(
                    "%s: subscription lost (%s); resubscribing", self.name, type(exc).__name__
                )
            finally:
                self.lost()
                if pubsub is not None:
                    with contextlib.suppress(*REDIS_FAULTS):
                        pubsub.close()
            self._stop.wait(0.5)
