"""Real-process fixtures: redis-server (AOF on), the planes under Waitress and
nginx from the project's template, on free loopback ports in a temp dir.

A missing binary is an error, never a skip: CI must prove the real thing.
"""

from __future__ import annotations

import os
import secrets
import shutil
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests

from productionlab.supervisor import StackConfig, StackError, Supervisor
from tests.http_client import HttpClient, new_session


def state_dir(prefix: str = "plab-test-") -> Path:
    """A temp dir nginx's unprivileged workers can traverse (pytest's are 0700)."""
    path = Path(tempfile.mkdtemp(prefix=prefix, dir=os.environ.get("PLAB_TEST_TMP", "/tmp")))
    os.chmod(path, 0o711)
    return path


@dataclass
class Client(HttpClient):
    """A client of the edge, the way `curl` users see it."""

    stack: Supervisor
    name: str | None = None
    password: str | None = None

    @property
    def base_url(self) -> str:
        return self.stack.url

    @property
    def verify(self) -> str:
        return str(self.stack.tls_cert)

    def direct(self, method: str, plane_port: int, path: str, **kwargs) -> requests.Response:
        """Straight to one Waitress process, bypassing the edge (defence-in-depth tests)."""
        kwargs.setdefault("timeout", 15)
        with new_session(auth=self.auth) as session:
            return session.request(
                method, f"http://{self.stack.config.bind}:{plane_port}{path}", **kwargs
            )


# Limits raised so functional tests are not throttled (rate-limit tests keep the
# defaults), and a small stack for modules that start their own.
RAISED_LIMITS = {"edge_rate": 5000, "edge_burst": 5000, "admin_rate": 1000, "admin_burst": 1000}
SMALL_STACK = {"ap_workers": 1, "threads": 4, **RAISED_LIMITS}


def small_stack_config(directory: Path, **overrides) -> StackConfig:
    """One app process, four threads, raised limits, on ``directory``."""
    return StackConfig.ephemeral(directory, **{**SMALL_STACK, **overrides})


def start_stack(**overrides) -> Supervisor:
    """Start a stack on free ports; retry with new ports if one was taken meanwhile
    (other suites on this machine pick free ports too)."""
    overrides.setdefault("ap_workers", 2)
    overrides.setdefault("threads", 8)
    if os.environ.get("PLAB_TEST_REDIS_TLS") == "1":
        # CI's TLS pass (`make test-redis-tls`): every stack's redis speaks TLS only.
        overrides.setdefault("redis_tls", True)
    for attempt in range(3):
        stack = Supervisor(StackConfig.ephemeral(state_dir(), **overrides))
        try:
            stack.start(timeout=60)
            return stack
        except StackError as exc:
            shutil.rmtree(stack.state, ignore_errors=True)
            if "Address already in use" not in str(exc) or attempt == 2:
                raise
    raise AssertionError("unreachable")


def stop_stack(stack: Supervisor) -> None:
    stack.stop()
    if os.environ.get("PLAB_KEEP_TEST_STATE") != "1":
        shutil.rmtree(stack.state, ignore_errors=True)


@pytest.fixture(scope="session")
def stack() -> Iterator[Supervisor]:
    """One stack for the session, edge limits raised so ordinary tests are not throttled.

    Rate-limit tests start their own stack with the defaults.
    """
    stack = start_stack(**RAISED_LIMITS)
    yield stack
    stop_stack(stack)


@pytest.fixture
def stack_factory() -> Iterator[Callable[..., Supervisor]]:
    started: list[Supervisor] = []

    def make(**overrides) -> Supervisor:
        stack = start_stack(**overrides)
        started.append(stack)
        return stack

    yield make
    for stack in started:
        stop_stack(stack)


def admin_of(stack: Supervisor) -> Client:
    return Client(stack, "admin", stack.admin_password_file.read_text().strip())


@pytest.fixture
def admin(stack: Supervisor) -> Client:
    return admin_of(stack)


@pytest.fixture
def anonymous(stack: Supervisor) -> Client:
    return Client(stack)


def create_user(admin: Client, role: str, prefixes: list[str]) -> Client:
    name = f"u{secrets.token_hex(6)}"
    response = admin.post("/admin/users", json={"name": name, "role": role, "prefixes": prefixes})
    assert response.status_code == 201, response.text
    return Client(admin.stack, name, response.json()["password"])


@pytest.fixture
def make_user(admin: Client) -> Callable[[str, list[str]], Client]:
    return lambda role, prefixes: create_user(admin, role, prefixes)


@pytest.fixture
def key() -> str:
    """A fresh key per test, so tests never see each other's data."""
    return f"k-{secrets.token_hex(8)}"
