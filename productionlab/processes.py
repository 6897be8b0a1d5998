"""The processes of the local stack: one supervised component (a program and the
whole process group it leads), and what the supervisor asks the host about
binaries, ports and process groups."""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import signal
import socket
import subprocess  # the local stack runs its own processes  # nosec B404
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

# Re-exported: the supervisor and the tests import them from here.
from productionlab.procutil import find_binary as find_binary
from productionlab.procutil import free_port as free_port

if TYPE_CHECKING:
    from productionlab.accounts import Account

PR_SET_PDEATHSIG = 1


def die_with_parent() -> None:
    """Children get SIGTERM if the supervisor dies, so no process is left behind.

    The kernel clears this on a change of user id, so a process that drops its
    privileges itself (the planes) calls it again afterwards.
    """
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


_die_with_parent = die_with_parent


def port_free(host: str, port: int) -> bool:
    """True when nothing listens on host:port (a bind the way servers bind succeeds)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                return False
            raise
        return True


def process_group_members(pgid: int) -> list[int]:
    """Live (not zombie) processes of a process group, from /proc."""
    members = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] not in ("Z", "X"):
            members.append(int(entry.name))
    return members


@dataclass
class Component:
    """One supervised program and the whole process tree it starts.

    Each component leads a session (and so a process group) of its own; stops and
    restarts signal the group, so children the leader leaves behind (nginx's
    workers after its master died, a redis rewrite child) go with it.
    """

    name: str
    argv: list[str]
    env: dict[str, str]
    log_path: Path
    restart: bool
    process: subprocess.Popen | None = None
    restarts: int = 0
    stop_signal: int = signal.SIGTERM
    ports: tuple[int, ...] = ()
    bind: str = "127.0.0.1"
    account: Account | None = None
    pgid: int | None = None
    pending_restart: bool = False

    def start(self) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        drop: dict[str, object] = {}
        if self.account is not None:
            drop = {"user": self.account.uid, "group": self.account.gid, "extra_groups": []}
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(  # noqa: S603 - argv from our config  # nosec B603
                self.argv,
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
                preexec_fn=_die_with_parent,
                **drop,  # type: ignore[arg-type]
            )
        self.pgid = self.process.pid

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    @property
    def exited(self) -> bool:
        """Started, and its leader has exited since (on its own or killed): not
        the same as not ``alive``, which a component never started is too."""
        return self.process is not None and self.process.poll() is not None

    def members(self) -> list[int]:
        """Live processes of this component's group (the leader may be gone)."""
        return [] if self.pgid is None else process_group_members(self.pgid)

    def signal(self, signum: int) -> None:
        """Signal the whole process group."""
        if self.pgid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.pgid, signum)

    def _wait_gone(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while True:
            if self.process is not None:
                self.process.poll()  # reap the leader
            if not self.members():
                return True
            if time.monotonic() > deadline:
                return False
            time.sleep(0.05)

    def held_ports(self) -> list[int]:
        return [p for p in self.ports if not port_free(self.bind, p)]

    def wait_ports_free(self, timeout: float) -> list[int]:
        """Wait until none of the component's ports is held; return those still held."""
        deadline = time.monotonic() + timeout
        while (held := self.held_ports()) and time.monotonic() < deadline:
            time.sleep(0.05)
        return held

    def stop(self, timeout: float = 10.0, signum: int | None = None) -> None:
        """Stop the whole group: its stop signal, then SIGKILL; reap; ports free."""
        if self.pgid is None:
            self.process = None
            return
        self.signal(self.stop_signal if signum is None else signum)
        if not self._wait_gone(timeout):
            self.signal(signal.SIGKILL)
            self._wait_gone(10.0)
        if self.process is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(5)
        self.process = None
        self.pgid = None
        self.wait_ports_free(10.0)
