"""Per-user quotas of keys and bytes, enforced in the KV core's write script.

A stack with small quotas (5 keys, 2048 bytes a user) serves every test here;
each test uses fresh users, so their usage starts at zero. Accounting is checked
against the truth: the items in redis and whom each one names as its owner.
"""

from __future__ import annotations

import secrets
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest

from productionlab.audit import Actor
from productionlab.kv import Quota
from productionlab.shardbackup import ShardStore
from productionlab.shardkv import ShardedKV
from productionlab.store.durability import Durability
from productionlab.store.layout import all_shards, shard_for
from productionlab.supervisor import Supervisor
from tests.conftest import SMALL_STACK, Client, admin_of, create_user, start_stack, stop_stack
from tests.layout_kit import item_of, kv_state, live_items
from tests.supervisor_kit import restart

MAX_KEYS, MAX_BYTES = 5, 2048


@pytest.fixture(scope="module")
def quota_stack() -> Iterator[Supervisor]:
    stack = start_stack(
        **SMALL_STACK,
        extra_env={"PLAB_USER_MAX_KEYS": str(MAX_KEYS), "PLAB_USER_MAX_BYTES": str(MAX_BYTES)},
    )
    yield stack
    stop_stack(stack)


@pytest.fixture
def qadmin(quota_stack: Supervisor) -> Client:
    return admin_of(quota_stack)


@pytest.fixture
def prefix() -> str:
    return f"q{secrets.token_hex(4)}-"


def usage(admin: Client, name: str) -> dict:
    response = admin.get(f"/admin/users/{name}")
    assert response.status_code == 200, response.text
    body = response.json()
    assert "password" not in body and "password_hash" not in body and "edge_hash" not in body
    return body["usage"]


def truth(stack: Supervisor, prefix: str) -> dict[str, tuple[int, int]]:
    """owner -> (keys, bytes) from the live items under ``prefix`` themselves."""
    client = stack.redis_client("cp")
    owners: dict[str, tuple[int, int]] = {}
    for key, owner, value in live_items(client, prefix):
        assert owner is not None, f"{key} is charged to nobody"
        keys, size = owners.get(owner.decode(), (0, 0))
        owners[owner.decode()] = (keys + 1, size + len(key) + len(value))
    client.close()
    return owners


def state(stack: Supervisor) -> tuple[tuple[int, ...], int]:
    """What a refused write must not change: the version counters and the audit chains."""
    client = stack.redis_client("cp")
    try:
        return kv_state(client)
    finally:
        client.close()


def refused(response) -> None:
    assert response.status_code == 403, response.text
    body = response.json()
    assert body["error"]["code"] == "quota_exceeded"
    assert "quota" in body["error"]["message"]
    assert body["request_id"]


def test_key_quota_refuses_a_new_key_and_changes_nothing(quota_stack, qadmin, prefix):
    writer = create_user(qadmin, "writer", [prefix])
    for i in range(MAX_KEYS):
        assert writer.post(f"/write/{prefix}{i}/v{i}").status_code == 201
    assert usage(qadmin, writer.name)["keys"] == MAX_KEYS
    before, before_usage = state(quota_stack), usage(qadmin, writer.name)
    refused(writer.post(f"/write/{prefix}extra/v"))
    refused(writer.put(f"/v1/kv/{prefix}extra", data=b"v"))
    refused(writer.put(f"/v1/kv/{prefix}extra", data=b"v", headers={"If-None-Match": "*"}))
    assert state(quota_stack) == before  # no version, no audit entry
    assert usage(qadmin, writer.name) == before_usage
    assert writer.get(f"/v1/kv/{prefix}extra").status_code == 404
    # Overwriting a key one already holds adds no key: still allowed at the limit.
    assert writer.post(f"/write/{prefix}0/again").status_code == 200
    assert writer.delete(f"/v1/kv/{prefix}1").status_code == 204
    assert writer.put(f"/v1/kv/{prefix}extra", data=b"v").status_code == 201
    assert usage(qadmin, writer.name)["keys"] == MAX_KEYS
    assert truth(quota_stack, prefix)[writer.name][0] == MAX_KEYS


