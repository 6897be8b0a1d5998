"""Both planes over a real three-master Redis Cluster (tests/cluster_kit.py,
``PLAB_REDIS_URL=redis+cluster://...``), whatever PLAB_TEST_REDIS says: writes and
reads, the users' and the change feed's pub/sub, the probes and admin reads that
ask a server (INFO, CONFIG GET, SCAN), the audit verification and a backup, and a
master restart under traffic (503 + Retry-After, never 500).

The KV data lives in 16 virtual shards with their own placed hash tags
(``productionlab/store/layout.py``; 5/6/5 shards on the three masters), and users,
tokens, the per-user limit and the quota ledger stay in ``{plab}``, on one master
every KV request touches; ``test_keys_per_master`` asserts the spread.
"""

from __future__ import annotations

import itertools
import secrets
import shutil
import tempfile
import threading
import time
from pathlib import Path

import pytest

from productionlab import ap, backup, cp
from productionlab.audit import Actor
from productionlab.configfiles import plane_redis_users
from productionlab.lastused import LastUsed
from productionlab.redis_process import RedisProcess
from productionlab.secretgen import ensure_secrets
from productionlab.securitymetrics import record_audit_verification
from productionlab.serve import bootstrap_control_plane
from productionlab.services import services_of
from productionlab.settings import ConfigError, Settings
from productionlab.store.layout import LAYOUT_KEY, shard_for
from tests.cluster_kit import RedisClusterKit
from tests.inprocess import Planes, park_watch, plane_settings, start_planes, stop_listeners
from tests.layout_kit import item_of
from tests.test_properties import CompareAndSet, Transactions, run_machine
from tests.test_settings import strong_env

WRITES = 200
RESTART_REQUESTS = 400  # bounded: the outage test never waits on the clock alone


@pytest.fixture(scope="module")
def cluster_planes() -> Planes:
    # appendfsync always: an acknowledged write must survive the SIGKILL below.
    kit = RedisClusterKit(appendfsync="always").start()
    planes = start_planes(kit)
    yield planes
    planes.stop()


def kit_of(planes: Planes) -> RedisClusterKit:
    assert isinstance(planes.redis, RedisClusterKit)
    return planes.redis


def test_the_planes_write_and_read_over_the_cluster(cluster_planes):
    planes, admin = cluster_planes, cluster_planes.admin()
    key = f"c-{secrets.token_hex(6)}"
    written = admin.put(f"/v1/kv/{key}", data=b"on a cluster")
    assert written.status_code in (200, 201), written.text
    owner = kit_of(planes).node_for(item_of(key))  # the item, on its shard's master
    assert owner.client is not None and owner.client.hget(item_of(key), "v") == b"on a cluster"
    read = admin.get(f"/v1/kv/{key}")
    assert read.status_code == 200 and read.content == b"on a cluster"
    listed = admin.get("/v1/kv", params={"prefix": "c-"})
    assert listed.status_code == 200, listed.text
    assert key in listed.json()["keys"]
    # Compare-and-set by version, then a delete.
    version = written.json()["version"]
    stale = admin.put(f"/v1/kv/{key}", data=b"x", headers={"If-Match": f'"{version - 1}"'})
    assert stale.status_code == 412, stale.text
    assert admin.delete(f"/v1/kv/{key}").status_code in (200, 204)
    assert admin.get(f"/v1/kv/{key}").status_code == 404
    # The main audit chain (the users' and tokens' events) sits on {plab}'s master.
    main = kit_of(planes).node_for("{plab}:audit")
    assert main.client is not None and main.client.exists("{plab}:audit") == 1


