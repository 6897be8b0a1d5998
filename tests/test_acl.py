"""Least privilege between the planes in redis (issue 9, section 2).

The app plane faces the internet. Code execution there, or its leaked redis
password, must not make anyone admin, un-revoke a token, publish a fake user
change or rewrite the audit log. These tests log in to the stack's real
redis-server (rendered from productionlab/templates/redis.conf.j2) as each
plane's user, try the forbidden writes directly and from inside EVAL, and
prove every operation the app plane legitimately does still works.
"""

from __future__ import annotations

import secrets
from pathlib import Path

import pytest
import redis

from productionlab.configfiles import RedisUser, render_redis_conf
from productionlab.deploy import redis_conf
from productionlab.supervisor import Supervisor
from tests.conftest import Client, admin_of, create_user

ADMIN = "{plab}:user:admin"
AUDIT = "{plab}:audit"
META = "{plab}:audit:meta"

# Commands the app plane must never run: (description, command...). Each one, if
# allowed, is a step to admin, an un-revoked token or a rewritten audit log.
FORBIDDEN_FOR_AP = [
    ("make the admin's record say anything", "HSET", ADMIN, "role", "admin"),
    ("replace a user's password hash", "HSET", ADMIN, "pw", "x"),
    ("delete a user", "DEL", ADMIN),
    ("add a user to the index", "SADD", "{plab}:users", "mallory"),
    ("reuse a user generation", "SET", "{plab}:users:gen", "1"),
    ("un-revoke a token family", "HSET", "{plab}:tok:fam:f00d", "revoked", "0"),
    ("delete a token family", "DEL", "{plab}:tok:fam:f00d"),
    ("list a forged family for a user", "ZADD", "{plab}:tok:user:admin", "1", "f00d"),
    ("delete the audit log", "DEL", AUDIT),
    ("truncate the audit log", "LTRIM", AUDIT, "1", "-1"),
    ("rewrite an audit entry", "LSET", AUDIT, "0", "{}"),
    ("pop an audit entry", "RPOP", AUDIT),
    ("prepend to the audit log", "LPUSH", AUDIT, "{}"),
    ("delete the audit head", "DEL", META),
    ("reset the audit trim marker", "HDEL", META, "first"),
    ("rewrite the audit trim marker", "HSET", META, "first_prev", "x"),
    ("bump an audit counter", "HINCRBY", META, "first", "1"),
    ("expire the audit log", "EXPIRE", AUDIT, "1"),
    ("rename the audit log away", "RENAME", AUDIT, "{plab}:kv:stolen"),
    ("copy a user into the data keys", "COPY", ADMIN, "{plab}:kv:stolen"),
    ("write outside the prefix", "SET", "elsewhere", "1"),
]


def denied(exc: Exception) -> bool:
    """An ACL refusal: NOPERM for a command; inside a script redis 7.0 says
    "The user executing the script can't ..." (7.2 says NOPERM there too)."""
    text = str(exc)
    return any(
        refusal in text
        for refusal in ("no permissions", "can't access", "can't run", "can't publish")
    )


def snapshot(client: redis.Redis) -> dict:
    return {
        "admin": client.hgetall(ADMIN),
        "audit": client.lrange(AUDIT, 0, -1),
        "meta": client.hgetall(META),
        "users": client.smembers("{plab}:users"),
        "gen": client.get("{plab}:users:gen"),
        "family": client.hgetall("{plab}:tok:fam:f00d"),
    }


@pytest.fixture
def planes(stack: Supervisor):
    ap, cp = stack.redis_client("ap"), stack.redis_client("cp")
    # a revoked family the app plane must not be able to revive
    cp.hset("{plab}:tok:fam:f00d", mapping={"user": "admin", "revoked": "1", "current": "x"})
    yield ap, cp
    cp.delete("{plab}:tok:fam:f00d", "{plab}:kv:stolen")
    ap.close()
    cp.close()


@pytest.mark.parametrize("what,command", [(c[0], c[1:]) for c in FORBIDDEN_FOR_AP])
def test_app_plane_cannot_write_what_it_must_only_read(planes, what, command):
    ap, cp = planes
    before = snapshot(cp)
    with pytest.raises(redis.exceptions.NoPermissionError) as refusal:
        ap.execute_command(*command)
    assert denied(refusal.value), f"{what}: {refusal.value}"
    assert snapshot(cp) == before, f"{what} changed something"


@pytest.mark.parametrize("what,command", [(c[0], c[1:]) for c in FORBIDDEN_FOR_AP])
def test_app_plane_cannot_write_them_from_a_script(planes, what, command):
    """EVAL runs with the caller's rights: the same writes fail inside a script,
    with the key declared in KEYS and with it named only in the script body."""
    ap, cp = planes
    before = snapshot(cp)
    name, key, *rest = command
    quoted = ", ".join(repr(str(a)) for a in rest)
    declared = f"return redis.call('{name}', KEYS[1]{', ' if rest else ''}{quoted})"
    hidden = f"return redis.call('{name}', '{key}'{', ' if rest else ''}{quoted})"
    for body, keys in ((declared, [key]), (hidden, [])):
        with pytest.raises(redis.exceptions.RedisError) as refusal:
            ap.eval(body, len(keys), *keys)
        assert denied(refusal.value), f"{what} from a script: {refusal.value}"
    assert snapshot(cp) == before, f"{what} from a script changed something"


