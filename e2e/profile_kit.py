"""What the compose profile tests share (e2e/test_ha.py, e2e/test_cluster_profile.py):
bringing a profile up in place of what runs, the confinement every redis-side
service of a profile must show, redis-cli in a container over TLS, and writers
that keep writing through the edge while a fault happens, with the checks made
on their answers afterwards (only 2xx or 503 + Retry-After, no acknowledged
write lost). Times are logged, never asserted."""

from __future__ import annotations

import secrets
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import requests

from e2e.conftest import Client, Deployment
from e2e.harness import log
from productionlab.deploy import prepare_secrets

WRITERS = 2
WARM_ACKS = 20  # acknowledged writes before the fault
WARM_LIMIT = 90.0  # seconds, whatever the machine's speed
AFTER_RECOVERY = 3.0  # seconds of load kept once writes are back


def bring_up_profile(
    deployment: Deployment, topology: str, env_file: str, services: Sequence[str], **prepare
) -> None:
    """The project down with its volumes (with the options of what runs now, so a
    profile that ran goes down too), the ``topology`` prepared in the same secrets
    directory, and the project up again with ``--env-file <env_file>`` on every
    later compose command (ps, logs, down in the session's teardown), as
    docs/COMPOSE.md tells an operator to; waits until ``services`` are healthy."""
    started = time.monotonic()
    compose = deployment.compose
    deployment.save_logs(f"before-{topology}")
    log(f"{topology}: down --volumes (the topology before), then the {topology} profile up")
    compose("down", "--volumes", "--remove-orphans", "--timeout", "10")
    prepare_secrets(deployment.secrets_dir, topology=topology, **prepare)
    compose.options = ["--env-file", str(deployment.secrets_dir / env_file)]
    deployment.up()
    for service in services:
        compose.wait_healthy(service)
    log(f"{topology}: deployment ready after {time.monotonic() - started:.0f}s")


def assert_confined_on_the_backend(deployment: Deployment, addresses: Mapping[str, str]) -> None:
    """Each service of ``addresses``: one healthy, non-root container with a
    read-only root filesystem, no capability, memory and pids limits, no
    published port, on the backend network only at its fixed address."""
    project = deployment.compose.project
    for service, address in addresses.items():
        ids = deployment.compose.container_ids(service)
        assert len(ids) == 1, service
        info = deployment.daemon.inspect(*ids)[0]
        host = info["HostConfig"]
        assert host["ReadonlyRootfs"] is True, service
        assert host["CapDrop"] == ["ALL"] and not host["CapAdd"], service
        assert "no-new-privileges:true" in host["SecurityOpt"], service
        assert host["Memory"] > 0 and host["PidsLimit"] > 0, service
        assert info["State"]["Health"]["Status"] == "healthy", service
        assert info["Config"]["User"].split(":")[0] not in ("", "0", "root"), service
        networks = {
            name.removeprefix(f"{project}_"): network["IPAddress"]
            for name, network in info["NetworkSettings"]["Networks"].items()
        }
        assert networks == {"backend": address}, service
        assert not host["PortBindings"], service
        written = deployment.compose.exec(service, "touch", "/plab-write-probe", check=False)
        assert "Read-only file system" in written.stderr, service


def redis_cli(
    deployment: Deployment, service: str, port: int, *command: str, login: Sequence[str] = ()
) -> str:
    """The answer of the redis (or sentinel) in ``service`` to ``command``: redis-cli
    in its container over TLS with the healthcheck's client certificate;
    ``login``, e.g. ``("--user", "plab-health", "--pass", "x")``."""
    result = deployment.compose.exec(
        service,
        "redis-cli",
        "--tls",
        "--cacert",
        "/run/secrets/redis_ca_crt",
        "--cert",
        "/run/secrets/redis_health_crt",
        "--key",
        "/run/secrets/redis_health_key",
        *login,
        "-h",
        "127.0.0.1",
        "-p",
        str(port),
        *command,
        check=False,
    )
    return result.stdout


def plane_env(deployment: Deployment, plane: str) -> dict[str, str]:
    """The environment a plane's container runs with."""
    config = deployment.daemon.inspect(deployment.compose.container(plane))[0]["Config"]
    return dict(item.split("=", 1) for item in config["Env"])


@dataclass
class WriteLoad:
    """Writers PUT unique keys through the edge; every answer is kept (a
    request that got no answer is kept as status 0)."""

    client: Client
    prefix: str  # the keys are <prefix>-<run>-<writer>-<n>
    run: str = field(default_factory=lambda: secrets.token_hex(3))
    answers: list[tuple[float, int, bool, str]] = field(default_factory=list)
    acked: list[tuple[str, str, float]] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)
    threads: list[threading.Thread] = field(default_factory=list)

    def _write(self, writer: int) -> None:
        n = 0
        while not self.stop.is_set():
            n += 1
            key, value = f"{self.prefix}-{self.run}-{writer}-{n}", secrets.token_hex(8)
            started = time.monotonic()
            try:
                response = self.client.put(f"/v1/kv/{key}", data=value.encode())
                status, retry = response.status_code, "Retry-After" in response.headers
                body = response.text[:200] if status >= 300 else ""
            except requests.RequestException as exc:
                status, retry, body = 0, False, f"{type(exc).__name__}: {exc}"[:200]
            with self.lock:
                self.answers.append((started, status, retry, body))
                if status in (200, 201):
                    self.acked.append((key, value, started))
            if status == 503:
                time.sleep(0.1)

    def start(self) -> None:
        for writer in range(WRITERS):
            thread = threading.Thread(target=self._write, args=(writer,), daemon=True)
            self.threads.append(thread)
            thread.start()

    def warm_up(self, what: str) -> None:
        """Wait (bounded) for some acknowledged writes before ``what`` happens."""
        deadline = time.monotonic() + WARM_LIMIT
        while self.acked_after(0) < WARM_ACKS and time.monotonic() < deadline:
            time.sleep(0.2)
        assert self.acked_after(0) > 0, f"no write was acknowledged before {what}"

    def halt(self) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(60)

    def acked_after(self, moment: float) -> int:
        with self.lock:
            return sum(1 for _, _, started in self.acked if started > moment)

    def check(self, label: str, fault: float) -> None:
        """Only 2xx or 503 + Retry-After (never 500, never no answer), and every
        acknowledged write reads back with its value; ``fault``: when it began."""
        statuses: dict[int, int] = {}
        for _, status, _, _ in self.answers:
            statuses[status] = statuses.get(status, 0) + 1
        during = [a for a in self.answers if a[0] > fault]
        log(
            f"{label}: answers {statuses}; after the fault {len(during)}, of which "
            f"{sum(1 for a in during if a[1] == 503)} were 503; acknowledged {len(self.acked)}"
        )
        wrong = [a for a in self.answers if a[1] not in (200, 201, 503)]
        assert wrong == [], wrong[:5]
        assert all(retry for _, status, retry, _ in self.answers if status == 503)
        lost = []
        for key, value, _ in self.acked:
            answer = self.client.get(f"/v1/kv/{key}")
            if answer.status_code != 200 or answer.content != value.encode():
                lost.append((key, answer.status_code))
        assert lost == [], f"{len(lost)} of {len(self.acked)} acknowledged writes lost: {lost[:5]}"