def test_users_and_their_invalidation_events_work_over_the_cluster(cluster_planes):
    """A user created on the control plane signs in on the app plane; a rotated
    password stops the old one at once (the users' pub/sub event clears the
    app plane's verification cache)."""
    admin = cluster_planes.admin()
    name = f"u{secrets.token_hex(6)}"
    created = admin.post("/admin/users", json={"name": name, "role": "writer", "prefixes": ["*"]})
    assert created.status_code == 201, created.text
    user = cluster_planes.client(name, created.json()["password"])
    assert user.put(f"/v1/kv/{name}-k", data=b"v").status_code in (200, 201)
    assert user.get(f"/v1/kv/{name}-k").status_code == 200  # now cached on the app plane
    rotated = admin.post(f"/admin/users/{name}/rotate")
    assert rotated.status_code == 200, rotated.text
    for _ in range(200):  # the event is asynchronous: bounded, not timed
        if user.get(f"/v1/kv/{name}-k").status_code == 401:
            break
        time.sleep(0.05)
    assert user.get(f"/v1/kv/{name}-k").status_code == 401
    again = cluster_planes.client(name, rotated.json()["password"])
    assert again.get(f"/v1/kv/{name}-k").status_code == 200


def assert_a_watch_wakes(planes: Planes, key: str) -> None:
    """A watch parked on ``key`` wakes when it is written (the change feed's
    pub/sub works)."""
    admin = planes.admin()
    version = admin.put(f"/v1/kv/{key}", data=b"1").json()["version"]
    waiting, answers = park_watch(planes, admin, f"/v1/watch/{key}?index={version}&wait=60")
    second = admin.put(f"/v1/kv/{key}", data=b"2").json()["version"]
    waiting.join(90)
    assert answers and answers[0].status_code == 200, answers
    assert answers[0].json()["index"] >= second


def test_a_watch_wakes_on_a_write_over_the_cluster(cluster_planes):
    assert_a_watch_wakes(cluster_planes, f"w-{secrets.token_hex(6)}")


class ClusterCompareAndSet(CompareAndSet):
    key_prefix = "ccas"


class ClusterTransactions(Transactions):
    key_prefix = "ctxn"


def test_the_compare_and_set_and_transaction_state_machines_over_the_cluster(cluster_planes):
    """tests/test_properties.py's machines (there over a process stack on one
    redis) on the in-process planes over the cluster, as an admin-role user of
    planes whose user rate is raised (each transaction operation is charged);
    then the audit chain they extended verifies."""
    client = cluster_planes.variant(PLAB_USER_RATE="1000000/minute")
    ClusterCompareAndSet.direct = client
    run_machine(ClusterCompareAndSet, "PLAB_CAS_EXAMPLES", steps=25)
    ClusterTransactions.direct = client
    run_machine(ClusterTransactions, "PLAB_TXN_EXAMPLES", steps=20)
    verified = cluster_planes.admin().post("/admin/audit/verify")
    assert verified.status_code == 200, verified.text


def test_probes_admin_reads_audit_and_backup_work_over_the_cluster(cluster_planes):
    admin = cluster_planes.admin()
    for plane in ("ap", "cp"):
        ready = admin.direct("GET", plane, "/ready")
        assert ready.status_code == 200, ready.text
        assert admin.direct("GET", plane, "/metrics").status_code == 200
    stats = admin.get("/admin/stats")
    assert stats.status_code == 200, stats.text
    assert stats.json()["aof_enabled"] is True
    verified = admin.post("/admin/audit/verify")
    assert verified.status_code == 200, verified.text
    checked = admin.get("/admin/check-prod")
    assert checked.status_code == 200, checked.text
    findings = " ".join(str(f) for f in checked.json()["findings"]).lower()
    assert "aof" not in findings and "appendonly" not in findings, findings
    backup = admin.post("/admin/backups")
    assert backup.status_code == 201, backup.text
    name = backup.json()["name"]
    checked = admin.post(f"/admin/backups/{name}/verify")
    assert checked.status_code == 200, checked.text


