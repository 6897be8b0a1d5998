"""The previous release's state (c64ef11, tests/upgrade_kit.py), upgraded by
today's control plane (its own migrations at start-up), then moved to the
virtual shards (productionlab/shardmigrate.py, not yet run at start-up):
every key keeps its value, version and TTL, usage is kept, the main audit chain
still verifies, and new versions are above the old ones."""

from __future__ import annotations

import shutil
from collections.abc import Iterator

import pytest
from upgrade_kit import PreviousState, previous_release_state

from productionlab.audit import Actor
from productionlab.kv import KVStore
from productionlab.shardkv import ShardedKV
from productionlab.shardmigrate import OLD_ITEM, check_layout, migrate_to_shards
from productionlab.store.durability import Durability
from productionlab.store.layout import SHARDS, shard_for, shard_of
from productionlab.supervisor import Supervisor
from tests.conftest import Client, small_stack_config, state_dir


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
        before = KVStore(client, durability).usage("olduser-w")
        expiries = {
            key: int(client.execute_command("PEXPIRETIME", OLD_ITEM + key)) for key in old.keys
        }
        assert expiries["app-old-ttl"] > 0
        assert migrate_to_shards(client)
        assert check_layout(client)
        sharded = ShardedKV(client, durability)
        for key, stored in old.keys.items():
            item = sharded.get(key)
            expected = (
                stored["value"].encode()
                if "value" in stored
                else bytes.fromhex(stored["value_hex"])
            )
            assert (item.value, item.version) == (expected, stored["version"]), key
            place = shard_for(key)
            assert int(client.execute_command("PEXPIRETIME", place.item(key))) == expiries[key]
            assert client.exists(OLD_ITEM + key) == 0
        assert sharded.list_keys(["app-old-"])[0] == sorted(old.keys)
        after = sharded.usage("olduser-w")
        assert (after.keys, after.bytes) == (before.keys, before.bytes) and after.keys > 0
        newest = max(stored["version"] for stored in old.keys.values())
        written = sharded.put("app-old-0", b"after the move", Actor("olduser-w"))
        assert written.version > newest and written.version % SHARDS == shard_of("app-old-0")
    finally:
        client.close()
    # The main chain (the old KV entries stay in it) still verifies.
    admin = Client(stack, "admin", old.admin_password)
    verify = admin.post("/admin/audit/verify")
    assert verify.status_code == 200 and verify.json()["ok"] is True, verify.text
