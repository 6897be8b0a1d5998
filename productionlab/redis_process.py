"""A redis-server of our own for a short while: the backup drill's scratch redis
(production), and the tests' and benchmarks' throwaway servers.

One launcher for all of them: a free loopback port, its own directory (a fresh
0700 temp dir unless the caller names one), AOF on by default, a random
password by default, the configuration in a 0600 file (never on the command
line, where ``ps`` would show the password). It is ready once it answers PING
and has finished loading its data; stopping it closes the client, ends the
process and removes the temp dir it made.

It imports nothing of the local supervisor: the drill runs in production.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import subprocess  # runs our own redis-server  # nosec B404
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import redis

from productionlab.procutil import find_binary, free_port

HOST = "127.0.0.1"


@dataclass(frozen=True)
class RedisTLSFiles:
    """TLS only (``port 0``), clients must present a certificate from ``ca``; our own
    client presents ``client_cert``/``client_key``."""

    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path

    def client_options(self) -> dict[str, object]:
        """redis-py's options for a client holding our client certificate."""
        return {
            "ssl": True,
            "ssl_ca_certs": str(self.ca),
            "ssl_certfile": str(self.client_cert),
            "ssl_keyfile": str(self.client_key),
            "ssl_cert_reqs": "required",
        }


class RedisProcessError(RuntimeError):
    """redis-server is missing or did not start; the message says which."""


class RedisProcess:
    """A context manager: ``with RedisProcess() as client:`` (a ``redis.Redis``).

    ``password``: True for a random one (the default), False for none, or the
    password itself. ``appendonly``/``appendfsync``: the AOF (on, everysec).
    ``directory``: where redis keeps its files; a given one is left in place on
    stop (its owner removes it), a temp one is removed. ``aof_source``: an AOF
    directory (``appendonly/``) copied in first, so the server loads exactly what
    another redis would load after a crash (a truncated tail is accepted).
    ``config``: further redis.conf directives (name -> value). ``sentinel``: run
    as a Sentinel (no persistence directives; ``config`` holds its ``sentinel``
    lines). ``tls``: serve TLS only, with these files. ``host``: the loopback
    address it binds (another 127.0.0.0/8 address lets a test firewall one
    server off from others). ``username``: our client logs in as this ACL user
    (declared by ``config``'s ``user`` lines) with ``password``, and no
    ``requirepass`` is written (e.g. a sentinel whose default user is off).
    """

    def __init__(
        self,
        *,
        password: bool | str = True,
        username: str | None = None,
        appendonly: bool = True,
        appendfsync: str = "everysec",
        directory: Path | None = None,
        aof_source: Path | None = None,
        config: Mapping[str, str] | None = None,
        sentinel: bool = False,
        tls: RedisTLSFiles | None = None,
        host: str = HOST,
        port: int = 0,
        binary: str | None = None,
        timeout: float = 20.0,
        socket_timeout: float = 10.0,
    ):
        self.binary = binary or find_binary("redis-server")
        if self.binary is None:
            raise RedisProcessError("redis-server is not installed")
        if password is True:
            self.password: str | None = secrets.token_hex(24)
        else:
            self.password = password or None
        self.username = username
        self.appendonly, self.appendfsync = appendonly, appendfsync
        self.aof_source, self.config, self.sentinel = aof_source, dict(config or {}), sentinel
        self.tls = tls
        self.host = host
        self.timeout, self.socket_timeout = timeout, socket_timeout
        self.owns_directory = directory is None
        self.directory = directory or Path(tempfile.mkdtemp(prefix="plab-redis-"))
        self.log_file = self.directory / "redis.log"
        self.aof_dir = self.directory / "appendonly"  # as the stack's redis names it
        self.fixed_port = port
        self.port = port
        self.process: subprocess.Popen | None = None
        self.client: redis.Redis | None = None

    @property
    def url(self) -> str:
        return f"{'rediss' if self.tls else 'redis'}://{self.host}:{self.port}/0"

    def _conf_lines(self) -> list[str]:
        if self.tls is None:
            lines = [f"port {self.port}"]
        else:
            lines = [
                "port 0",
                f"tls-port {self.port}",
                f"tls-cert-file {self.tls.server_cert}",
                f"tls-key-file {self.tls.server_key}",
                f"tls-ca-cert-file {self.tls.ca}",
                "tls-auth-clients yes",
            ]
        lines += [
            f"bind {self.host}",
            f"dir {self.directory}",
            "daemonize no",
            f'logfile "{self.log_file}"',
        ]
        if not self.sentinel:
            lines += ['save ""', f"appendonly {'yes' if self.appendonly else 'no'}"]
            lines += [f"appendfsync {self.appendfsync}", f"appenddirname {self.aof_dir.name}"]
            lines.append("notify-keyspace-events Ex")  # expiries wake watches (watch.py)
        if self.aof_source is not None:
            lines.append("aof-load-truncated yes")
        if self.password and self.username is None:
            lines.append(f"requirepass {self.password}")
        lines += [f"{name} {value}" for name, value in self.config.items()]
        return lines

    def client_options(self) -> dict[str, object]:
        """redis-py's options for another client of this server."""
        options: dict[str, object] = {
            "host": self.host,
            "port": self.port,
            "username": self.username,
            "password": self.password,
            "socket_timeout": self.socket_timeout,
        }
        return {**options, **(self.tls.client_options() if self.tls else {})}

    def start(self) -> redis.Redis:
        self.directory.mkdir(parents=True, exist_ok=True)
        if self.aof_source is not None:
            shutil.rmtree(self.aof_dir, ignore_errors=True)
            shutil.copytree(self.aof_source, self.aof_dir)
        self.port = self.fixed_port or free_port(self.host)
        conf = self.directory / ("sentinel.conf" if self.sentinel else "redis.conf")
        conf.write_text("\n".join(self._conf_lines()) + "\n")
        os.chmod(conf, 0o600)
        argv = [self.binary, str(conf), *(["--sentinel"] if self.sentinel else [])]
        self.process = subprocess.Popen(  # noqa: S603 - our binary, our config  # nosec B603
            argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        self.client = redis.Redis(**self.client_options())
        deadline = time.monotonic() + self.timeout
        while True:
            try:
                if self.client.ping() and not self.client.info("persistence").get("loading"):
                    return self.client
            except redis.RedisError:
                pass
            if self.process.poll() is not None or time.monotonic() > deadline:
                log = self._log_tail()
                self.stop()
                raise RedisProcessError(f"redis-server did not start{log}")
            time.sleep(0.05)

    def _log_tail(self) -> str:
        with contextlib.suppress(OSError):
            tail = self.log_file.read_text(errors="replace").strip().splitlines()[-3:]
            if tail:
                return ": " + " | ".join(tail)
        return ""

    def stop(self) -> None:
        if self.client is not None:
            with contextlib.suppress(Exception):
                self.client.close()
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)
        if self.owns_directory:
            shutil.rmtree(self.directory, ignore_errors=True)

    def __enter__(self) -> redis.Redis:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