def test_a_backup_restores_over_the_cluster(cluster_planes):
    """Restore (``plab backup restore --overwrite``) brings a deleted key back and
    charges the restored keys to their writers (a script that once declared no key
    and so ran on a random master)."""
    admin = cluster_planes.admin()
    key = f"r-{secrets.token_hex(6)}"
    assert admin.put(f"/v1/kv/{key}", data=b"kept").status_code == 201
    made = admin.post("/admin/backups")
    assert made.status_code == 201, made.text
    assert admin.delete(f"/v1/kv/{key}").status_code == 204
    wired = services_of(cluster_planes.cp)
    path = backup.backup_path(wired.settings.backup_dir, made.json()["name"])
    restored = backup.restore_backup(
        wired.redis, path, wired.settings.backup_key, Actor("test"), overwrite=True, progress=False
    )
    assert restored >= 1
    again = admin.get(f"/v1/kv/{key}")
    assert again.status_code == 200 and again.content == b"kept"
    assert admin.post("/admin/audit/verify").status_code == 200


def test_keys_per_master(cluster_planes, record_property):
    """The virtual shards spread the KV items over every master (issue 12 item 3):
    after WRITES writes through the routes, every master holds some of the items
    and none more than about half (the placed tags split the 16 shards 5/6/5)."""
    admin = cluster_planes.admin()
    kit = kit_of(cluster_planes)
    run = secrets.token_hex(4)
    written = [f"spread-{run}-{n}" for n in range(WRITES)]
    for key in written:
        answer = admin.put(f"/v1/kv/{key}", data=b"x")
        assert answer.status_code in (200, 201), answer.text
    per_master = kit.keys_per_node()
    record_property("keys_per_master", per_master)
    print(f"keys per master after {WRITES} writes: {per_master}")
    assert len(per_master) == 3 and sum(per_master.values()) >= WRITES
    items: dict[int, int] = {}
    for key in written:
        node = kit.node_for(item_of(key))
        assert node.client is not None and node.client.exists(item_of(key)) == 1
        items[node.port] = items.get(node.port, 0) + 1
    record_property("items_per_master", items)
    assert len(items) == 3, items
    assert max(items.values()) <= WRITES * 0.55, items


def kill_under_traffic(
    planes: Planes,
    node: RedisProcess,
    writes: list[str],
    reads: list[str],
    until_acked: set[str] | None = None,
) -> dict[str, bytes]:
    """SIGKILL the master ``node``, then write the new keys ``writes`` (in order) and
    read the keys of ``reads`` (in turn) through the routes until six answers are
    503 and, with ``until_acked``, one write of those keys is acknowledged (bounded
    by RESTART_REQUESTS): every answer must be 2xx, or 503 + Retry-After with the
    code ``unavailable``, never 500. Returns the writes acknowledged during the
    outage (key: value), for the caller to find later."""
    admin = planes.admin()
    kit_of(planes).kill(node)
    answers = []
    acked: dict[str, bytes] = {}
    for n, key in enumerate(writes[:RESTART_REQUESTS]):
        value = f"down {n}".encode()
        written = admin.put(f"/v1/kv/{key}", data=value)
        if written.status_code in (200, 201):
            acked[key] = value
        answers += [written, admin.get(f"/v1/kv/{reads[n % len(reads)]}")]
        served = until_acked is None or any(k in until_acked for k in acked)
        if served and sum(1 for a in answers if a.status_code == 503) >= 6:
            break
    statuses = sorted({a.status_code for a in answers})
    assert 503 in statuses, statuses
    for answer in answers:
        assert answer.status_code in (200, 201, 503), (answer.status_code, answer.text)
        if answer.status_code == 503:
            assert int(answer.headers["Retry-After"]) >= 1
            assert answer.json()["error"]["code"] == "unavailable"
    return acked


def restart_and_write(planes: Planes, node: RedisProcess, key: str) -> RedisProcess:
    """Restart the killed ``node`` (from its AOF, appendfsync always) and write
    ``key`` until the write succeeds: 503 meanwhile, never 500."""
    admin = planes.admin()
    again = kit_of(planes).restart(node)
    back = None
    for n in range(RESTART_REQUESTS):
        back = admin.put(f"/v1/kv/{key}-{n}", data=b"x")
        assert back.status_code in (200, 201, 503), (back.status_code, back.text)
        if back.status_code in (200, 201):
            break
        time.sleep(0.05)
    assert back is not None and back.status_code in (200, 201), back.text
    return again


