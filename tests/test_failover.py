"""Sentinel failover, measured (issue 12, item 1): both planes in process over a
real Sentinel topology (tests/sentinel_kit.py: a primary, two replicas, three
sentinels on loopback), a write and read load from a few threads, then the
primary is SIGKILLed.

Measured, per durability mode: how long until writes succeed again, every
answer in the meantime (only 2xx, or 503 with Retry-After; never a 500), and
how many acknowledged writes the promoted replica lacks. ``replicated`` must
lose none; ``everysec`` is measured and reported, not asserted (replication is
asynchronous). Nothing is asserted about time. The figures are printed as
``FIGURES failover-<mode>`` (``-s``) and saved under ``$PLAB_FIGURES_DIR`` when
set (faultkit.record); docs/RELIABILITY.md "Failover (Sentinel)" quotes them.

The first tests prove the ``replicated`` mode's checks on their own: no replica
(503, and /ready 503), a replica that does not acknowledge (503), the write and
its WAIT on one connection, and min-replicas-to-write (refused before it runs).
"""

from __future__ import annotations

import collections
import contextlib
import secrets
import signal
import threading
import time

import pytest
import redis
from faultkit import record
from partition_kit import run_in_namespace
from sentinel_kit import (
    PLANE_USER,
    SERVICE,
    SentinelTopology,
    close_planes,
    planes_over,
    warmed_load,
)

from productionlab.errors import StoreUnavailable
from productionlab.redis_process import RedisProcess
from productionlab.settings import Settings
from productionlab.store.connection import connect
from productionlab.store.durability import Durability
from productionlab.store.pinning import PinnableRedis
from tests.layout_kit import item_of

RECOVERY_LIMIT = 45.0  # seconds after the kill for writes to come back
AFTER_RECOVERY = 2.0  # seconds of load kept after the first write succeeds again


@pytest.fixture
def lone_primary():
    """A primary with no replica (``min-replicas-to-write 0``) and planes in
    ``replicated`` mode over it."""
    primary = RedisProcess()
    primary.start()
    planes = planes_over(
        primary, None, {"PLAB_DURABILITY": "replicated", "PLAB_REPLICA_TIMEOUT_MS": "200"}
    )
    yield primary, planes
    close_planes(planes)
    primary.stop()


def test_replicated_mode_without_a_replica_answers_503_and_is_not_ready(lone_primary):
    primary, planes = lone_primary
    admin = planes.admin()
    key = f"lone-{secrets.token_hex(4)}"
    answer = admin.put(f"/v1/kv/{key}", data=b"v")
    assert answer.status_code == 503, answer.text
    assert answer.headers["Retry-After"].isdigit()
    assert answer.json()["error"]["code"] == "unavailable"
    # Not acknowledged, yet applied on the primary: redis has no rollback (documented).
    assert primary.client.hget(item_of(key), "v") == b"v"
    assert admin.get("/ready").status_code == 503


def primary_with_replica() -> tuple[RedisProcess, RedisProcess]:
    """A primary and one replica of it, started, the replica in sync (the caller stops both)."""
    primary = RedisProcess()
    primary.start()
    replica = RedisProcess(
        password=primary.password,
        config={"masterauth": primary.password, "replicaof": f"127.0.0.1 {primary.port}"},
    )
    try:
        replica.start()
        deadline = time.monotonic() + 30
        while replica.client.info("replication").get("master_link_status") != "up":
            assert time.monotonic() < deadline, "the replica never synced"
            time.sleep(0.1)
    except BaseException:
        replica.stop()
        primary.stop()
        raise
    return primary, replica


def test_replicated_mode_waits_for_the_writes_own_replication(tmp_path):
    """A stalled replica (SIGSTOP: it stays connected but acknowledges nothing):
    the write is refused, and answered 201 again once the replica acknowledges."""
    primary, replica = primary_with_replica()
    planes = None
    try:
        planes = planes_over(
            primary, None, {"PLAB_DURABILITY": "replicated", "PLAB_REPLICA_TIMEOUT_MS": "300"}
        )
        admin = planes.admin()
        assert admin.put("/v1/kv/rep-before", data=b"v").status_code in (200, 201)
        replica.process.send_signal(signal.SIGSTOP)
        try:
            stalled = [admin.put(f"/v1/kv/rep-stalled-{n}", data=b"v") for n in range(3)]
        finally:
            replica.process.send_signal(signal.SIGCONT)
        assert [a.status_code for a in stalled] == [503, 503, 503], [a.text for a in stalled]
        assert all(a.headers["Retry-After"].isdigit() for a in stalled)
        deadline = time.monotonic() + 30
        while admin.put("/v1/kv/rep-after", data=b"v").status_code not in (200, 201):
            assert time.monotonic() < deadline, "writes never came back after SIGCONT"
            time.sleep(0.2)
        assert replica.client.hget(item_of("rep-after"), "v") == b"v"
    finally:
        if planes is not None:
            close_planes(planes)
        replica.stop()
        primary.stop()


