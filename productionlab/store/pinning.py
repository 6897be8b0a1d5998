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
  refused write is given back first), and a Sentinel-managed connection that
  dropped reconnects to wherever Sentinel says the primary is now
  (``SentinelConnection``): redis-py reconnects a connection it uses directly
  to its old address, so a pin, or any command retried after a failover,
  would keep talking to the demoted primary;
- ``wait`` sends WAIT/WAITAOF on the pinned connection itself and never
  reconnects: on a new connection the count would mean nothing. A dropped
  connection makes the write's state unknown (``StaleConnection``).

A thread may also keep a connection of its own (``execute_held``): the KV
core's one script per request then costs no pool hand-out (redis-py's
``get_connection`` polls the socket and takes the pool's lock: ~25 us of CPU
per request, half the client's cost, bench/levers.md). The command still runs
through ``execute_command`` on that connection, so its timeouts, retries,
reconnects (to wherever Sentinel says the primary is) and health checks are
redis-py's own. A pinned write uses its pin, never the kept connection.

Not for ``single_connection_client=True`` (which already holds one connection).
"""

from __future__ import annotations

import os
import threading
import weakref
from typing import Any

import redis
from redis.sentinel import SentinelManagedConnection, SentinelManagedSSLConnection


class StaleConnection(redis.ConnectionError):
    """The write's pinned connection dropped before its WAIT: its state is unknown."""


class _Rediscovering:
    """Reconnect through ``connect`` (which asks Sentinel for the primary), not
    through the base class's reconnect to the last address."""

    _sock: Any

    def send_packed_command(self, command: Any, check_health: bool = True) -> None:
        if not self._sock:
            self.connect()  # type: ignore[attr-defined]
        super().send_packed_command(command, check_health)  # type: ignore[misc]


class SentinelConnection(_Rediscovering, SentinelManagedConnection):
    pass


class SentinelSSLConnection(_Rediscovering, SentinelManagedSSLConnection):
    pass


def _give_back(pool: weakref.ref, connection: weakref.ref) -> None:
    """A thread that kept a connection is gone: the pool has it back (if both live)."""
    pool_now, connection_now = pool(), connection()
    if pool_now is not None and connection_now is not None:
        pool_now.release(connection_now)


class PinnableRedis(redis.Redis):
    def _pins(self) -> threading.local:
        pins = self.__dict__.get("_pin_local")
        if pins is None:
            pins = self.__dict__.setdefault("_pin_local", threading.local())
        return pins

    @property  # type: ignore[override]
    def connection(self) -> Any:
        # Read without side effects: redis-py reads it again when a command ends.
        return getattr(self._pins(), "connection", None)

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

    def _kept(self) -> Any:
        """This thread's kept connection (taken from the pool at its first use)."""
        pins = self._pins()
        kept = getattr(pins, "kept", None)
        if kept is None or kept.pid != os.getpid():
            kept = pins.kept = self.connection_pool.get_connection()
            gone = weakref.finalize(
                threading.current_thread(),
                _give_back,
                weakref.ref(self.connection_pool),
                weakref.ref(kept),
            )
            gone.atexit = False
        return kept

    def execute_held(self, *args: Any) -> Any:
        """``execute_command`` on this thread's kept connection (the pin, when pinned).

        The connection is taken from the pool at the thread's first call and
        given back when the thread object goes away; the pool has one spare per
        ordinary Waitress thread for it (``Settings.redis_pool_size``)."""
        if self.pinned:
            return self.execute_command(*args)
        pins = self._pins()
        pins.connection = self._kept()
        try:
            return self.execute_command(*args)
        finally:
            pins.connection = None

    def pipeline_held(self, commands: list[tuple]) -> list:
        """``commands`` sent together in one round trip on this thread's kept
        connection (the pin, when pinned), without a pipeline object: their
        replies in order, an error reply as its exception. Retried whole on a
        connection error, with the connection's own retry policy, as
        ``execute_command`` retries one command (virtual shards: a read's limit
        ticket and the shard read, shardkv.py)."""
        conn = getattr(self._pins(), "connection", None) or self._kept()

        def attempt() -> list:
            conn.send_packed_command(conn.pack_commands(commands))
            replies: list = []
            for args in commands:
                try:
                    replies.append(self.parse_response(conn, args[0]))
                except redis.ResponseError as error:
                    replies.append(error)
            return replies

        return conn.retry.call_with_retry(attempt, lambda error: conn.disconnect())

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
