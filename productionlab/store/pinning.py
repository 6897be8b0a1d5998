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

Two rules keep a pin from outliving its use:

- every pin starts from a connection the pool hands out (a pin left over by a
  refused write is given back first), and a pinned connection that has dropped
  is given back to the pool before the next command. redis-py reconnects a
  dropped connection to its old address when it is used directly, and only
  the pool's hand-out asks Sentinel where the primary is now: a pin kept across
  a failover would keep talking to the demoted primary;
- ``wait`` sends WAIT/WAITAOF on the pinned connection itself and never
  reconnects: on a new connection the count would mean nothing. A dropped
  connection makes the write's state unknown (``StaleConnection``).

Not for ``single_connection_client=True`` (which already holds one connection).
"""

from __future__ import annotations

import threading
from typing import Any

import redis


class StaleConnection(redis.ConnectionError):
    """The write's pinned connection dropped before its WAIT: its state is unknown."""


class PinnableRedis(redis.Redis):
    def _pins(self) -> threading.local:
        pins = self.__dict__.get("_pin_local")
        if pins is None:
            pins = self.__dict__.setdefault("_pin_local", threading.local())
        return pins

    @property  # type: ignore[override]
    def connection(self) -> Any:
        pins = self._pins()
        conn = getattr(pins, "connection", None)
        if conn is not None and not conn.is_connected:
            pins.connection = None  # dropped: the pool reconnects it where the primary is
            self.connection_pool.release(conn)
            return None
        return conn

    @connection.setter
    def connection(self, value: Any) -> None:
        self._pins().connection = value

    @property
    def pinned(self) -> bool:
        return getattr(self._pins(), "connection", None) is not None

    def pin(self) -> None:
        """Hold a connection from the pool for this thread's commands until ``unpin``."""
        self.unpin()
        self._pins().connection = self.connection_pool.get_connection()

    def unpin(self) -> None:
        pins = self._pins()
        conn = getattr(pins, "connection", None)
        if conn is not None:
            pins.connection = None
            self.connection_pool.release(conn)

    def wait(self, *args: Any) -> Any:
        """``WAIT``/``WAITAOF`` (``args``) on the pinned connection, never on another."""
        conn = getattr(self._pins(), "connection", None)
        if conn is None or not conn.is_connected:
            raise StaleConnection("the write's connection dropped before its WAIT")
        try:
            conn.send_command(*args, check_health=False)
            return conn.read_response()
        except BaseException:
            conn.disconnect()
            raise
