"""Compose's ``ha`` profile (issue 12, item 1), brought up for real after the
default topology's tests (test_compose.py runs first: file order) in the same
project, images and dockerd: the default deployment goes down with its volumes,
``productionlab.deploy`` prepares the ha topology in the same secrets directory
(``prepare_secrets(..., topology="ha")``, which writes ``ha.env``), and the
project comes up with ``--env-file ha.env`` on every compose command, as
docs/COMPOSE.md tells an operator to.

Then, through the edge: a user writes and reads; writers keep writing while the
primary's container is SIGKILLed (``docker kill``); every answer is 2xx or 503
with Retry-After (never 500, never no answer); writes come back once the
sentinels have promoted a replica; every write acknowledged before and during
the failover reads back; ``/ready`` is 200 again; the old primary, started
again, rejoins as a replica. Times are logged, never asserted.
"""

from __future__ import annotations

import secrets
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest
import requests

from e2e.conftest import Client, Deployment
from e2e.harness import HarnessError, log
from productionlab.deploy import (
    HA_ADDRESSES,
    HA_ENV,
    HA_REPLICAS,
    HA_SENTINELS,
    SENTINEL_SERVICE,
    prepare_secrets,
)

HA_SERVICES = ("redis", *HA_REPLICAS, *HA_SENTINELS)
WARM_ACKS = 20  # acknowledged writes before the kill
WARM_LIMIT = 90.0  # seconds, whatever the machine's speed
RECOVERY_LIMIT = 240.0  # seconds after the kill for a promoted replica to take writes
AFTER_RECOVERY = 3.0  # seconds of load kept once writes are back
WRITERS = 2


@pytest.fixture(scope="module")
def ha(deployment: Deployment) -> Iterator[Deployment]:
    started = time.monotonic()
    compose = deployment.compose
    deployment.save_logs("before-ha")
    log("ha: down --volumes (the default topology), then the ha profile up")
    compose("down", "--volumes", "--remove-orphans", "--timeout", "10")
    prepare_secrets(deployment.secrets_dir, topology="ha", durability="replicated")
    # Every later compose command (ps, logs, down in the session's teardown) sees the profile.
    compose.options = ["--env-file", str(deployment.secrets_dir / HA_ENV)]
    deployment.up()
    for service in HA_SERVICES:
        compose.wait_healthy(service)
    log(f"ha: deployment ready after {time.monotonic() - started:.0f}s")
    yield deployment
    deployment.save_logs("ha")


def sentinel(deployment: Deployment, service: str, *command: str) -> list[str]:
    """A sentinel's answer to ``command`` (redis-cli over TLS with the health certificate)."""
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
        "-h",
        "127.0.0.1",
        "-p",
        "26379",
        *command,
        check=False,
    )
    return result.stdout.split()


PRIMARY = HA_ADDRESSES["redis"]
REPLICA_ADDRESSES = {HA_ADDRESSES[name] for name in HA_REPLICAS}


def agreed_primary(deployment: Deployment) -> str | None:
    """The address the three sentinels name as the primary, if they agree."""
    answers = {
        tuple(sentinel(deployment, s, "sentinel", "get-master-addr-by-name", SENTINEL_SERVICE))
        for s in HA_SENTINELS
    }
    if len(answers) != 1:
        return None
    (answer,) = answers
    return answer[0] if len(answer) == 2 else None


def test_ha_services_are_confined_on_the_backend_only(ha):
    project = ha.compose.project
    for service in HA_SERVICES:
        ids = ha.compose.container_ids(service)
        assert len(ids) == 1, service
        info = ha.daemon.inspect(*ids)[0]
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
        assert networks == {"backend": HA_ADDRESSES[service]}, service
        assert not host["PortBindings"], service
        written = ha.compose.exec(service, "touch", "/plab-write-probe", check=False)
        assert "Read-only file system" in written.stderr, service


def test_the_planes_find_the_primary_through_the_sentinels(ha):
    for plane in ("ap", "cp"):
        env = dict(
            item.split("=", 1)
            for item in ha.daemon.inspect(ha.compose.container(plane))[0]["Config"]["Env"]
        )
        assert env["PLAB_REDIS_URL"].startswith(
            f"redis+sentinel://{HA_ADDRESSES['sentinel-1']}:26379,"
        ), plane
        assert env["PLAB_DURABILITY"] == "replicated", plane
    assert agreed_primary(ha) == PRIMARY
    answer = sentinel(ha, "sentinel-1", "sentinel", "master", SENTINEL_SERVICE)
    master = dict(zip(answer[::2], answer[1::2], strict=True))
    assert int(master["num-slaves"]) == 2 and int(master["num-other-sentinels"]) == 2, master
    conf = ha.compose.exec("redis", "cat", "/run/secrets/redis_conf").stdout
    assert "min-replicas-to-write 1" in conf and "tls-replication yes" in conf