def test_app_plane_cannot_publish_user_changes_or_run_admin_commands(planes):
    ap, _cp = planes
    for command in (
        ("PUBLISH", "{plab}:users:events", "admin"),
        ("FLUSHALL",),
        ("KEYS", "*"),
        ("SCAN", "0"),
        ("CONFIG", "SET", "appendonly", "no"),
        ("ACL", "SETUSER", "plab-ap", "+@all"),
        ("FUNCTION", "FLUSH"),
        ("FUNCTION", "LOAD", "#!lua name=x\nredis.register_function('x', function() end)"),
        ("SCRIPT", "FLUSH"),
        ("RANDOMKEY",),
    ):
        with pytest.raises(redis.exceptions.NoPermissionError):
            ap.execute_command(*command)
    with pytest.raises(redis.exceptions.RedisError) as refusal:
        ap.eval("return redis.call('PUBLISH', '{plab}:users:events', 'admin')", 0)
    assert denied(refusal.value)


def test_app_plane_reads_users_tokens_and_the_audit_log_and_appends_to_it(planes):
    ap, cp = planes
    assert ap.hget(ADMIN, "role") == b"admin"
    assert ap.hget("{plab}:tok:fam:f00d", "revoked") == b"1"
    assert ap.sismember("{plab}:users", "admin")
    length = ap.llen(AUDIT)
    assert length > 0
    assert ap.lindex(AUDIT, 0) == cp.lindex(AUDIT, 0)
    assert ap.lrange(AUDIT, 0, 0) == cp.lrange(AUDIT, 0, 0)
    assert isinstance(ap.hgetall(META), dict)
    # the pub/sub channel for user changes: subscribing works, publishing does not
    pubsub = ap.pubsub()
    pubsub.subscribe("{plab}:users:events")
    assert pubsub.get_message(timeout=5)["type"] == "subscribe"
    pubsub.close()


def test_control_plane_keeps_what_it_needs(planes):
    _ap, cp = planes
    name = f"{{plab}}:user:acl-{secrets.token_hex(4)}"
    cp.hset(name, "role", "reader")
    cp.delete(name)
    cp.hset("{plab}:tok:fam:f00d", "revoked", "1")
    assert cp.publish("{plab}:users:events", "nobody") >= 0
    assert cp.eval("return redis.call('LLEN', KEYS[1])", 1, AUDIT) >= 1


def test_every_app_plane_operation_still_works(stack):
    """Reads, writes, CAS, deletes, listing, tokens, logins and failed logins,
    straight to each app-plane process (which logs in to redis as plab-ap)."""
    admin = admin_of(stack)
    writer = create_user(admin, "writer", ["acl-"])
    pair = writer.post("/auth/token").json()
    bearer = {"Authorization": f"Bearer {pair['access_token']}"}
    for index, port in enumerate(stack.config.ap_ports):
        key = f"acl-{index}-{secrets.token_hex(4)}"
        put = writer.direct("PUT", port, f"/v1/kv/{key}", data=b"one")
        assert put.status_code == 201, put.text
        version = put.headers["ETag"]
        assert writer.direct("GET", port, f"/v1/kv/{key}").content == b"one"
        stale = writer.direct(
            "PUT", port, f"/v1/kv/{key}", data=b"x", headers={"If-Match": '"999999999"'}
        )
        assert stale.status_code == 412, stale.text
        cas = writer.direct(
            "PUT", port, f"/v1/kv/{key}", data=b"two", headers={"If-Match": version}
        )
        assert cas.status_code == 200, cas.text
        absent = writer.direct(
            "PUT", port, f"/v1/kv/{key}", data=b"x", headers={"If-None-Match": "*"}
        )
        assert absent.status_code == 412, absent.text
        ttl = writer.direct("PUT", port, f"/v1/kv/{key}-ttl?ttl=600", data=b"t")
        assert ttl.status_code == 201, ttl.text
        listed = writer.direct("GET", port, "/v1/kv?prefix=acl-")
        assert listed.status_code == 200 and key in listed.json()["keys"]
        legacy = writer.direct("POST", port, f"/write/{key}-legacy/w")
        assert legacy.status_code in (200, 201), legacy.text
        assert writer.direct("GET", port, f"/read/{key}-legacy").status_code == 200
        assert writer.direct("DELETE", port, f"/v1/kv/{key}").status_code == 204
        assert writer.direct("GET", port, f"/v1/kv/{key}").status_code == 404
        with_token = Client(stack).direct("GET", port, f"/v1/kv/{key}-ttl", headers=bearer)
        assert with_token.status_code == 200, with_token.text
        # failed logins are counted and audited by the app plane
        wrong = Client(stack, writer.name, "wrong-password").direct("GET", port, f"/v1/kv/{key}")
        assert wrong.status_code == 401
        junk = Client(stack).direct(
            "GET", port, f"/v1/kv/{key}", headers={"Authorization": "Bearer junk"}
        )
        assert junk.status_code == 401
    entries = admin.get(f"/admin/audit?actor={writer.name}&limit=1000").json()["entries"]
    actions = {entry["action"] for entry in entries}
    assert {"kv.put", "kv.delete"} <= actions, actions  # the app plane's appends landed
    assert admin.post("/admin/audit/verify").json()["ok"] is True
    cp = stack.redis_client("cp")
    assert cp.exists("{plab}:authfail:127.0.0.1"), "failed logins were not counted"
    cp.close()


