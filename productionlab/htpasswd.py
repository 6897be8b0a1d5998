"""The edge's htpasswd: the hash nginx checks Basic credentials against, and
the file the control plane renders from the user store.

The edge (nginx) checks basic auth per request against a salted SHA-1
(``{SSHA}``). That hash is fast on purpose: the passwords are generated with
256 bits of entropy, so a fast hash cannot be brute-forced, while a slow one
at the edge would divide throughput by ~100.
"""

from __future__ import annotations

import base64
import hashlib
import os
import threading
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING

from productionlab.files import write_atomic

if TYPE_CHECKING:
    from productionlab.users import User


def edge_hash(password: str) -> str:
    """nginx ``{SSHA}``: base64(sha1(password + salt) + salt)."""
    salt = os.urandom(16)
    digest = hashlib.sha1(password.encode() + salt).digest()  # noqa: S324 - see module docstring  # nosec B324
    return "{SSHA}" + base64.b64encode(digest + salt).decode()


def htpasswd_body(users: Iterable[User]) -> str:
    """One ``name:{SSHA}...`` line per enabled user that has an edge hash."""
    return "".join(f"{u.name}:{u.edge_hash}\n" for u in users if not u.disabled and u.edge_hash)


class HtpasswdFile:
    """The rendered file, written atomically (temp file, fsync, rename)."""

    def __init__(self, path: Path):
        self.path = path
        self._lock = threading.Lock()

    def render(self, read_users: Callable[[], Iterable[User]]) -> None:
        # Read and write under one lock: the last render to start reads the newest
        # users, so a slower render of older state can never land after it.
        with self._lock:
            write_atomic(self.path, htpasswd_body(read_users()), mode=0o640)