@dataclass
class WriteLoad:
    """Writers PUT unique keys through the edge; every answer is kept (a
    request that got no answer is kept as status 0)."""

    client: Client
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
            key, value = f"ha-{self.run}-{writer}-{n}", secrets.token_hex(8)
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

    def halt(self) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(60)

    def acked_after(self, moment: float) -> int:
        with self.lock:
            return sum(1 for _, _, started in self.acked if started > moment)


def test_killing_the_primary_promotes_a_replica_and_loses_no_acknowledged_write(ha):
    user = ha.new_user("e2e-ha", "writer", ["ha-"])
    assert user.put("/v1/kv/ha-first", data=b"one").status_code == 201
    assert user.get("/v1/kv/ha-first").content == b"one"

    load = WriteLoad(user)
    load.start()
    try:
        deadline = time.monotonic() + WARM_LIMIT
        while load.acked_after(0) < WARM_ACKS and time.monotonic() < deadline:
            time.sleep(0.2)
        assert load.acked_after(0) > 0, "no write was acknowledged before the kill"
        primary = ha.compose.container("redis")
        ha.daemon.docker("kill", "--signal", "KILL", primary)
        killed = time.monotonic()
        log(f"ha: SIGKILLed the primary after {load.acked_after(0)} acknowledged writes")
        promoted, back = None, None
        deadline = killed + RECOVERY_LIMIT
        while time.monotonic() < deadline and not (promoted and back):
            if promoted is None and (host := agreed_primary(ha)) not in (None, PRIMARY):
                promoted = host
                log(f"ha: the sentinels agree on {host} {time.monotonic() - killed:.1f}s after")
            if back is None and load.acked_after(killed):
                back = time.monotonic()
                log(f"ha: a write sent after the kill acknowledged {back - killed:.1f}s after")
            time.sleep(0.5)
        assert promoted in REPLICA_ADDRESSES, f"no replica promoted in {RECOVERY_LIMIT}s"
        assert back is not None, f"no write acknowledged in {RECOVERY_LIMIT}s after the kill"
        time.sleep(AFTER_RECOVERY)
    finally:
        load.halt()

    statuses: dict[int, int] = {}
    for _, status, _, _ in load.answers:
        statuses[status] = statuses.get(status, 0) + 1
    during = [a for a in load.answers if a[0] > killed]
    log(
        f"ha: answers {statuses}; after the kill {len(during)}, of which "
        f"{sum(1 for a in during if a[1] == 503)} were 503; acknowledged {len(load.acked)}"
    )
    wrong = [a for a in load.answers if a[1] not in (200, 201, 503)]
    assert wrong == [], wrong[:5]
    assert all(retry for _, status, retry, _ in load.answers if status == 503)

    lost = []
    for key, value, _ in load.acked:
        answer = user.get(f"/v1/kv/{key}")
        if answer.status_code != 200 or answer.content != value.encode():
            lost.append((key, answer.status_code))
    assert lost == [], f"{len(lost)} of {len(load.acked)} acknowledged writes lost: {lost[:5]}"
    ha.wait_for("/ready", 200, timeout=120)
    assert user.get("/v1/kv/ha-first").content == b"one"


def test_the_old_primary_started_again_rejoins_as_a_replica(ha):
    ha.compose("start", "redis")
    ha.compose.wait_healthy("redis")
    deadline = time.monotonic() + 120
    replicas: dict[str, str] = {}
    while time.monotonic() < deadline:
        answer = sentinel(ha, "sentinel-1", "sentinel", "replicas", SENTINEL_SERVICE)
        # flat "name value" pairs per replica; each replica's entry starts at "name"
        replicas = {}
        fields = dict.fromkeys(("ip", "flags"), "")
        for name, value in zip(answer[::2], answer[1::2], strict=False):
            if name in fields:
                fields[name] = value
            if name == "flags":
                replicas[fields["ip"]] = value
        if replicas.get(PRIMARY) == "slave":
            break
        time.sleep(1)
    else:
        raise HarnessError(f"redis did not rejoin as a replica: {replicas}")
    assert agreed_primary(ha) in REPLICA_ADDRESSES
    ha.wait_for("/ready", 200, timeout=60)
