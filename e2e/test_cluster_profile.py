"""Compose's ``cluster`` profile (issue 12, item 3), brought up for real after the
ha profile's tests (e2e/conftest.py FILE_ORDER) in the same project, images and
dockerd: the project goes down with its volumes, ``productionlab.deploy``
prepares the cluster topology in the same secrets directory
(``prepare_secrets(..., topology="cluster")``, which writes ``cluster.env``), and
the project comes up with ``--env-file cluster.env`` on every compose command, as
docs/COMPOSE.md tells an operator to.

Then: the three masters are confined to the backend at their fixed addresses and
every one says ``cluster_state:ok`` with three masters; the one-shot join ran
once and, run again, changes nothing; through the edge a user created by the
admin API writes, reads, lists, deletes and compare-and-sets; writers keep
writing while ``docker compose restart`` restarts the three masters, every answer
is 2xx or 503 with Retry-After (never 500, never no answer), and every write
acknowledged before and during the restart reads back afterwards. Times are
logged, never asserted.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from e2e import profile_kit as kit
from e2e.conftest import Deployment
from e2e.harness import HarnessError, log
from productionlab.deploy import (
    CLUSTER_ADDRESSES,
    CLUSTER_ENV,
    CLUSTER_INIT,
    CLUSTER_NODES,
    CLUSTER_URL,
    REDIS_PORT,
)

RECOVERY_LIMIT = 240.0  # seconds after the restart for writes to be acknowledged again
SLOTS = 16384
# The healthcheck's user: PING and CLUSTER INFO/NODES/SLOTS only (no password).
HEALTH_LOGIN = ("--user", "plab-health", "--pass", "ping-only", "--no-auth-warning")


@pytest.fixture(scope="module")
def cluster(deployment: Deployment) -> Iterator[Deployment]:
    kit.bring_up_profile(deployment, "cluster", CLUSTER_ENV, CLUSTER_NODES)
    yield deployment
    deployment.save_logs("cluster")


def node_cli(deployment: Deployment, service: str, *command: str) -> str:
    """A master's answer to ``command``, as the healthcheck's user."""
    return kit.redis_cli(deployment, service, REDIS_PORT, *command, login=HEALTH_LOGIN)


def cluster_info(deployment: Deployment, service: str) -> dict[str, str]:
    text = node_cli(deployment, service, "cluster", "info").replace("\r", "")
    return dict(line.split(":", 1) for line in text.splitlines() if ":" in line)


def init_exit_code(deployment: Deployment, timeout: float = 240) -> int:
    """The join service's exit code, once it has exited."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ids = deployment.compose.container_ids(CLUSTER_INIT, all_states=True)
        states = [info["State"] for info in deployment.daemon.inspect(*ids)] if ids else []
        if states and all(state["Status"] == "exited" for state in states):
            return max(state["ExitCode"] for state in states)
        time.sleep(1)
    raise HarnessError(f"{CLUSTER_INIT} did not exit in {timeout}s")


def test_the_masters_are_confined_on_the_backend_at_their_addresses(cluster):
    kit.assert_confined_on_the_backend(cluster, CLUSTER_ADDRESSES)
    for service in CLUSTER_NODES:
        # nodes.conf beside the AOF, in the node's volume
        listed = cluster.compose.exec(service, "ls", "/data").stdout.split()
        assert {"nodes.conf", "appendonly"} <= set(listed), (service, listed)


def test_every_master_sees_one_cluster_of_three_masters(cluster):
    assert init_exit_code(cluster) == 0
    for service in CLUSTER_NODES:
        info = cluster_info(cluster, service)
        assert info.get("cluster_state") == "ok", (service, info)
        assert info["cluster_size"] == "3" and info["cluster_known_nodes"] == "3", (service, info)
        assert int(info["cluster_slots_assigned"]) == SLOTS, (service, info)
        masters = {
            fields[1].split("@")[0].split(":")[0]
            for fields in (
                line.split() for line in node_cli(cluster, service, "cluster", "nodes").splitlines()
            )
            if len(fields) > 8 and "master" in fields[2]  # a master that owns slots
        }
        assert masters == set(CLUSTER_ADDRESSES.values()), (service, masters)
    for plane in ("ap", "cp"):
        env = kit.plane_env(cluster, plane)
        assert env["PLAB_REDIS_URL"] == CLUSTER_URL, plane
        assert env["PLAB_DURABILITY"] == "everysec", plane