def test_compose_and_local_stack_render_the_same_plane_rules(tmp_path):
    """docker compose's redis.conf (productionlab.deploy) gives each plane the same
    rights as the local stack's: one template, the passwords aside."""
    for name in ("redis_ap_password", "redis_cp_password"):
        (tmp_path / name).write_text(secrets.token_hex(32))
    compose = redis_conf(tmp_path)
    local = render_redis_conf(
        port=1,
        data_dir="/x",
        users=[RedisUser("plab-ap", "a"), RedisUser("plab-cp", "c")],
    )

    def rules(conf: str, user: str) -> str:
        line = next(x for x in conf.splitlines() if x.startswith(f"user {user} "))
        return " ".join(part for part in line.split() if not part.startswith("#"))

    for user in ("plab-ap", "plab-cp"):
        assert rules(compose, user) == rules(local, user)


def test_each_local_plane_process_gets_only_its_own_secrets(stack):
    """The local stack gives the running app-plane processes no token-signing key,
    no backup key and not the control plane's redis password (read from the real
    processes' environments), and the control plane all it needs."""
    expected = {
        "ap": {
            "PLAB_SECRET_KEY_FILE",
            "PLAB_TOKEN_PUBLIC_KEY_FILE",
            "PLAB_REDIS_PASSWORD_FILE",
        },
        "cp": {
            "PLAB_SECRET_KEY_FILE",
            "PLAB_TOKEN_KEY_FILE",
            "PLAB_AUDIT_KEY_FILE",
            "PLAB_AUDIT_CHECKPOINT_KEY_FILE",
            "PLAB_BACKUP_KEY_FILE",
            "PLAB_REDIS_PASSWORD_FILE",
        },
    }
    if stack.config.redis_tls:
        tls = {"PLAB_REDIS_TLS_CA_FILE", "PLAB_REDIS_TLS_CERT_FILE", "PLAB_REDIS_TLS_KEY_FILE"}
        expected = {plane: names | tls for plane, names in expected.items()}
    for name, component in stack.components.items():
        plane = "ap" if name.startswith("ap") else name
        if plane not in expected:
            continue
        raw = Path(f"/proc/{component.process.pid}/environ").read_bytes().split(b"\0")
        env = dict(item.decode().split("=", 1) for item in raw if b"=" in item)
        files = {k for k in env if k.startswith("PLAB_") and k.endswith("_FILE")}
        assert files == expected[plane], (name, files)
        assert env["PLAB_REDIS_PASSWORD_FILE"].endswith(f"redis_{plane}_password")
        if stack.config.redis_tls:  # its own client certificate, never the other plane's
            assert env["PLAB_REDIS_TLS_KEY_FILE"].endswith(f"redis_{plane}_key")
        held = "".join(Path(env[k]).read_text() for k in files)
        for secret in ("token_key", "backup_key", "audit_key", "audit_checkpoint_key"):
            if plane == "ap":
                assert stack.secret(secret) not in held, (name, secret)


def test_app_plane_publishes_only_kv_changes_and_hears_watch_channels(planes):
    """Watches (watch.py): the app plane publishes change messages (its write
    scripts do) on {plab}:kv-changes and on no other channel, and subscribes to
    them, the user events and the expired-key events, and to nothing else. A
    forged change message only makes watches read their state again."""
    ap, _cp = planes
    assert ap.eval("return redis.call('PUBLISH', '{plab}:kv-changes', '0 *')", 0) >= 0
    for channel in ("{plab}:users:events", "__keyevent@0__:expired", "other"):
        with pytest.raises(redis.exceptions.NoPermissionError):
            ap.publish(channel, "x")
    allowed = ap.pubsub()
    refused = ap.pubsub()
    try:
        allowed.subscribe("{plab}:kv-changes", "{plab}:users:events", "__keyevent@0__:expired")
        kinds = [allowed.get_message(timeout=5)["type"] for _ in range(3)]
        assert kinds == ["subscribe"] * 3
        with pytest.raises(redis.exceptions.NoPermissionError):
            refused.subscribe("__keyspace@0__:{plab}:users")
            refused.get_message(timeout=5)
    finally:
        allowed.close()
        refused.close()
