"""The previous release's state (c64ef11, tests/upgrade_kit.py), upgraded by
today's control plane at start-up (its migrations, the last one moving the store
to the virtual shards, productionlab/shardmigrate.py): every key keeps its value,
version and TTL, usage is exact, the audit log verifies, new versions are above
the old ones, and a write of the previous release's app plane after the move is
picked up by the next control-plane start."""

from __future__ import annotations

import shutil
import time
from collections.abc import Iterator

import pytest
from upgrade_kit import PreviousState, previous_release_state

from productionlab.audit import Actor
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
from productionlab.supervisor import Supervisor
from tests.conftest import Client, small_stack_config, state_dir
from tests.layout_kit import live_items
from tests.supervisor_kit import restart


@pytest.fixture(scope="module")
def upgraded() -> Iterator[tuple[Supervisor, PreviousState]]:
    directory = state_dir("plab-shard-upgrade-")
    old = previous_release_state(directory)
    stack = Supervisor(small_stack_config(directory))
    stack.start(timeout=90)
    yield stack, old
    stack.stop()
    shutil.rmtree(directory, ignore_errors=True)


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
