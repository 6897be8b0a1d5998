"""Helpers for the supervisor tests: `productionlab run` as a subprocess, copies of
the checkout, and what /proc says about the processes and ports a stack owns."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import requests

from productionlab.supervisor import StackConfig, Supervisor, free_port, port_free
from tests.http_client import new_session

REPO = Path(__file__).resolve().parent.parent


def copy_checkout(destination: Path) -> Path:
    """The parts of the checkout `python -m productionlab run` needs, as a user's clone has."""
    destination.mkdir(parents=True, exist_ok=True)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for name in ("productionlab", "nginx"):
        shutil.copytree(REPO / name, destination / name, ignore=ignore)
    shutil.copy2(REPO / "pyproject.toml", destination / "pyproject.toml")
    return destination


def port_env(state: Path | None = None, **extra: str) -> dict[str, str]:
    """Free ports for every listener (one app-plane process), like a user setting PLAB_*."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PLAB_")}
    env.update(
        {
            "PLAB_AP_WORKERS": "1",
            **{f"PLAB_{name}_PORT": str(free_port()) for name in ("HTTPS", "HTTP", "CP", "AP")},
            "PLAB_REDIS_PORT": str(free_port()),
        }
    )
    if state is not None:
        env["PLAB_STATE_DIR"] = str(state)
    env.update(extra)
    return env


def ports_of(env: dict[str, str]) -> list[int]:
    return [int(env[f"PLAB_{n}_PORT"]) for n in ("HTTPS", "HTTP", "CP", "AP", "REDIS")]


def process_status(pid: int) -> dict[str, str]:
    status = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, value = line.partition(":")
        status[name] = value.strip()
    return status


def uid_of(pid: int) -> int:
    """The real uid from /proc/<pid>/status (its Uid line: real, effective, saved, fs)."""
    uids = {int(u) for u in process_status(pid)["Uid"].split()}
    assert len(uids) == 1, f"{pid} has mixed uids {uids}"
    return uids.pop()


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_text().replace("\0", " ").strip()
    except OSError:
        return ""


def children_of(pid: int, zombies: bool = False) -> list[int]:
    """The children of ``pid`` from /proc (exited, unreaped ones too with ``zombies``)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid and (zombies or fields[0] != "Z"):
                found.append(int(entry.name))
    return found


def processes_mentioning(text: str) -> list[int]:
    """Live processes whose command line or cwd names ``text`` (a state dir)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != os.getpid():
            try:
                state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
            except OSError:
                continue
            if state != "Z" and text in cmdline(int(entry.name)):
                found.append(int(entry.name))
    return found


def wait_until(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out after {timeout}s waiting for {what}"
        time.sleep(0.1)


@dataclass
class RunProcess:
    """`python -m productionlab run` in a subprocess, the way `make run` starts it."""

    env: dict[str, str]
    cwd: Path
    argv_prefix: list[str] = field(default_factory=list)
    python: str = sys.executable
    process: subprocess.Popen | None = None

    def start(self) -> RunProcess:
        self.process = subprocess.Popen(
            [*self.argv_prefix, self.python, "-m", "productionlab", "run"],
            env=self.env,
            cwd=self.cwd,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        return self

    def wait_ready(self, timeout: float = 120) -> str:
        """The first stdout line is {"event":"ready","url":...}; return the URL."""
        assert self.process is not None and self.process.stdout is not None
        line = self.process.stdout.readline()
        if not line:
            _, err = self.process.communicate(timeout=timeout)
            raise AssertionError(f"run exited {self.process.returncode}: {err}")
        return json.loads(line)["url"]

    def stop(self, timeout: float = 60) -> tuple[int, str]:
        assert self.process is not None
        self.process.send_signal(signal.SIGTERM)
        _, err = self.process.communicate(timeout=timeout)
        return self.process.returncode, err

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.communicate()


def finished(argv_prefix: list[str], env: dict[str, str], cwd: Path, timeout: float = 120):
    """Run `productionlab run` expecting it to exit at start-up: (status, stderr)."""
    result = subprocess.run(
        [*argv_prefix, sys.executable, "-m", "productionlab", "run"],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    return result.returncode, result.stdout + result.stderr


def edge_client(state: Path, https_port: int) -> tuple[requests.Session, str]:
    stack = Supervisor(StackConfig(state_dir=state, https_port=https_port))
    password = (state / "secrets" / "admin.password").read_text().strip()
    return new_session(str(state / "tls" / "tls.crt"), ("admin", password)), stack.url


def all_ports_free(ports: list[int]) -> bool:
    return all(port_free("127.0.0.1", p) for p in ports)


# --- fault hooks: what a crash or an operator does to one component ---------------
def kill(stack: Supervisor, name: str, signum: int = signal.SIGKILL) -> None:
    """Signal a component's leader only (as a crash would), and wait for it."""
    component = stack.components[name]
    if component.process is not None and component.alive:
        with contextlib.suppress(ProcessLookupError):
            os.kill(component.process.pid, signum)
        component.process.wait(10)


def restart(stack: Supervisor, name: str, timeout: float = 30.0) -> None:
    """Stop a component's whole process group and start it again (redis: until it
    answers)."""
    component = stack.components[name]
    component.stop()
    component.start()
    if name == "redis":
        stack.wait_redis(timeout)
