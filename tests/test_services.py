"""One wiring (issue 11, item 1): a plane's services are built once, by one
builder, shared by whatever serves them; create_app has no side effects; the
server that serves an app starts its background work."""

from __future__ import annotations

import base64
import importlib.metadata
import subprocess  # nosec B404
import sys
import threading
from pathlib import Path

import pytest
import requests

from productionlab import ap, cp, serve
from productionlab.services import Services, services, services_of
from productionlab.settings import Settings
from productionlab.supervisor import Supervisor, free_port
from productionlab.users import EVENTS
from productionlab.wiring import build_services
from tests.faultkit import wait_until

PLANES = {"ap": ap, "cp": cp}
ROOT = Path(__file__).resolve().parent.parent


def settings_of(stack: Supervisor, plane: str, **overrides: str) -> Settings:
    return Settings.from_env({**stack.plane_env(plane), **overrides}, plane=plane)


def basic(name: str, password: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{name}:{password}".encode()).decode()}


def subscribers(stack: Supervisor) -> int:
    """Processes following user changes (each serving plane holds one subscription)."""
    client = stack.redis_client("cp")
    try:
        return int(dict(client.pubsub_numsub(EVENTS))[EVENTS.encode()])
    finally:
        client.close()


def threads() -> set[int]:
    return {thread.ident for thread in threading.enumerate() if thread.is_alive()}


@pytest.mark.parametrize("plane", ["ap", "cp"])
def test_create_app_on_a_redis_that_is_down_starts_nothing_and_raises_nothing(
    stack: Supervisor, plane: str
) -> None:
    scheme = "rediss" if stack.config.redis_tls else "redis"
    nobody = f"{scheme}://{stack.config.bind}:{free_port(stack.config.bind)}/0"
    settings = settings_of(stack, plane, PLAB_REDIS_URL=nobody)
    before = threads()
    app = PLANES[plane].create_app(settings)
    assert threads() == before, "create_app started a thread"
    wired = services_of(app)
    assert isinstance(wired, Services)
    assert wired.users.cache.enabled is False  # no subscription, so no cache
    # The app answers: the probe that needs no redis is fine, the one that needs it says so.
    with app.test_client() as client:
        assert client.get("/health").status_code == 200
        ready = client.get("/ready")
        assert ready.status_code == 503 and ready.headers["Retry-After"]
    assert threads() == before


def test_create_app_does_not_subscribe_to_user_changes(stack: Supervisor) -> None:
    before = subscribers(stack)
    apps = [PLANES[plane].create_app(settings_of(stack, plane)) for plane in ("ap", "cp")]
    assert all(services_of(app).users.cache.enabled is False for app in apps)
    assert subscribers(stack) == before


def test_serve_starts_the_user_event_listener(stack: Supervisor) -> None:
    """The server that serves the app subscribes (one more subscriber while it
    runs, one fewer once it is gone)."""
    before = subscribers(stack)
    port = free_port(stack.config.bind)
    argv = [sys.executable, "-m", "productionlab", "serve", "ap"]
    argv += ["--host", stack.config.bind, "--port", str(port)]
    process = subprocess.Popen(
        argv,
        env=stack.plane_env("ap"),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        url = f"http://{stack.config.bind}:{port}/health"
        served = wait_until(lambda: requests.get(url, timeout=5).status_code == 200, 60)
        assert served is not None, "the plane did not come up"
        assert wait_until(lambda: subscribers(stack) == before + 1, 30) is not None
    finally:
        process.terminate()
        process.wait(timeout=30)
    assert wait_until(lambda: subscribers(stack) == before, 30) is not None


def test_both_planes_take_their_services_from_the_one_builder(stack: Supervisor) -> None:
    for plane in ("ap", "cp"):
        settings = settings_of(stack, plane)
        wired = build_services(settings)
        first = PLANES[plane].create_app(settings, services=wired)
        second = PLANES[plane].create_app(settings, services=wired)
        assert services_of(first) is wired and services_of(second) is wired
        with first.app_context():
            assert services() is wired
        # One entry is the whole wiring: no per-module "plab_..." extensions.
        assert [name for name in first.extensions if name.startswith("plab")] == ["plab"]
        assert (wired.console_sessions is not None) == (plane == "cp")
        assert (wired.users.htpasswd is not None) == (plane == "cp")
        assert (wired.tokens.keys.signer is not None) == (plane == "cp")


def test_services_of_other_settings_are_refused(stack: Supervisor) -> None:
    wired = build_services(settings_of(stack, "cp"))
    with pytest.raises(ValueError, match="other settings"):
        ap.create_app(settings_of(stack, "ap"), services=wired)


def test_an_app_over_shared_services_serves_requests_in_process(stack: Supervisor) -> None:
    """The same Services object answers the admin API and the KV routes of the
    control plane, in process, against the stack's redis."""
    settings = settings_of(stack, "cp")
    wired = build_services(settings)
    app = cp.create_app(settings, services=wired)
    password = stack.admin_password_file.read_text().strip()
    with app.test_client() as client:
        listed = client.get("/admin/users", headers=basic("admin", password))
        assert listed.status_code == 200
        assert "admin" in [user["name"] for user in listed.get_json()["users"]]
        key = "services-test-one"
        written = client.put(f"/ops/v1/kv/{key}", data=b"v", headers=basic("admin", password))
        assert written.status_code in (200, 201), written.get_data(as_text=True)
        assert wired.kv.get(key).value == b"v"
        refused = client.get("/admin/users", headers=basic("admin", "wrong"))
        assert refused.status_code == 401


def test_every_runtime_requirement_is_preloaded() -> None:
    """A root-started plane loads these before it drops privileges (serve.py)."""
    required = serve.required_packages()
    for name in ("flask", "flask_talisman", "flask_limiter", "redis", "argon2", "waitress"):
        assert name in required
    preloaded = serve.preload_packages()
    assert set(required) <= set(preloaded)
    requirements = [
        line.split("#")[0].split("==")[0].strip()
        for line in (ROOT / "requirements.txt").read_text(encoding="utf-8").splitlines()
        if line.split("#")[0].strip()
    ]
    provided = importlib.metadata.packages_distributions()
    for distribution in requirements:
        tops = [
            top
            for top, owners in provided.items()
            if any(serve._canonical(o) == serve._canonical(distribution) for o in owners)
        ]
        assert tops, f"{distribution} provides no module"
        assert set(tops) <= set(preloaded), f"{distribution} is not preloaded"