def test_byte_quota_counts_key_and_value_and_lets_a_user_shrink(quota_stack, qadmin, prefix):
    writer = create_user(qadmin, "writer", [prefix])
    big = b"x" * (MAX_BYTES - 100)
    key = f"{prefix}big"
    assert writer.put(f"/v1/kv/{key}", data=big).status_code == 201
    assert usage(qadmin, writer.name) == {
        "keys": 1,
        "bytes": len(key) + len(big),
        "max_keys": MAX_KEYS,
        "max_bytes": MAX_BYTES,
    }
    before = state(quota_stack)
    refused(writer.put(f"/v1/kv/{prefix}more", data=b"y" * 200))
    refused(writer.put(f"/v1/kv/{key}", data=big + b"z" * 200))  # growing an own key
    assert state(quota_stack) == before
    assert writer.get(f"/v1/kv/{key}").content == big
    assert writer.put(f"/v1/kv/{key}", data=b"small").status_code == 200
    assert usage(qadmin, writer.name)["bytes"] == len(key) + 5
    assert writer.put(f"/v1/kv/{prefix}more", data=b"y" * 200).status_code == 201
    assert truth(quota_stack, prefix) == {writer.name: (2, len(key) + 5 + len(prefix) + 4 + 200)}


def test_an_over_quota_user_may_shrink_but_not_grow(quota_stack, qadmin, prefix):
    """The quota is checked against growth: an overwrite no larger is always allowed."""
    writer = create_user(qadmin, "writer", [prefix])
    other = create_user(qadmin, "writer", [prefix])
    for i in range(MAX_KEYS):
        assert other.post(f"/write/{prefix}{i}/v").status_code == 201
    for i in range(MAX_KEYS):
        assert writer.post(f"/write/{prefix}own{i}/v").status_code == 201
    # Taking over another user's key is a new key for the writer: refused.
    refused(writer.post(f"/write/{prefix}0/mine"))
    assert usage(qadmin, other.name)["keys"] == MAX_KEYS
    assert writer.post(f"/write/{prefix}own0/w").status_code == 200


def test_overwrite_by_another_user_moves_the_charge_and_delete_releases_it(
    quota_stack, qadmin, prefix
):
    first = create_user(qadmin, "writer", [prefix])
    second = create_user(qadmin, "writer", [prefix])
    key = f"{prefix}shared"
    assert first.put(f"/v1/kv/{key}", data=b"1234").status_code == 201
    assert usage(qadmin, first.name)["keys"] == 1
    tag = first.get(f"/v1/kv/{key}").headers["ETag"]
    # Compare-and-set: a failed one moves nothing, a successful one moves the charge.
    stale = f'"{int(tag.strip(chr(34))) - 1}"'  # versions are global: never tag itself
    assert second.put(f"/v1/kv/{key}", data=b"ab", headers={"If-Match": stale}).status_code == 412
    assert usage(qadmin, second.name)["keys"] == 0
    assert second.put(f"/v1/kv/{key}", data=b"ab", headers={"If-Match": tag}).status_code == 200
    assert (usage(qadmin, first.name)["keys"], usage(qadmin, first.name)["bytes"]) == (0, 0)
    assert usage(qadmin, second.name)["bytes"] == len(key) + 2
    assert truth(quota_stack, prefix) == {second.name: (1, len(key) + 2)}
    # Whoever deletes, the charge goes from its owner.
    assert first.delete(f"/v1/kv/{key}").status_code == 204
    assert usage(qadmin, second.name)["keys"] == 0
    assert truth(quota_stack, prefix) == {}


def test_control_plane_writes_are_charged_through_the_same_core(quota_stack, qadmin, prefix):
    writer = create_user(qadmin, "writer", [prefix])
    key = f"{prefix}ops"
    assert writer.put(f"/v1/kv/{key}", data=b"data").status_code == 201
    assert qadmin.put(f"/ops/v1/kv/{key}", data=b"operator").status_code == 200
    assert usage(qadmin, writer.name)["keys"] == 0
    assert truth(quota_stack, prefix) == {"admin": (1, len(key) + 8)}
    assert qadmin.delete(f"/ops/v1/kv/{key}").status_code == 204
    assert truth(quota_stack, prefix) == {}