def assert_kept(planes: Planes, acked: dict[str, bytes]) -> None:
    """Every acknowledged write reads back with its value."""
    admin = planes.admin()
    for key, value in acked.items():
        kept = admin.get(f"/v1/kv/{key}")
        assert kept.status_code == 200 and kept.content == value, (key, kept.text)


def test_the_planes_survive_a_master_restart(cluster_planes):
    """SIGKILL a master while writes and reads go on, twice: first the master of
    ``{plab}`` (users, tokens, the per-user limit and the quota ledger, which every
    KV request touches: the ticket of a read, the reservation and settle of a
    write), then a master that holds only virtual shards (the items, counters,
    indexes and audit chains of 5 or 6 of the 16). Every answer is 2xx or 503 with
    Retry-After, never 500; the planes are unready while the ``{plab}`` master is
    down; once each master is back (its AOF, appendfsync always) every write
    acknowledged before or during its outage is there, new writes succeed, a watch
    wakes and every audit chain verifies."""
    planes, admin = cluster_planes, cluster_planes.admin()
    kit = kit_of(planes)
    run = secrets.token_hex(4)
    # Every master's keys, found while all answer (CLUSTER KEYSLOT asks a node).
    main = kit.node_for(LAYOUT_KEY)
    shard_master = next(node for node in kit.nodes if node is not main)
    candidates = [f"rs-{run}-{n}" for n in range(200)]
    on_shard_master = [k for k in candidates if kit.node_for(item_of(k)) is shard_master]
    elsewhere = [k for k in candidates if kit.node_for(item_of(k)) is not shard_master]
    assert len(on_shard_master) >= 11 and len(elsewhere) >= 10
    acked: dict[str, bytes] = {}
    for key in on_shard_master[:10] + elsewhere[:10]:
        answer = admin.put(f"/v1/kv/{key}", data=key.encode())
        assert answer.status_code in (200, 201), answer.text
        acked[key] = key.encode()

    downs = [f"rs-{run}-down-{n}" for n in range(RESTART_REQUESTS)]
    try:
        during = kill_under_traffic(planes, main, downs, list(acked))
        acked.update(during)
        for plane in ("ap", "cp"):
            ready = admin.direct("GET", plane, "/ready")
            assert ready.status_code == 503, ready.text
    finally:
        restart_and_write(planes, main, f"rs-{run}-back")
    assert_kept(planes, acked)
    assert_a_watch_wakes(planes, f"rs-{run}-watch")  # the feed resubscribed

    # A shard master: its shards' keys answer 503 while it is down, the other
    # masters keep serving theirs (cluster-require-full-coverage no), and what they
    # acknowledged meanwhile is kept.
    pool = [f"rs-{run}-down2-{n}" for n in range(300)]
    dead = [k for k in pool if kit.node_for(item_of(k)) is shard_master]
    live = [k for k in pool if kit.node_for(item_of(k)) is not shard_master]
    writes = [k for pair in zip(dead, live, strict=False) for k in pair]
    try:
        # The first writes after the kill may meet the client's rediscovery of the
        # slot map (503, like any redis fault); the other masters' keys must then be
        # served while this one is still down.
        during = kill_under_traffic(
            planes, shard_master, writes, on_shard_master[:10], until_acked=set(live)
        )
        assert during and set(during) <= set(live), sorted(during)
        acked.update(during)
    finally:  # the module's cluster serves the next tests whatever happened here
        restart_and_write(planes, shard_master, f"rs-{run}-back-shard")
    assert_kept(planes, acked)
    assert_a_watch_wakes(planes, on_shard_master[10])  # a key of the restarted master
    assert admin.post("/admin/audit/verify").status_code == 200


