"""Earlier releases' state (tests/upgrade_kit.py), upgraded by today's control
plane at start-up (its migrations, the last one moving the store to the virtual
shards, productionlab/shardmigrate.py): from c64ef11 (before quotas and watches)
and from 577e7c6 (the last release of the one-tag layout) every key keeps its
value, version and TTL, deleted keys stay deleted, usage is exact, every audit
chain verifies, new versions are above the old ones, a backup 577e7c6 took
restores into the shards, and a write of the previous release's app plane after
the move is picked up by the next control-plane start."""

from __future__ import annotations

import time
from pathlib import Path

from upgrade_kit import ONE_TAG_RELEASE, upgraded_fixture

from productionlab.audit import Actor
from productionlab.backup import create_backup, restore_backup
from productionlab.redis_process import RedisProcess
from productionlab.shardkv import ShardedKV
from productionlab.shardmigrate import (
    OLD_COUNTER,
    OLD_INDEX,
    OLD_ITEM,
    check_layout,
    migrate_to_shards,
)
from productionlab.store.durability import Durability
from productionlab.store.layout import SHARDS, shard_for, shard_of
from tests.conftest import Client
from tests.layout_kit import live_items
from tests.supervisor_kit import restart

upgraded = upgraded_fixture("plab-shard-upgrade-")


def test_the_previous_releases_keys_move_to_the_shards(upgraded):
    stack, old = upgraded
    client = stack.redis_client("cp")
    try:
        durability = Durability(client, strict=False)
        assert check_layout(client)  # the control plane migrated at start-up
        assert migrate_to_shards(client) is False  # and a second run has nothing to do
        assert not client.exists(OLD_INDEX, OLD_COUNTER)
        sharded = ShardedKV(client, durability)
        for key, stored in old.keys.items():
            item = sharded.get(key)
            expected = (
                stored["value"].encode()
                if "value" in stored
                else bytes.fromhex(stored["value_hex"])
            )
            assert (item.value, item.version) == (expected, stored["version"]), key
            assert client.exists(OLD_ITEM + key) == 0
        ttl = int(
            client.execute_command("PEXPIRETIME", shard_for("app-old-ttl").item("app-old-ttl"))
        )
        assert ttl > time.time() * 1000 + 3600 * 1000  # the day's TTL it was written with
        assert (
            int(client.execute_command("PEXPIRETIME", shard_for("app-old-0").item("app-old-0")))
            == -1
        )
        assert sharded.list_keys(["app-old-"])[0] == sorted(old.keys)
        truth = [
            len(key) + len(value)
            for key, owner, value in live_items(client, "")
            if owner == b"olduser-w"
        ]
        after = sharded.usage("olduser-w")
        assert (after.keys, after.bytes) == (len(truth), sum(truth)) and after.keys > 0
        newest = max(stored["version"] for stored in old.keys.values())
        written = sharded.put("app-old-0", b"after the move", Actor("olduser-w"))
        assert written.version > newest and written.version % SHARDS == shard_of("app-old-0")
    finally:
        client.close()
    admin = Client(stack, "admin", old.admin_password)
    verify = admin.post("/admin/audit/verify")
    assert verify.status_code == 200 and verify.json()["ok"] is True, verify.text
    reader = Client(stack, "olduser-r", old.users["olduser-r"]["password"])
    assert reader.get("/read/app-old-0").json()["value"] == "after the move"


def test_a_write_of_an_old_app_plane_is_moved_by_the_next_start(upgraded):
    """A rolling upgrade where an app plane of the previous release still writes
    after the move: its one-tag item is moved by the next control-plane start,
    with a new version (its counter restarted), and the usage counts it."""
    stack, old = upgraded
    client = stack.redis_client("cp")
    try:
        before = ShardedKV(client, Durability(client, strict=False)).get("app-old-1").version
        # What c64ef11's kv_put.lua leaves: the item (owner = writer), its index entry.
        client.hset(
            OLD_ITEM + "app-old-1", mapping={"v": b"from an old ap", "ver": 1, "o": "olduser-w"}
        )
        client.zadd(OLD_INDEX, {"app-old-1": 0})
    finally:
        client.close()
    restart(stack, "cp")
    stack.wait_http(stack.config.cp_port, stack.config.ready_path, 60)  # migrated, serving
    reader = Client(stack, "olduser-r", old.users["olduser-r"]["password"])
    moved = reader.get("/read/app-old-1").json()
    assert moved["value"] == "from an old ap"
    assert moved["version"] > before
    client = stack.redis_client("cp")
    try:
        assert not client.exists(OLD_ITEM + "app-old-1", OLD_INDEX)
    finally:
        client.close()