def wait_gone(client: Client, key: str) -> None:
    deadline = time.monotonic() + 30
    while client.get(f"/v1/kv/{key}").status_code != 404:
        assert time.monotonic() < deadline, f"{key} did not expire"
        time.sleep(0.2)


def test_expired_keys_stop_counting(quota_stack, qadmin, prefix):
    writer = create_user(qadmin, "writer", [prefix])
    other = create_user(qadmin, "writer", [prefix])
    for i in range(MAX_KEYS):
        assert writer.put(f"/v1/kv/{prefix}{i}?ttl=1", data=b"brief").status_code == 201
    assert usage(qadmin, writer.name)["keys"] == MAX_KEYS
    assert writer.put(f"/v1/kv/{prefix}long", data=b"v").status_code == 403
    for i in range(MAX_KEYS):
        wait_gone(writer, f"{prefix}{i}")
    # Another user rewrites one expired key before the owner writes again; the
    # owner rewrites another of its own expired keys.
    assert other.put(f"/v1/kv/{prefix}0", data=b"theirs").status_code == 201
    assert writer.put(f"/v1/kv/{prefix}1", data=b"again").status_code == 201
    assert usage(qadmin, writer.name)["keys"] == 1
    assert usage(qadmin, other.name)["keys"] == 1
    for i in range(MAX_KEYS - 1):
        assert writer.put(f"/v1/kv/{prefix}new{i}", data=b"v").status_code == 201
    refused(writer.put(f"/v1/kv/{prefix}one-too-many", data=b"v"))
    assert truth(quota_stack, prefix) == {
        writer.name: (MAX_KEYS, len(f"{prefix}1") + 5 + (MAX_KEYS - 1) * (len(prefix) + 5)),
        other.name: (1, len(f"{prefix}0") + 6),
    }
    assert usage(qadmin, writer.name)["bytes"] == truth(quota_stack, prefix)[writer.name][1]


def test_accounting_stays_exact_under_a_random_mix_of_operations(quota_stack, prefix):
    """put, CAS, overwrite by others, delete and TTL expiry, straight on the core."""
    client = quota_stack.redis_client("cp")
    store = ShardedKV(
        client,
        Durability(client, strict=False, fsync_when_possible=False),
        Quota(max_keys=1000, max_bytes=10**6),
    )
    users = [f"qmix{secrets.token_hex(3)}{i}" for i in range(3)]
    keys = [f"{prefix}{i}" for i in range(12)]
    rng = secrets.SystemRandom()
    for _ in range(400):
        user, key = rng.choice(users), rng.choice(keys)
        actor = Actor(user, "127.0.0.1", "mix")
        operation = rng.random()
        try:
            if operation < 0.55:
                ttl = 1 if rng.random() < 0.3 else None
                store.put(key, secrets.token_bytes(rng.randint(0, 64)), actor, ttl=ttl)
            elif operation < 0.7:
                store.put(key, b"cas", actor, if_match=[str(rng.randint(1, 10**6)), "*"])
            elif operation < 0.8:
                store.put(key, b"new", actor, if_absent=True)
            else:
                store.delete(key, actor)
        except Exception as exc:  # 404 and 412 are expected outcomes of a random mix
            assert type(exc).__name__ in ("KeyNotFound", "VersionConflict"), exc
    time.sleep(1.5)  # let the TTL'd ones expire: redis drops them without a script
    expected = truth(quota_stack, prefix)
    for user in users:
        got = store.usage(user)
        assert (got.keys, got.bytes) == expected.get(user, (0, 0)), user
        for place in all_shards():
            usage_key = place.usage(user)
            assert client.zcard(f"{usage_key}:exp") == client.hlen(f"{usage_key}:ttl")
    client.close()