def test_a_full_master_makes_the_planes_unready_and_writes_503(cluster_planes):
    """``maxmemory`` on one master only (the one of ``{plab}``, and of the key
    written): /ready must see it although a cluster client's INFO goes to one
    node (the seed, unless asked), and a write there is a 503."""
    admin = cluster_planes.admin()
    kit = kit_of(cluster_planes)
    owner = kit.node_for("{plab}:audit")
    assert owner.client is not None
    run = secrets.token_hex(4)
    key = next(
        f"full-{run}-{n}"
        for n in itertools.count()
        if kit.node_for(shard_for(f"full-{run}-{n}").item(f"full-{run}-{n}")) is owner
    )
    owner.client.config_set("maxmemory", "1")
    try:
        for plane in ("ap", "cp"):
            ready = admin.direct("GET", plane, "/ready")
            assert ready.status_code == 503, ready.text
        refused = admin.put(f"/v1/kv/{key}", data=b"x")
        assert refused.status_code == 503, refused.text
        assert int(refused.headers["Retry-After"]) >= 1
    finally:
        owner.client.config_set("maxmemory", "0")
    assert admin.direct("GET", "ap", "/ready").status_code == 200


@pytest.mark.parametrize("mode", ["strict", "replicated"])
def test_durability_beyond_everysec_is_refused_at_start_with_a_cluster(mode):
    """WAIT/WAITAOF count what their own connection wrote, and a cluster client
    sends them to one node on another connection: refused, not promised."""
    url = "redis+cluster://127.0.0.1:7000"
    with pytest.raises(ConfigError) as failure:
        Settings.from_env(strong_env(PLAB_DURABILITY=mode, PLAB_REDIS_URL=url))
    assert f"PLAB_DURABILITY={mode} is not supported with redis+cluster://" in str(failure.value)
    assert Settings.from_env(strong_env(PLAB_REDIS_URL=url)).durability == "everysec"


def test_the_planes_run_as_their_own_acl_users_over_the_cluster():
    """Each plane as its own redis user with the rules redis.conf.j2 gives it (set
    on every master): a cluster client needs CLUSTER SLOTS to find the masters,
    /ready asks CLUSTER INFO, and the rest must be what one redis allows."""
    kit = RedisClusterKit().start()
    state = Path(tempfile.mkdtemp(prefix="plab-cluster-acl-"))
    apps: dict = {}
    try:
        ensure_secrets(state / "secrets")
        users = {u.name: u for u in plane_redis_users(state / "secrets")}
        kit.add_users(list(users.values()))
        for plane, module in (("cp", cp), ("ap", ap)):
            user = users[f"plab-{plane}"]
            own = {"PLAB_REDIS_USERNAME": user.name, "PLAB_REDIS_PASSWORD": user.password}
            apps[plane] = module.create_app(plane_settings(kit, state, plane, own))
            services_of(apps[plane]).users.start_listener()
        bootstrap_control_plane(services_of(apps["cp"]))
        password = (state / "secrets" / "admin.password").read_text().strip()
        planes = Planes(kit, apps["ap"], apps["cp"], state, password)
        admin = planes.admin()
        for plane in ("ap", "cp"):
            ready = admin.direct("GET", plane, "/ready")
            assert ready.status_code == 200, ready.text
        key = f"acl-{secrets.token_hex(4)}"
        written = admin.put(f"/v1/kv/{key}", data=b"as plab-ap")
        assert written.status_code == 201, written.text
        assert admin.get(f"/v1/kv/{key}").content == b"as plab-ap"
        txn = admin.post("/v1/txn", json={"ops": [{"op": "get", "key": key}]})
        assert txn.status_code == 200, txn.text
        assert (
            admin.get(f"/v1/watch/{key}?index={written.json()['version']}&wait=0").status_code
            == 200
        )
        name = f"u{secrets.token_hex(6)}"
        made = admin.post("/admin/users", json={"name": name, "role": "reader", "prefixes": ["*"]})
        assert made.status_code == 201, made.text
        reader = planes.client(name, made.json()["password"])
        assert reader.get(f"/v1/kv/{key}").status_code == 200
        assert admin.get(f"/admin/users/{name}").status_code == 200
        assert admin.get("/admin/stats").status_code == 200
        assert admin.post("/admin/audit/verify").status_code == 200
        assert admin.post("/admin/backups").status_code == 201
    finally:
        stop_listeners(list(apps.values()))
        kit.stop()
        shutil.rmtree(state, ignore_errors=True)


