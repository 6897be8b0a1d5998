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

import time
from collections.abc import Iterator

import pytest

from e2e.conftest import Deployment
from e2e.harness import HarnessError, log
from e2e.profile_kit import (
    AFTER_RECOVERY,
    WriteLoad,
    assert_confined_on_the_backend,
    bring_up_profile,
    plane_env,
    redis_cli,
)
from productionlab.deploy import (
    HA_ADDRESSES,
    HA_ENV,
    HA_REPLICAS,
    HA_SENTINELS,
    SENTINEL_ADMIN_PASSWORD,
    SENTINEL_ADMIN_USER,
    SENTINEL_PORT,
    SENTINEL_SERVICE,
)

HA_SERVICES = ("redis", *HA_REPLICAS, *HA_SENTINELS)
RECOVERY_LIMIT = 240.0  # seconds after the kill for a promoted replica to take writes


@pytest.fixture(scope="module")
def ha(deployment: Deployment) -> Iterator[Deployment]:
    bring_up_profile(deployment, "ha", HA_ENV, HA_SERVICES, durability="replicated")
    yield deployment
    deployment.save_logs("ha")


def sentinel(deployment: Deployment, service: str, *command: str) -> list[str]:
    """A sentinel's answer to ``command`` (redis-cli over TLS with the health certificate,
    as the operator's user: the sentinels take no anonymous client)."""
    secret = (deployment.secrets_dir / SENTINEL_ADMIN_PASSWORD).read_text().strip()
    login = ("--user", SENTINEL_ADMIN_USER, "--pass", secret, "--no-auth-warning")
    return redis_cli(deployment, service, SENTINEL_PORT, *command, login=login).split()


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
    assert_confined_on_the_backend(ha, {service: HA_ADDRESSES[service] for service in HA_SERVICES})


def test_the_planes_find_the_primary_through_the_sentinels(ha):
    for plane in ("ap", "cp"):
        env = plane_env(ha, plane)
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


def test_a_sentinel_refuses_an_anonymous_client(ha):
    for service in HA_SENTINELS:
        answer = redis_cli(ha, service, SENTINEL_PORT, "sentinel", "masters")
        assert "NOAUTH" in answer and SENTINEL_SERVICE not in answer, (service, answer)
        answer = redis_cli(ha, service, SENTINEL_PORT, "ping")
        assert "NOAUTH" in answer and "PONG" not in answer, (service, answer)
    # the healthcheck's user may PING and nothing else
    health = ("--user", "plab-health", "--pass", "ping-only", "--no-auth-warning")
    assert redis_cli(ha, "sentinel-1", SENTINEL_PORT, "ping", login=health).strip() == "PONG"
    refused = redis_cli(ha, "sentinel-1", SENTINEL_PORT, "sentinel", "masters", login=health)
    assert "NOPERM" in refused, refused


def test_killing_the_primary_promotes_a_replica_and_loses_no_acknowledged_write(ha):
    user = ha.new_user("e2e-ha", "writer", ["ha-"])
    assert user.put("/v1/kv/ha-first", data=b"one").status_code == 201
    assert user.get("/v1/kv/ha-first").content == b"one"

    load = WriteLoad(user, prefix="ha")
    load.start()
    try:
        load.warm_up("the kill")
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

    load.check("ha", killed)
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


def acl_refusals(deployment: Deployment, service: str, users: tuple[str, ...]) -> list[str]:
    """What a sentinel's ACL LOG says it refused ``users`` (commands, channels; not
    logins): redis-cli's raw answer is one flat name/value list per entry."""
    secret = (deployment.secrets_dir / SENTINEL_ADMIN_PASSWORD).read_text().strip()
    login = ("--user", SENTINEL_ADMIN_USER, "--pass", secret, "--no-auth-warning")
    answer = redis_cli(deployment, service, SENTINEL_PORT, "acl", "log", "200", login=login)
    lines = [line.strip() for line in answer.splitlines()]
    entries: list[dict[str, str]] = []
    for name, value in zip(lines[::2], lines[1::2], strict=False):
        if name == "count":
            entries.append({})
        if entries:
            entries[-1][name] = value
    return [
        f"{entry.get('username')} {entry.get('reason')} {entry.get('object')}"
        for entry in entries
        if entry.get("username") in users and entry.get("reason") != "auth"
    ]


def test_the_sentinels_refused_nothing_the_planes_and_the_sentinels_sent(ha):
    """After the failover and the rejoin: the sentinels' ACL (SECURITY.md "Sentinel
    users") let through everything the planes' discovery and the sentinels' own
    failover sent; an anonymous client was refused before any of this."""
    # the log is read: the healthcheck user's refused SENTINEL MASTERS (the test above)
    health = acl_refusals(ha, "sentinel-1", ("plab-health",))
    assert "plab-health command sentinel|masters" in health, health
    for service in HA_SENTINELS:
        refused = acl_refusals(ha, service, ("plab-ap", "plab-cp", "plab-sentinel"))
        assert refused == [], (service, refused)
