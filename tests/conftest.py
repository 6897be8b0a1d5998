"""Real-process fixtures: redis-server (AOF on), the planes under Waitress and
nginx from the project's template, on free loopback ports in a temp dir.

A missing binary is an error, never a skip: CI must prove the real thing.
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests

from productionlab.supervisor import StackConfig, StackError, Supervisor
from tests.http_client import HttpClient, new_session
from tests.inprocess import InProcessClient, Planes, start_planes, with_user


def run_cli(*args: str, env: dict[str, str] | None = None, timeout: float = 120, **kwargs):
    """``python -m productionlab ARGS`` with ``env`` (default: this process's);
    output captured as text."""
    kwargs.setdefault("capture_output", True)
    return subprocess.run(
        [sys.executable, "-m", "productionlab", *args],
        env=env,
        text=True,
        timeout=timeout,
        **kwargs,
    )


def cli(stack: Supervisor, *args: str, env: dict | None = None, **kwargs):
    """The operator CLI against ``stack``: the control plane's environment, plus ``env``."""
    return run_cli(*args, env={**stack.plane_env("cp"), **(env or {})}, **kwargs)


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

    def endpoint(self) -> tuple[str, str]:
        return self.stack.url, str(self.stack.tls_cert)

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


def port_was_taken(exc: StackError) -> bool:
    """A component lost its free port to another suite between choice and bind
    (redis and the planes say so; nginx's last line is "still could not bind()")."""
    return "Address already in use" in str(exc) or "could not bind" in str(exc)


def start_stack(**overrides) -> Supervisor:
    """Start a stack on free ports; retry with new ports if one was taken meanwhile
    (other suites on this machine pick free ports too)."""
    if os.environ.get("PLAB_TEST_REDIS") == "cluster":
        raise AssertionError(
            "PLAB_TEST_REDIS=cluster covers the in-process layer only: a process stack "
            "here would run over one redis and pass as if it had been a cluster"
        )
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
            if not port_was_taken(exc) or attempt == 2:
                raise
    raise AssertionError("unreachable")


def stop_stack(stack: Supervisor) -> None:
    stack.stop()
    if os.environ.get("PLAB_KEEP_TEST_STATE") != "1":
        shutil.rmtree(stack.state, ignore_errors=True)


def running_stack(**overrides) -> Iterator[Supervisor]:
    """A module fixture's stack, for it to ``yield from``: started with ``overrides``
    (as ``start_stack``), stopped when the fixture is torn down."""
    stack = start_stack(**overrides)
    yield stack
    stop_stack(stack)


@pytest.fixture(scope="session")
def stack() -> Iterator[Supervisor]:
    """One stack for the session, edge limits raised so ordinary tests are not throttled.

    Rate-limit tests start their own stack with the defaults.
    """
    stack = start_stack(**RAISED_LIMITS)
    yield stack
    stop_stack(stack)


# Nothing supervises the session stack, and a dead component's free port can be
# taken by another suite's stack on this machine: the session's edge then forwards
# to a stranger's plane and every later test fails with a 401 that hides the cause
# (seen once in CI's TLS pass). So each test that uses the stack first checks that
# every component still runs, and if one died, names it, shows its log and restarts it.
_previous_stack_test: dict[str, str] = {}


def dead_components(stack: Supervisor) -> dict[str, int | None]:
    """The stack's components whose process has exited, with their exit status."""
    return {
        name: component.process.returncode
        for name, component in stack.components.items()
        if component.exited
    }


@pytest.fixture(autouse=True)
def session_stack_alive(request: pytest.FixtureRequest) -> Iterator[None]:
    if "stack" not in request.fixturenames:
        yield
        return
    stack: Supervisor = request.getfixturevalue("stack")
    dead = dead_components(stack)
    if dead:
        logs = {
            name: stack.components[name].log_path.read_text(errors="replace")[-1500:]
            for name in dead
        }
        restarted = stack.supervise_once()
        for name in restarted:
            if name == "redis":
                stack.wait_redis(30)
            elif name != "nginx":
                (port,) = stack.components[name].ports
                stack.wait_http(port, stack.config.ready_path, 30)
        pytest.fail(
            f"the session stack's {dead} (name: exit status) died after "
            f"{_previous_stack_test.get('id', 'its start')}; restarted {restarted or 'none'}"
            f" (a port another stack took cannot be reused). Last log lines: {logs}"
        )
    _previous_stack_test["id"] = request.node.nodeid
    yield


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


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "inprocess(on=True): route tests on the in-process layer (tests/inprocess.py)"
    )


def in_process(request: pytest.FixtureRequest) -> bool:
    """Marked ``inprocess`` (module or test); ``inprocess(False)`` on a test of such a
    module keeps that one test on the edge."""
    marker = request.node.get_closest_marker("inprocess")
    return marker is not None and (not marker.args or bool(marker.args[0]))


@pytest.fixture(scope="session")
def planes() -> Iterator[Planes]:
    """Both planes in this process over one redis-server per worker (tests/inprocess.py)."""
    planes = start_planes()
    yield planes
    planes.stop()


@pytest.fixture
def planes_with(planes: Planes) -> Iterator[Callable[..., InProcessClient]]:
    """In process, what ``stack_factory`` is for stacks: ``planes_with(PLAB_USER_RATE=
    "10/minute")`` builds both planes with those settings over the worker's redis
    and answers an admin-role client of them."""
    yield planes.variant
    planes.stop_variants()


@pytest.fixture
def admin(request: pytest.FixtureRequest) -> Client | InProcessClient:
    """``admin`` through the edge, or in process for tests marked ``inprocess``."""
    if in_process(request):
        return request.getfixturevalue("planes").admin()
    return admin_of(request.getfixturevalue("stack"))


@pytest.fixture
def anonymous(request: pytest.FixtureRequest) -> Client | InProcessClient:
    if in_process(request):
        return request.getfixturevalue("planes").client()
    return Client(request.getfixturevalue("stack"))


def create_user(admin: Client | InProcessClient, role: str, prefixes: list[str]):
    """A new user with a random name, signed in the way ``admin`` is (edge or in process)."""
    name = f"u{secrets.token_hex(6)}"
    response = admin.post("/admin/users", json={"name": name, "role": role, "prefixes": prefixes})
    assert response.status_code == 201, response.text
    return with_user(admin, name, response.json()["password"])


def new_writer(admin: Client | InProcessClient, mark: str = "w"):
    """A writer granted one fresh prefix (``<mark><hex>-``), and that prefix."""
    prefix = f"{mark}{secrets.token_hex(4)}-"
    return create_user(admin, "writer", [prefix]), prefix


@pytest.fixture
def make_user(admin: Client | InProcessClient) -> Callable[[str, list[str]], Client]:
    return lambda role, prefixes: create_user(admin, role, prefixes)


@pytest.fixture
def key() -> str:
    """A fresh key per test, so tests never see each other's data."""
    return f"k-{secrets.token_hex(8)}"