def test_aof_off_on_the_data_master_makes_the_planes_unready(cluster_planes):
    """``appendonly no`` on one master only (``{plab}``'s): /ready says so
    although a cluster client's INFO goes to one node."""
    admin = cluster_planes.admin()
    owner = kit_of(cluster_planes).node_for("{plab}:audit")
    assert owner.client is not None
    owner.client.config_set("appendonly", "no")
    try:
        for plane in ("ap", "cp"):
            ready = admin.direct("GET", plane, "/ready")
            assert ready.status_code == 503, ready.text
    finally:
        owner.client.config_set("appendonly", "yes")
    for _ in range(400):  # bounded: until the AOF rewrite that turning it on starts is done
        if admin.direct("GET", "ap", "/ready").status_code == 200:
            break
        time.sleep(0.05)
    assert admin.direct("GET", "ap", "/ready").status_code == 200


def test_stats_and_check_prod_report_every_master(cluster_planes):
    """``/admin/stats`` and ``check-prod`` read memory and AOF from every master, not
    the one node a cluster client's INFO reaches: AOF off on a master that is not the
    seed shows, named by its node."""
    admin = cluster_planes.admin()
    kit = kit_of(cluster_planes)
    stats = admin.get("/admin/stats")
    assert stats.status_code == 200, stats.text
    masters = stats.json()["redis_masters"]
    assert len(masters) == 3 and all(m["aof_enabled"] for m in masters), masters
    assert stats.json()["aof_enabled"] is True
    other = kit.nodes[1]  # not the seed node the planes were given
    assert other.client is not None
    other.client.config_set("appendonly", "no")
    try:
        stats = admin.get("/admin/stats")
        assert stats.status_code == 200, stats.text
        assert stats.json()["aof_enabled"] is False, stats.json()
        off = [m for m in stats.json()["redis_masters"] if not m["aof_enabled"]]
        assert [m["node"] for m in off] == [f"127.0.0.1:{other.port}"], off
        checked = admin.get("/admin/check-prod")
        assert checked.status_code == 200, checked.text
        aof = [f for f in map(str, checked.json()["findings"]) if "appendonly no" in f]
        assert aof == [f"redis 127.0.0.1:{other.port}: AOF persistence is off (appendonly no)"]
    finally:
        other.client.config_set("appendonly", "yes")
    for _ in range(400):  # bounded: until the AOF rewrite that turning it on starts is done
        if admin.direct("GET", "ap", "/ready").status_code == 200:
            break
        time.sleep(0.05)


