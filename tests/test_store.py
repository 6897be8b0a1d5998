"""The redis connection (URL forms, pool sizing) and the durability promise."""

from __future__ import annotations

import secrets
import threading
import time

import redis

from productionlab.redis_process import RedisProcess
from productionlab.settings import Settings
from productionlab.settings.model import AUDIT_ARCHIVERS
from productionlab.store.connection import connect
from tests.conftest import admin_of


def settings_for(url: str, **extra) -> Settings:
    keys = {name: secrets.token_hex(32) for name in ("secret_key", "token_key", "backup_key")}
    return Settings(redis_url=url, **keys, **extra)


def test_pool_is_sized_to_the_servers_threads(stack):
    settings = settings_for(
        f"redis://127.0.0.1:{stack.config.redis_port}/0",
        threads=5,
        watch_max_per_process=3,
        redis_username="plab-ap",
        redis_password=stack.secret("redis_ap_password"),
    )
    client = connect(settings)
    pool = client.connection_pool
    assert isinstance(pool, redis.BlockingConnectionPool)
    # threads, watches, the connection each ordinary thread keeps for the KV core's
    # script, two listeners, a spare, and one per audit chain archived at once
    assert pool.max_connections == 5 + 3 + 5 + 3 + AUDIT_ARCHIVERS == 16 + 4
    assert client.ping()
    client.close()


def test_a_thread_keeps_one_connection_for_held_commands_and_it_reconnects():
    """``execute_held`` (the KV core's script) runs on the calling thread's own
    connection, reused call after call; a dropped one reconnects through
    redis-py's retry; another thread keeps its own; a pin takes precedence."""
    server = RedisProcess(password=False)
    with server as direct:
        settings = settings_for(
            f"redis://127.0.0.1:{server.port}/0",
            threads=2,
            watch_max_per_process=0,
        )
        client = connect(settings)
        first = client.execute_held("CLIENT", "ID")
        assert client.execute_held("CLIENT", "ID") == first
        assert client.connection is None  # other commands still go through the pool
        assert client.execute_command("CLIENT", "ID") != first

        direct.execute_command("CLIENT", "KILL", "ID", first)
        again = client.execute_held("CLIENT", "ID")
        assert again != first
        assert client.execute_held("CLIENT", "ID") == again

        other: list[int] = []
        thread = threading.Thread(target=lambda: other.append(client.execute_held("CLIENT", "ID")))
        thread.start()
        thread.join()
        assert other and other[0] != again

        client.pin()
        pinned = client.execute_command("CLIENT", "ID")
        assert client.execute_held("CLIENT", "ID") == pinned
        client.unpin()
        assert client.execute_held("CLIENT", "ID") == again
        client.close()


def test_wrong_redis_password_is_refused(stack):
    settings = settings_for(
        f"redis://127.0.0.1:{stack.config.redis_port}/0",
        redis_username="plab-ap",
        redis_password="wrong",
    )
    client = connect(settings)
    try:
        client.ping()
        raise AssertionError("ping with a wrong password succeeded")
    except redis.AuthenticationError:
        pass
    finally:
        client.close()


def test_plane_users_cannot_run_dangerous_commands(stack):
    client = stack.redis_client("ap")
    for command in (
        ("FLUSHALL",),
        ("KEYS", "*"),
        ("CONFIG", "SET", "appendonly", "no"),
        ("MONITOR",),
        ("DEBUG", "SLEEP", "0"),
        ("SHUTDOWN",),
    ):
        try:
            client.execute_command(*command)
            raise AssertionError(f"{command[0]} was allowed")
        except (redis.exceptions.NoPermissionError, redis.exceptions.ResponseError) as refusal:
            assert "no permissions" in str(refusal) or "not allowed" in str(refusal)
    try:
        client.set("outside-our-prefix", "x")
        raise AssertionError("a key outside {plab}: was writable")
    except redis.exceptions.NoPermissionError:
        pass
    client.close()


def test_sentinel_url_finds_the_master():
    master = RedisProcess(password=False)
    with master as direct:
        monitor = {"sentinel monitor": f"mymaster 127.0.0.1 {master.port} 1"}
        sentinel = RedisProcess(password=False, sentinel=True, config=monitor)
        with sentinel:
            client = connect(settings_for(f"redis+sentinel://127.0.0.1:{sentinel.port}/mymaster/0"))
            deadline = time.monotonic() + 15
            while True:
                try:
                    client.set("{plab}:probe", "via-sentinel")
                    break
                except redis.RedisError:
                    assert time.monotonic() < deadline, "sentinel never served the master"
                    time.sleep(0.2)
            assert direct.get("{plab}:probe") == b"via-sentinel"
            client.close()


def test_strict_durability_refuses_writes_redis_cannot_fsync(stack_factory):
    """PLAB_DURABILITY=strict against a redis with appendfsync everysec (redis < 7.2):
    writes get 503 and /ready is 503, rather than a weaker promise."""
    stack = stack_factory(
        ap_workers=1,
        durability="everysec",
        ready_path="/health",
        extra_env={"PLAB_DURABILITY": "strict"},
    )
    admin = admin_of(stack)
    response = admin.post("/write/strict-key/v")
    assert response.status_code == 503
    assert response.headers["Retry-After"].isdigit()
    assert admin.get("/ready").status_code == 503
    assert admin.get("/ops/read/strict-key").status_code == 404


def test_strict_durability_with_appendfsync_always(stack_factory):
    stack = stack_factory(ap_workers=1, durability="strict")
    admin = admin_of(stack)
    assert admin.post("/write/strict-key/v").status_code == 201
    client = stack.redis_client()
    assert client.config_get("appendfsync") == {"appendfsync": "always"}
    client.close()


def test_each_planes_redis_user_can_keep_the_quota_accounting(stack):
    """The app plane writes and expires keys (charge, move, release); the control
    plane reads usage and migrates: their redis ACLs must allow every command the
    quota scripts run, including PEXPIRETIME and the allow-oom flagged scripts."""
    from productionlab.audit import Actor
    from productionlab.kv import Quota
    from productionlab.ratelimit import Ticket
    from productionlab.shardbackup import ShardStore
    from productionlab.shardkv import ShardedKV
    from productionlab.store.durability import Durability

    stores = {}
    for plane in ("ap", "cp"):
        client = stack.redis_client(plane)
        stores[plane] = ShardedKV(
            client, Durability(client, strict=False), Quota(max_keys=2, max_bytes=10_000)
        )
    user = f"acl{secrets.token_hex(4)}"
    actor = Actor(user, "127.0.0.1", "acl")
    key = f"acl-{secrets.token_hex(4)}"
    ap, cp = stores["ap"], stores["cp"]
    ap.put(key, b"one", actor, ttl=3600)
    ap.put(key, b"two", actor)
    ap.put(key + "-b", b"x", actor)
    assert (cp.usage(user).keys, cp.usage(user).bytes) == (2, len(key) + 3 + len(key) + 3)
    ticket = Ticket(f"{{plab}}:limits:user:{user}:60", 100, 60)
    assert ap.get(key, limit=ticket).value == b"two"  # the allow-oom read script
    ap.delete(key + "-b", actor)
    assert cp.usage(user).keys == 1
    assert ShardStore().charge_unowned(cp.client) == 0
    for store in stores.values():
        store.client.close()
