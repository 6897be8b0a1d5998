"""The planes' redis users (the rules productionlab/templates/redis.conf.j2 gives
them) on the virtual shards' keys, on a real single redis and a real cluster:
the app plane's user runs every shard operation (get, put, delete, listing,
usage, transactions, watch states), may only append to a shard's audit chain,
and cannot touch a chain's meta hash; the control plane's user migrates."""

from __future__ import annotations

import json
import secrets
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from productionlab.audit import Actor
from productionlab.batch import Op
from productionlab.configfiles import RedisUser, render_redis_conf
from productionlab.redis_process import RedisProcess
from productionlab.shardbatch import ShardBatches
from productionlab.shardkv import ShardedKV
from productionlab.shardmigrate import migrate_to_shards
from productionlab.shardwatch import ShardWatchStore
from productionlab.store.durability import Durability
from productionlab.store.layout import shard_for
from tests.cluster_kit import ACL_RULE, RedisClusterKit
from tests.upgrade_kit import one_tag_writes

USERS = [RedisUser("plab-ap", secrets.token_hex(16)), RedisUser("plab-cp", secrets.token_hex(16))]


def acl_commands() -> list[list[str]]:
    """ACL SETUSER for each plane's user, as redis.conf.j2 renders it."""
    conf = render_redis_conf(port=1, data_dir="/unused", users=USERS)
    commands = []
    for line in conf.splitlines():
        parts = ACL_RULE.findall(line)
        if len(parts) > 2 and parts[0] == "user" and parts[1] in {u.name for u in USERS}:
            commands.append(["ACL", "SETUSER", parts[1], "reset", *parts[2:]])
    assert len(commands) == 2
    return commands


@pytest.fixture(scope="module", params=["single", "cluster"])
def planes(request) -> Iterator[dict[str, redis.Redis]]:
    """name -> a client logged in as that plane's user."""
    password = {u.name: u.password for u in USERS}
    if request.param == "single":
        with RedisProcess() as admin:
            for command in acl_commands():
                admin.execute_command(*command)
            port = admin.connection_pool.connection_kwargs["port"]
            clients = {
                name: redis.Redis(port=port, username=name, password=password[name])
                for name in password
            }
            yield clients
            for client in clients.values():
                client.close()
        return
    kit = RedisClusterKit().start()
    try:
        kit.add_users(USERS)
        clients = {name: kit.client(username=name, password=password[name]) for name in password}
        yield clients
        for client in clients.values():
            client.close()
    finally:
        kit.stop()


def test_the_app_planes_user_runs_every_shard_operation(planes):
    ap = planes["plab-ap"]
    kv = ShardedKV(ap, Durability(ap, strict=False))
    who = Actor(f"u{secrets.token_hex(3)}", "127.0.0.1", "acl")
    key = f"acl-{secrets.token_hex(4)}"
    version = kv.put(key, b"v", who, ttl=3600).version
    assert kv.get(key).value == b"v"
    assert kv.put(key, b"w", who, if_match=[str(version)]).version > version
    assert kv.list_keys(["acl-"])[0] == [key]
    assert kv.usage(who.name).keys == 1
    other = f"acl-{secrets.token_hex(4)}"
    while shard_for(other) != shard_for(key):
        other = f"acl-{secrets.token_hex(4)}"
    done = ShardBatches(kv).run([Op("put", other, b"x"), Op("get", key)], who, atomic=True)
    assert [r.outcome for r in done] == ["created", "found"]
    watches = ShardWatchStore(ap)
    assert watches.key_state(key).exists
    assert watches.prefix_state(["acl-"], 0).keys
    kv.delete(key, who)
    assert not watches.key_state(key).exists


def test_the_app_planes_user_only_appends_to_a_shards_chain(planes):
    ap, cp = planes["plab-ap"], planes["plab-cp"]
    kv = ShardedKV(ap, Durability(ap, strict=False))
    key = f"chain-{secrets.token_hex(4)}"
    kv.put(key, b"v", Actor("someone"))
    log, meta = shard_for(key).audit
    before = cp.lrange(log, 0, -1)
    for command in (
        ("LSET", log, 0, "x"),
        ("LTRIM", log, 1, -1),
        ("DEL", log),
        ("RPOP", log),
        ("HSET", meta, "first", "1000"),
        ("DEL", meta),
    ):
        with pytest.raises(redis.exceptions.NoPermissionError):
            ap.execute_command(*command)
    assert cp.lrange(log, 0, -1) == before
    assert json.loads(before[-1])["target"] == key


def test_the_control_planes_user_migrates_the_one_tag_layout(planes):
    cp = planes["plab-cp"]
    key = f"mig-{secrets.token_hex(4)}"
    (version,) = one_tag_writes(cp, [["put", key, b"old".hex(), "someone", None]])  # 577e7c6
    migrate_to_shards(cp)
    assert ShardedKV(cp, Durability(cp, strict=False)).get(key).version == version


def test_the_rules_name_the_shards(tmp_path: Path):
    conf = render_redis_conf(port=1, data_dir=str(tmp_path), users=USERS)
    ap = next(line for line in conf.splitlines() if line.startswith("user plab-ap "))
    assert "%W~{plab:s*}:audit -@all +rpush" in ap and "~{plab:s*}:kv:*" in ap
    assert "{plab:s*}:audit:meta" not in ap