def test_a_plane_started_while_no_cluster_node_answers_waits_for_it():
    """Both planes made while every master is down (a compose start, a cluster
    restart): they start, as over one redis; requests answer 503 + Retry-After,
    /ready 503, /metrics 200; what survives a redis failure (last-used records,
    the audit-verification gauge, the data migration) survives a cluster with no
    node too (redis-py's RedisClusterException is not a RedisError); the control
    plane's bootstrap retries until the cluster is back, then everything works."""
    kit = RedisClusterKit().start()
    state = Path(tempfile.mkdtemp(prefix="plab-cluster-late-"))
    apps: dict = {}
    try:
        for node in list(kit.nodes):
            kit.kill(node)
        ensure_secrets(state / "secrets")
        for plane, module in (("cp", cp), ("ap", ap)):
            apps[plane] = module.create_app(plane_settings(kit, state, plane))
            services_of(apps[plane]).users.start_listener()
        wired = services_of(apps["cp"])
        planes = Planes(kit, apps["ap"], apps["cp"], state, "not-yet")
        someone = planes.client("admin", "wrong")
        for path in ("/v1/kv/late", "/admin/stats"):
            answer = someone.get(path)
            assert answer.status_code == 503, (path, answer.status_code, answer.text)
            assert int(answer.headers["Retry-After"]) >= 1
        for plane in ("ap", "cp"):
            assert someone.direct("GET", plane, "/ready").status_code == 503
            assert someone.direct("GET", plane, "/metrics").status_code == 200
        assert LastUsed(wired.redis).touch("someone") is False
        record_audit_verification(wired.redis, True)
        cp.migrate_data(wired)
        bootstrap = threading.Thread(target=bootstrap_control_plane, args=(wired,))
        bootstrap.start()
        time.sleep(1)  # let it meet the dead cluster at least once (not a speed claim)
        assert bootstrap.is_alive()
        kit.restart_all()
        bootstrap.join(120)
        assert not bootstrap.is_alive()
        password = (state / "secrets" / "admin.password").read_text().strip()
        admin = Planes(kit, apps["ap"], apps["cp"], state, password).admin()
        for _ in range(200):  # bounded: the cluster client rediscovers the masters
            if admin.direct("GET", "ap", "/ready").status_code == 200:
                break
            time.sleep(0.1)
        for plane in ("ap", "cp"):
            assert admin.direct("GET", plane, "/ready").status_code == 200
        written = admin.put("/v1/kv/late", data=b"after the cluster came")
        assert written.status_code == 201, written.text
        assert admin.get("/v1/kv/late").content == b"after the cluster came"
        assert admin.get("/admin/stats").status_code == 200
        assert_a_watch_wakes(Planes(kit, apps["ap"], apps["cp"], state, password), "late-w")
        for app in apps.values():  # the users' event listeners lived through it
            thread = services_of(app).users.events.thread
            assert thread is not None and thread.is_alive()
    finally:
        stop_listeners(list(apps.values()))
        kit.stop()
        shutil.rmtree(state, ignore_errors=True)


def test_the_admin_route_limit_counts_in_the_cluster(cluster_planes):
    """The control plane's route limiter (Flask-Limiter) keeps its counters through
    the plane's own cluster client: a low admin route rate refuses the third call
    (its storage fails open, so a broken one would let every call through)."""
    admin = cluster_planes.variant(PLAB_ADMIN_ROUTE_RATE="2/minute")
    answers = [admin.get("/admin/stats").status_code for _ in range(4)]
    assert answers[:2] == [200, 200] and 429 in answers[2:], answers
    owner = kit_of(cluster_planes).node_for("{plab}:routelimit")
    assert owner.client is not None and owner.client.keys("{plab}:routelimit*"), "no counter"


def getkeys_calls(planes: Planes) -> int:
    """How many COMMAND GETKEYS every master has answered."""
    total = 0
    for node in planes.redis_nodes():
        try:
            stats = node.info("commandstats")
        finally:
            node.close()
        total += int(stats.get("cmdstat_command|getkeys", {}).get("calls", 0))
    return total


def test_scripts_in_a_pipeline_find_their_slot_without_asking_a_node(cluster_planes):
    """A limited read pipelines the limit script with the shard read, a listing
    every shard's script. redis-py's cluster pipeline knows no routing policy for
    EVALSHA and asked a node COMMAND GETKEYS for each script: one more round trip
    a request. The planes' cluster client routes a script by its KEYS, as a
    script sent alone is (store/connection.py, ``ScriptRouting``)."""
    planes = cluster_planes
    admin = planes.admin()
    name = f"g{secrets.token_hex(5)}"
    created = admin.post("/admin/users", json={"name": name, "role": "writer", "prefixes": ["*"]})
    assert created.status_code == 201, created.text
    user = planes.client(name, created.json()["password"])
    key = f"{name}-k"
    assert user.put(f"/v1/kv/{key}", data=b"v").status_code in (200, 201)
    before = getkeys_calls(planes)
    for _ in range(10):
        assert user.get(f"/v1/kv/{key}").status_code == 200
    assert key in user.get("/v1/kv", params={"prefix": name}).json()["keys"]
    assert user.put(f"/v1/kv/{key}", data=b"w").status_code == 200
    assert getkeys_calls(planes) == before