def test_upgrade_charges_the_previous_releases_keys_to_their_writers():
    """c64ef11 kept no usage: the control plane charges its keys at start-up, to the
    last writer the audit log names, and the quota then holds for them."""
    from tests.conftest import small_stack_config, state_dir
    from tests.upgrade_kit import previous_release_state

    directory = state_dir("plab-quota-upgrade-")
    old = previous_release_state(directory)
    stack = Supervisor(small_stack_config(directory, extra_env={"PLAB_USER_MAX_KEYS": "7"}))
    stack.start(timeout=90)
    try:
        admin = admin_of(stack)
        expected_bytes = 0
        for key, item in old.keys.items():
            value = bytes.fromhex(item["value_hex"]) if "value_hex" in item else item["value"]
            expected_bytes += len(key) + len(value)
        assert usage(admin, "olduser-w") == {
            "keys": len(old.keys),
            "bytes": expected_bytes,
            "max_keys": 7,
            "max_bytes": 64 * 1024**2,
        }
        assert usage(admin, "olduser-r")["keys"] == 0
        writer = Client(stack, "olduser-w", old.users["olduser-w"]["password"])
        for key, item in old.keys.items():  # the old values are intact
            got = writer.get(f"/v1/kv/{key}")
            assert got.status_code == 200 and got.headers["ETag"] == f'"{item["version"]}"'
        # 6 old keys + 1 new = the quota of 7; the next new key is refused.
        assert writer.put("/v1/kv/app-new-0", data=b"v").status_code == 201
        refused(writer.put("/v1/kv/app-new-1", data=b"v"))
        assert writer.delete("/v1/kv/app-old-0").status_code == 204
        assert writer.put("/v1/kv/app-new-1", data=b"v").status_code == 201
        # A second start-up finds the migration done and charges nothing twice.
        restart(stack, "cp")
        stack.wait_http(stack.config.cp_port, "/ready", 60)
        assert usage(admin, "olduser-w")["keys"] == 7
        assert truth(stack, "app-") == {"olduser-w": (7, usage(admin, "olduser-w")["bytes"])}
    finally:
        stop_stack(stack)


def test_a_restore_keeps_the_accounting_exact(quota_stack, qadmin, prefix, tmp_path):
    """A restore replaces items (their charges go with them) and brings back keys
    without an owner: they are charged to their last writer in the audit log."""
    first = create_user(qadmin, "writer", [prefix])
    second = create_user(qadmin, "writer", [prefix])
    for i in range(3):
        assert first.put(f"/v1/kv/{prefix}{i}", data=b"first").status_code == 201
    env = quota_stack.plane_env("cp")
    created = subprocess.run(
        [sys.executable, "-m", "productionlab", "backup", "create", "--dir", str(tmp_path)],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert created.returncode == 0, created.stderr
    (path,) = tmp_path.glob("*.plab*")
    assert second.put(f"/v1/kv/{prefix}0", data=b"second-long-value").status_code == 200
    assert first.delete(f"/v1/kv/{prefix}1").status_code == 204
    restored = subprocess.run(
        [sys.executable, "-m", "productionlab", "backup", "restore", str(path), "--overwrite"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert restored.returncode == 0, restored.stderr
    assert first.get(f"/v1/kv/{prefix}0").content == b"first"
    expected = truth(quota_stack, prefix)
    assert sum(keys for keys, _ in expected.values()) == 3
    for user in (first, second):
        got = usage(qadmin, user.name)
        assert (got["keys"], got["bytes"]) == expected.get(user.name, (0, 0)), user.name


def test_keys_no_audit_entry_attributes_are_charged_to_unattributed(quota_stack, qadmin, prefix):
    """A key from before quotas whose writer the audit log no longer names (trimmed)."""
    client = quota_stack.redis_client("cp")
    key = f"{prefix}orphan"
    # As a restore of c64ef11's backup leaves it: no owner.
    client.hset(item_of(key), mapping={"v": b"legacy", "ver": 1})
    client.zadd(shard_for(key).index, {key: 0})
    before = qadmin.get("/admin/stats").json()["usage_unattributed"]
    assert ShardStore().charge_unowned(client) == 1
    assert ShardStore().charge_unowned(client) == 0  # idempotent: it has an owner now
    stats = qadmin.get("/admin/stats").json()
    assert stats["usage_unattributed"] == {
        "keys": before["keys"] + 1,
        "bytes": before["bytes"] + len(key) + 6,
    }
    assert stats["redis_maxmemory"] == 256 * 1024**2
    assert qadmin.delete(f"/ops/v1/kv/{key}").status_code == 204
    assert qadmin.get("/admin/stats").json()["usage_unattributed"] == before
    client.close()