def test_the_write_and_its_wait_share_one_connection():
    """WAIT counts what its own connection wrote; through a pool the write and the
    WAIT could travel on two connections (and an idle one's WAIT proves nothing).
    Between ``before_write`` and ``after_write`` the writing thread holds one
    connection that no other thread gets; ``after_write`` gives it back, also
    when it refuses the write."""
    with RedisProcess() as direct:
        options = {k: v for k, v in direct.connection_pool.connection_kwargs.items()}
        client = PinnableRedis(connection_pool=redis.BlockingConnectionPool(**options))
        durability = Durability(client, strict=False, replicated=True, replica_timeout_ms=50)
        durability.before_write()
        mine = client.client_id()
        others: list[int] = []
        thread = threading.Thread(target=lambda: others.append(client.client_id()))
        thread.start()
        thread.join(10)
        assert client.client_id() == mine
        assert others and others[0] != mine
        with pytest.raises(StoreUnavailable):
            durability.after_write()  # no replica: WAIT 1 counts 0
        assert not client.pinned
        client.close()


def test_a_dropped_connection_is_never_waited_on_again():
    """The write's connection drops before its WAIT (killed server-side): the write
    is not acknowledged. redis-py would reconnect and retry the WAIT on a fresh
    connection, which has written nothing and counts the live replica: a false 2xx."""
    primary, replica = primary_with_replica()
    try:
        options = dict(primary.client.connection_pool.connection_kwargs)
        client = PinnableRedis(connection_pool=redis.BlockingConnectionPool(**options))
        durability = Durability(client, strict=False, replicated=True)
        durability.before_write()
        client.set("dropped", "v")
        primary.client.client_kill_filter(_id=client.client_id())
        with pytest.raises((StoreUnavailable, redis.ConnectionError)):
            durability.after_write()
        durability.before_write()  # the next write starts on a live connection
        client.set("next", "v")
        durability.after_write()
        assert not client.pinned
        client.close()
    finally:
        replica.stop()
        primary.stop()


def test_a_pinned_connection_follows_a_failover():
    """A failover while a thread holds a pin: its next commands reach the new
    primary. redis-py reconnects a dropped connection it uses directly to its old
    address (the demoted primary: READONLY, for good); ours asks Sentinel."""
    topology = SentinelTopology().start()
    try:
        assert topology.primary is not None and topology.sentinels[0].client is not None
        settings = Settings(
            redis_url=topology.url, redis_username=PLANE_USER, redis_password=topology.password
        )
        client = connect(settings)
        durability = Durability(client, strict=False, replicated=True)
        durability.before_write()
        client.set("pin", "before")
        durability.after_write()
        durability.before_write()  # a write whose after_write never comes keeps its pin
        old = topology.primary.port
        topology.sentinels[0].client.execute_command("SENTINEL", "FAILOVER", SERVICE)
        new = topology.node_at(topology.wait_for_new_master(old, 30) or old)
        assert new.port != old and new.client is not None
        deadline = time.monotonic() + 45
        attempt = 0
        while True:  # the thread's next commands, before any next before_write
            attempt += 1
            with contextlib.suppress(redis.RedisError):
                client.set("pin", f"after-{attempt}")
            if new.client.get("pin") == f"after-{attempt}".encode():
                break  # it reached the new primary
            assert time.monotonic() < deadline, "commands never reached the new primary"
            time.sleep(0.2)
        with contextlib.suppress(
            StoreUnavailable
        ):  # the new primary's replicas may be re-attaching
            durability.after_write()
        while True:
            durability.before_write()
            client.set("pin", "final")
            try:
                durability.after_write()
                break
            except StoreUnavailable:  # the new primary's replicas are still re-attaching
                assert time.monotonic() < deadline, "no replica acknowledged a write"
                time.sleep(0.2)
        assert new.client.get("pin") == b"final"
        client.close()
    finally:
        topology.stop()


