"""The credential verification cache: successful password verifications kept in
memory for a short time, so argon2id is not paid on every request.

Entries are keyed by an HMAC of the credential. The user store (users.py)
turns the cache on only while its pub/sub subscription to user changes is up,
and clears it on every change and every (re)subscription, so a changed or
disabled user is never served from it.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import threading
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from productionlab.users import User


class VerificationCache:
    """Successful verifications, keyed by HMAC(secret, name NUL password).

    The HMAC means a memory dump does not reveal reusable credentials, and
    the dict lookup never compares secrets directly.
    """

    def __init__(self, secret: bytes, ttl: float, max_entries: int = 10_000):
        self._secret = secret
        self._ttl = ttl
        self._max = max_entries
        self._entries: dict[bytes, tuple[float, User]] = {}
        self._lock = threading.Lock()
        self._flights: dict[bytes, threading.Lock] = {}
        self.enabled = False
        self.epoch = 0

    @contextlib.contextmanager
    def single_flight(self, name: str, password: str) -> Iterator[None]:
        """One slow verification per credential at a time in this process.

        When a hot credential's entry expires, every thread that meets it would
        otherwise run argon2id at once (19 MiB each): the first verifies, the
        others wait and then find its result in the cache.
        """
        key = self._key(name, password)
        with self._lock:
            if len(self._flights) >= self._max:
                self._flights.clear()
            lock = self._flights.setdefault(key, threading.Lock())
        with lock:
            yield

    def _key(self, name: str, password: str) -> bytes:
        return hmac.new(self._secret, f"{name}\0{password}".encode(), hashlib.sha256).digest()

    def get(self, name: str, password: str) -> User | None:
        if not self.enabled or self._ttl <= 0:
            return None
        key = self._key(name, password)
        entry = self._entries.get(key)
        if entry is None:
            return None
        expires, user = entry
        if expires < time.monotonic():
            self._entries.pop(key, None)
            return None
        return user

    def put(self, name: str, password: str, user: User, epoch: int | None = None) -> None:
        """Cache a verification that began at ``epoch``; a clear since then wins,
        so a user read just before a change is never cached after it."""
        if not self.enabled or self._ttl <= 0:
            return
        with self._lock:
            if epoch is not None and epoch != self.epoch:
                return
            if len(self._entries) >= self._max:
                self._entries.clear()
            self._entries[self._key(name, password)] = (time.monotonic() + self._ttl, user)

    def clear(self) -> None:
        with self._lock:
            self.epoch += 1
            self._entries.clear()
