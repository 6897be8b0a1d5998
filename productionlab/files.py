"""Writing a file atomically: the one helper every writer of state files uses
(the edge's htpasswd, secret and key files, the stack file, TLS pairs, audit
archive segments)."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


def write_atomic(
    path: Path,
    body: str | bytes,
    mode: int = 0o600,
    *,
    keep_owner: bool = False,
    dir_mode: int = 0o777,
) -> None:
    """Write ``path`` by rename: a reader sees the old file or the new one, never half.

    The body goes to a temporary file beside ``path`` (created with ``dir_mode``
    if missing), is fsynced and given ``mode``, then renamed over ``path``; the
    temporary file is removed on any failure. ``keep_owner`` (when root) gives
    the new file the owner and group of the file it replaces.
    """
    path.parent.mkdir(parents=True, exist_ok=True, mode=dir_mode)
    data = body.encode() if isinstance(body, str) else body
    descriptor, temp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(descriptor, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(temp, mode)
        if keep_owner and os.geteuid() == 0 and path.exists():
            stat = path.stat()
            os.chown(temp, stat.st_uid, stat.st_gid)
        os.replace(temp, path)
    except BaseException:
        if os.path.exists(temp):
            os.unlink(temp)
        raise
