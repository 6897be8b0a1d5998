"""One real compose deployment for the whole e2e session: stand-in base
images, the project's images built by ``docker compose build``, secrets from
``productionlab.deploy``, ``docker compose up``. Torn down even on failure,
and the dockerd the session started (if any) is stopped."""

from __future__ import annotations

import contextlib
import importlib.util
import secrets as random
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests

from e2e.harness import (
    REPO,
    Compose,
    DockerDaemon,
    HarnessError,
    binary,
    free_port,
    import_standin,
    log,
    prepare_wheels,
)
from productionlab.deploy import prepare_secrets
from tests.http_client import HttpClient

STATE = "/var/lib/productionlab/state"
SBOMS = REPO / "var" / "e2e" / "sbom"
LOGS = REPO / "var" / "e2e"
IMAGES = {
    "PLAB_AP_IMAGE": "productionlab-ap:e2e",
    "PLAB_CP_IMAGE": "productionlab-cp:e2e",
    "PLAB_EDGE_IMAGE": "productionlab-edge:e2e",
}


@dataclass
class Client(HttpClient):
    """A client of the edge through the published loopback port, as curl users see it."""

    deployment: Deployment
    name: str | None = None
    password: str | None = None
    patient: bool = True  # wait out the edge's 429s (Retry-After) as a polite client does
    timeout: float = 20

    def endpoint(self) -> tuple[str, str]:
        return self.deployment.url, str(self.deployment.cert)


@dataclass
class Deployment:
    daemon: DockerDaemon
    compose: Compose
    secrets_dir: Path
    https_port: int
    http_port: int

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.https_port}"

    @property
    def cert(self) -> Path:
        return self.secrets_dir / "tls.crt"

    def admin_password(self) -> str:
        return self.compose.exec("cp", "cat", f"{STATE}/secrets/admin.password").stdout.strip()

    def admin(self) -> Client:
        return Client(self, "admin", self.admin_password())

    def anonymous(self, patient: bool = True) -> Client:
        return Client(self, patient=patient)

    def new_user(self, name: str, role: str, prefixes: list[str]) -> Client:
        """Create ``name`` through the admin API and answer a client signed in as it."""
        created = self.admin().post(
            "/admin/users", json={"name": name, "role": role, "prefixes": prefixes}
        )
        assert created.status_code == 201, created.text
        return Client(self, name, created.json()["password"])

    def wait_for(self, path: str, status: int = 200, timeout: float = 180) -> None:
        """Poll an edge route until it answers ``status`` (a start-up bound, not a benchmark)."""
        deadline = time.monotonic() + timeout
        last = "no answer"
        while time.monotonic() < deadline:
            with contextlib.suppress(requests.RequestException):
                response = self.anonymous().get(path, timeout=5)
                if response.status_code == status:
                    return
                last = f"{response.status_code} {response.text[:200]}"
            time.sleep(1)
        raise HarnessError(f"{path} did not answer {status} in {timeout}s (last: {last})")

    def publish_on(self, https_port: int, http_port: int) -> None:
        self.https_port, self.http_port = https_port, http_port
        ports = {"PLAB_HTTPS_PORT": str(https_port), "PLAB_HTTP_PORT": str(http_port)}
        self.compose.variables.update(ports)
        self.compose.env.update(ports)

    def save_logs(self, label: str) -> Path:
        """Every container's log so far, kept under var/e2e/ for a failed run's reader."""
        LOGS.mkdir(parents=True, exist_ok=True)
        saved = LOGS / f"{self.compose.project}-{label}.log"
        saved.write_text(self.compose.logs())
        return saved

    def up(self, *extra: str) -> None:
        for attempt in range(3):
            try:
                self.compose("up", "--detach", "--no-build", *extra)
                break
            except HarnessError as exc:
                if "address already in use" not in str(exc) or attempt == 2:
                    raise
                log("compose: a published port was taken meanwhile; choosing others")
                self.compose("down", "--timeout", "10")
                self.publish_on(free_port(), free_port())
        self.compose.wait_healthy("edge")
        self.wait_for("/health")
        self.wait_for("/ready")


def write_sboms(daemon: DockerDaemon) -> None:
    """A CycloneDX SBOM of each image just built (OS and Python packages), kept
    beside the e2e logs (var/e2e/sbom/); `make scan` reads them."""
    spec = importlib.util.spec_from_file_location("plab_sbom", REPO / "scripts" / "sbom.py")
    sbom = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(sbom)
    shutil.rmtree(SBOMS, ignore_errors=True)  # only this run's images
    for image in IMAGES.values():
        for path in sbom.image_sboms(image, SBOMS, [binary("docker")], env=daemon.env):
            log(f"sbom: {path}")


# Each of these files after the one before: the default topology's tests first,
# then each profile in turn takes the session's project down and brings itself up
# (test_cluster_profile.py would otherwise sort before test_compose.py).
FILE_ORDER = ("test_compose.py", "test_ha.py", "test_cluster_profile.py")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    rank = {name: index for index, name in enumerate(FILE_ORDER)}
    items.sort(key=lambda item: rank.get(item.path.name, -1))


@pytest.fixture(scope="session")
def deployment() -> Iterator[Deployment]:
    started = time.monotonic()
    daemon = DockerDaemon()
    # Not pytest's tmp_path: other pytest sessions on the machine may prune those.
    work = Path(tempfile.mkdtemp(prefix="plab-e2e-", dir="/var/tmp"))
    compose = None
    try:
        daemon.start()
        base = import_standin(daemon)
        prepare_wheels(daemon, base, [sys.executable, "/usr/bin/python3"])
        secrets_dir = work / "secrets"
        prepare_secrets(secrets_dir)
        compose = Compose(
            daemon,
            f"plabe2e{random.token_hex(3)}",
            {
                **IMAGES,
                "PLAB_PYTHON_IMAGE": base,
                "PLAB_NGINX_IMAGE": base,
                "PLAB_REDIS_IMAGE": base,
                "PLAB_PIP_OPTIONS": "--no-index",
                "PLAB_SECRETS_DIR": str(secrets_dir),
                "PLAB_BIND": "127.0.0.1",
                "PLAB_HEALTH_INTERVAL": "2s",
            },
        )
        log(f"compose: {' '.join(compose.argv)} build (project {compose.project})")
        compose("build", timeout=1800)
        write_sboms(daemon)
        deployment = Deployment(daemon, compose, secrets_dir, 0, 0)
        deployment.publish_on(free_port(), free_port())
        log("compose: up")
        deployment.up()
        log(f"deployment ready after {time.monotonic() - started:.0f}s")
        yield deployment
    finally:
        if compose is not None:
            saved = Deployment(daemon, compose, work, 0, 0).save_logs("end")
            log(f"compose logs: {saved}")
            log("compose: down --volumes")
            compose("down", "--volumes", "--remove-orphans", "--timeout", "10", check=False)
        # Images stay on a daemon we did not start: they are its build cache.
        daemon.stop()
        shutil.rmtree(work, ignore_errors=True)
        log(f"e2e session took {time.monotonic() - started:.0f}s")