def test_the_data_routes_work_through_the_edge(cluster):
    user = cluster.new_user("e2e-cluster", "writer", ["cl-"])
    assert user.put("/v1/kv/cl-doc", data=b"v1").status_code == 201
    assert user.put("/v1/kv/cl-gone", data=b"x").status_code == 201
    read = user.get("/v1/kv/cl-doc")
    assert read.status_code == 200 and read.content == b"v1"
    etag = read.headers["ETag"]
    stale = user.put("/v1/kv/cl-doc", data=b"v2", headers={"If-Match": '"999999"'})
    assert stale.status_code == 412, stale.text
    assert user.put("/v1/kv/cl-doc", data=b"v2", headers={"If-Match": etag}).status_code == 200
    assert user.get("/v1/kv/cl-doc").content == b"v2"
    assert set(user.get("/v1/kv?prefix=cl-").json()["keys"]) == {"cl-doc", "cl-gone"}
    assert user.delete("/v1/kv/cl-gone").status_code == 204
    assert user.get("/v1/kv/cl-gone").status_code == 404
    assert user.get("/v1/kv?prefix=cl-").json()["keys"] == ["cl-doc"]
    assert cluster.anonymous().get("/ready").status_code == 200


def test_joining_again_changes_nothing(cluster):
    """A second ``up`` (which starts the one-shot join again) and an explicit run
    of the join on the existing cluster: neither fails nor touches the data."""
    user = cluster.new_user("e2e-cluster-again", "writer", ["again-"])
    assert user.put("/v1/kv/again-kept", data=b"before").status_code == 201
    cluster.up()
    assert init_exit_code(cluster) == 0
    again = cluster.compose("run", "--rm", "-T", CLUSTER_INIT)
    assert "already joined: nothing to do" in again.stdout, again.stdout + again.stderr
    assert "creating the cluster" not in again.stdout
    logs = cluster.compose("logs", "--no-color", CLUSTER_INIT).stdout
    assert logs.count("creating the cluster") == 1, logs
    assert user.get("/v1/kv/again-kept").content == b"before"
    for service in CLUSTER_NODES:
        assert cluster_info(cluster, service).get("cluster_state") == "ok", service


def test_data_survives_a_restart_of_every_master_under_load(cluster):
    user = cluster.new_user("e2e-cluster-load", "writer", ["load-"])
    assert user.put("/v1/kv/load-first", data=b"one").status_code == 201
    load = kit.WriteLoad(user, prefix="load")
    load.start()
    try:
        load.warm_up("the restart")
        log(f"cluster: restarting every master after {load.acked_after(0)} acknowledged writes")
        restarting = time.monotonic()
        cluster.compose("restart", *CLUSTER_NODES)
        for service in CLUSTER_NODES:
            cluster.compose.wait_healthy(service)
        log(f"cluster: every master healthy {time.monotonic() - restarting:.1f}s after")
        deadline = time.monotonic() + RECOVERY_LIMIT
        while not load.acked_after(restarting) and time.monotonic() < deadline:
            time.sleep(0.5)
        assert load.acked_after(restarting), "no write acknowledged after the restart"
        log(f"cluster: writes acknowledged again {time.monotonic() - restarting:.1f}s after")
        time.sleep(kit.AFTER_RECOVERY)
    finally:
        load.halt()

    load.check("cluster", restarting)
    assert user.get("/v1/kv/load-first").content == b"one"
    cluster.wait_for("/ready", 200, timeout=120)
    for service in CLUSTER_NODES:
        assert cluster_info(cluster, service).get("cluster_state") == "ok", service
