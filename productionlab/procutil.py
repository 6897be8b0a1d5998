"""Two small process helpers shared by the local supervisor and the scratch redis
(``redis_process.py``): where a binary is, and a free loopback port."""

from __future__ import annotations

import shutil
import socket
from pathlib import Path


def find_binary(name: str) -> str | None:
    return shutil.which(name) or next(
        (
            str(p)
            for d in ("/usr/sbin", "/usr/bin", "/usr/local/sbin", "/usr/local/bin")
            if (p := Path(d) / name).exists()
        ),
        None,
    )


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]