def test_min_replicas_to_write_refuses_before_the_write_runs():
    """``min-replicas-to-write 1`` with no replica: redis refuses the script
    (NOREPLICAS) before it writes anything; the plane answers 503, nothing is applied."""
    primary = RedisProcess(config={"min-replicas-to-write": "1"})
    primary.start()
    planes = None
    try:
        primary.client.config_set("min-replicas-to-write", "0")  # bootstrap writes the admin
        planes = planes_over(primary, None, {"PLAB_DURABILITY": "replicated"})
        primary.client.config_set("min-replicas-to-write", "1")
        answer = planes.admin().put("/v1/kv/noreplicas", data=b"v")
        assert answer.status_code == 503, answer.text
        assert answer.headers["Retry-After"].isdigit()
        assert primary.client.exists(item_of("noreplicas")) == 0
    finally:
        if planes is not None:
            close_planes(planes)
        primary.stop()


# --- the failover under load -------------------------------------------------------
def measure_failover(durability: str) -> dict:
    topology = SentinelTopology(min_replicas=1 if durability == "replicated" else 0).start()
    planes = None
    load = None
    try:
        assert topology.primary is not None
        planes = planes_over(topology.primary, topology.url, {"PLAB_DURABILITY": durability})
        load = warmed_load(planes)
        acked_before_kill = load.acked_count()
        old_port = topology.primary.port
        topology.kill_primary()
        # After the kill has returned: a write that started earlier may have been
        # answered by the dying primary, and is no proof that writes came back.
        killed_at = time.monotonic()
        back = None
        deadline = killed_at + RECOVERY_LIMIT
        while back is None and time.monotonic() < deadline:
            time.sleep(0.1)
            back = load.first_write_back(killed_at)
        assert back is not None, f"writes did not come back within {RECOVERY_LIMIT} s"
        time.sleep(AFTER_RECOVERY)
        load.halt()
        new_port = topology.wait_for_new_master(old_port, timeout=10)
        assert new_port is not None, "the sentinels did not agree on a new primary"
        promoted = topology.node_at(new_port).client
        assert promoted is not None
        lost = load.lost_on(promoted)
        during = [a for a in load.answers if a.started >= killed_at and a.ended <= back.ended]
        return {
            "durability": durability,
            "acked_before_kill": acked_before_kill,
            "acked_total": len(load.acked),
            "lost_acked": len(lost),
            "lost_keys": lost[:20],
            "writes_back_after_s": round(back.ended - killed_at, 2),
            "answers_in_gap": dict(collections.Counter(f"{a.kind} {a.status}" for a in during)),
            "answers_total": dict(
                collections.Counter(f"{a.kind} {a.status}" for a in load.answers)
            ),
            "bad": [
                (a.kind, a.status, a.body)
                for a in load.answers
                if a.status not in (200, 201, 503, 404) or (a.status == 503 and not a.retry_after)
            ][:20],
            "read_404": sum(1 for a in load.answers if a.kind == "read" and a.status == 404),
        }
    finally:
        if load is not None:
            load.halt()
        if planes is not None:
            close_planes(planes)
        topology.stop()


@pytest.mark.slow
@pytest.mark.parametrize("durability", ["replicated", "everysec"])
def test_sigkill_the_primary_under_load(durability):
    result = measure_failover(durability)
    record(f"failover-{durability}", result)
    assert result["bad"] == [], result["bad"]
    writes = {k for k in result["answers_total"] if k.startswith("write ")}
    assert writes <= {"write 200", "write 201", "write 503"}, writes
    if durability == "replicated":
        assert result["lost_acked"] == 0, result["lost_keys"]
        assert result["read_404"] == 0


@pytest.mark.slow
@pytest.mark.parametrize("durability", ["replicated", "everysec"])
def test_partition_the_primary_from_its_replicas_and_sentinels(durability):
    """A real partition, in a private network namespace (tests/partition_kit.py):
    the sentinels promote a replica while the planes still reach the old primary;
    when the partition heals the old primary becomes a replica and drops what it
    took alone ("last failover wins"). ``replicated`` acknowledged none of that;
    ``everysec`` is measured."""
    result = run_in_namespace(durability)
    record(f"partition-{durability}", result)
    assert result["bad"] == [], result["bad"]
    assert result["promoted_after_s"] is not None, "the sentinels never promoted a replica"
    assert result["old_primary_a_replica_after_heal_s"] is not None, (
        "the old primary never rejoined"
    )
    assert result["writes_on_new_primary_after_heal_s"] is not None, "writes never came back"
    if durability == "replicated":
        assert result["acked_sent_while_partitioned"] == 0
        assert result["lost_acked"] == 0
