"""A redis client whose current thread can hold one connection for a while.

``WAIT`` and ``WAITAOF`` wait for what *their own connection* has written (redis
remembers each connection's last replication offset). Through a pool, the write
script and the ``WAIT`` after it may travel on two different connections; a
connection that has written nothing waits for nothing and answers at once with
every replica, so the check would prove nothing. ``Durability`` therefore pins a
connection to the writing thread from ``before_write`` to ``after_write``: the
script and the ``WAIT`` then share it. Unpinned, the client behaves exactly as
``redis.Redis`` (redis-py reads ``self.connection`` to choose between its single
connection and the pool; here that attribute is per thread).

Not for ``single_connection_client=True`` (which already holds one connection).
"""

from __future__ import annotations

import threading
from typing import Any

import redis


class PinnableRedis(redis.Redis):
    def _pins(self) -> threading.local:
        pins = self.__dict__.get("_pin_local")
        if pins is None:
            pins = self.__dict__.setdefault("_pin_local", threading.local())
        return pins

    @property  # type: ignore[override]
    def connection(self) -> Any:
        return getattr(self._pins(), "connection", None)

    @connection.setter
    def connection(self, value: Any) -> None:
        self._pins().connection = value

    @property
    def pinned(self) -> bool:
        return self.connection is not None

    def pin(self) -> None:
        """Hold one pool connection for this thread's commands until ``unpin``
        (a pin already held, e.g. after a refused write, is kept)."""
        if self.connection is None:
            self.connection = self.connection_pool.get_connection()

    def unpin(self) -> None:
        conn = self.connection
        if conn is not None:
            self.connection = None
            self.connection_pool.release(conn)