# 577e7c6's state (written by its own stack), then this release started on it.
one_tag_upgraded = upgraded_fixture("plab-onetag-upgrade-", ONE_TAG_RELEASE)


def expected_value(stored: dict) -> bytes:
    return stored["value"].encode() if "value" in stored else bytes.fromhex(stored["value_hex"])


def test_the_one_tag_releases_state_moves_to_the_shards(one_tag_upgraded):
    stack, old = one_tag_upgraded
    admin = Client(stack, "admin", old.admin_password)
    verify = admin.post("/admin/audit/verify")  # every chain, the old KV entries' too
    assert verify.status_code == 200 and verify.json()["ok"] is True, verify.text
    assert "s00" in verify.json()["chains"]
    client = stack.redis_client("cp")
    try:
        assert check_layout(client) and not client.exists(OLD_INDEX, OLD_COUNTER)
        sharded = ShardedKV(client, Durability(client, strict=False))
        for key, stored in old.keys.items():
            item = sharded.get(key)
            assert (item.value, item.version) == (expected_value(stored), stored["version"])
            assert client.exists(OLD_ITEM + key) == 0
        for key in old.deleted:  # one deleted, one expired: neither comes back
            assert not client.exists(shard_for(key).item(key), OLD_ITEM + key)
        expire_at = int(
            client.execute_command("PEXPIRETIME", shard_for("app-old-ttl").item("app-old-ttl"))
        )
        assert expire_at > time.time() * 1000 + 3600 * 1000
        assert client.pttl(shard_for("app-old-0").item("app-old-0")) == -1
        assert sharded.list_keys(["app-old-"])[0] == sorted(old.keys)
        for name, used in old.usage.items():  # as 577e7c6 reported it, charge moves included
            now = sharded.usage(name)
            assert {"keys": now.keys, "bytes": now.bytes} == used, name
        assert old.usage["olduser-v"]["keys"] == 2
        newest = max(stored["version"] for stored in old.keys.values())
        written = sharded.put("app-old-2", b"after", Actor("olduser-w"))
        assert written.version > newest and written.version % SHARDS == shard_of("app-old-2")
    finally:
        client.close()
    user = admin.get("/admin/users/olduser-w").json()
    assert user["usage"]["keys"] == old.usage["olduser-w"]["keys"]
    reader = Client(stack, "olduser-r", old.users["olduser-r"]["password"])
    assert reader.get("/read/app-old-2").json()["value"] == "after"
    verify = admin.post("/admin/audit/verify")
    assert verify.status_code == 200 and verify.json()["ok"] is True, verify.text


def test_a_backup_the_one_tag_release_took_restores_into_the_shards(one_tag_upgraded):
    stack, old = one_tag_upgraded
    assert old.backup is not None
    found = list(Path(old.state_dir).rglob(old.backup["name"]))
    assert found, f"no {old.backup['name']} under {old.state_dir}"
    secret = (stack.secrets_dir / "backup_key").read_text().strip()
    with RedisProcess() as fresh:
        restored = restore_backup(fresh, found[0], secret, Actor("operator"), progress=False)
        assert restored == old.backup["keys"] == len(old.keys)
        sharded = ShardedKV(fresh, Durability(fresh, strict=False))
        for key, stored in old.keys.items():
            item = sharded.get(key)
            assert (item.value, item.version) == (expected_value(stored), stored["version"])
        assert fresh.pttl(shard_for("app-old-ttl").item("app-old-ttl")) > 3600 * 1000
        scratch = stack.config.state_dir / "restore-check"
        scratch.mkdir()
        again = create_backup(fresh, secret, scratch, progress=False)
        assert again.digest == old.backup["digest"] and again.keys == restored
        assert sharded.put("app-old-0", b"x", Actor("operator")).version > old.backup["kv_version"]
