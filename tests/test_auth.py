"""Authentication at the edge and in the apps (the apps' part on the in-process
layer, tests/inprocess.py)."""

from __future__ import annotations

import pytest

from tests.conftest import Client
from tests.inprocess import with_user


@pytest.mark.inprocess
def test_no_credentials_is_401_with_challenge(anonymous, key):
    response = anonymous.get(f"/read/{key}")
    assert response.status_code == 401
    assert response.headers["WWW-Authenticate"].startswith("Basic")
    assert response.json()["error"]["code"] == "unauthorized"


@pytest.mark.inprocess
@pytest.mark.parametrize("name,password", [("admin", "wrong"), ("nobody", "x"), ("", "")])
def test_bad_credentials_are_401(anonymous, name, password, key):
    response = with_user(anonymous, name, password).get(f"/read/{key}")
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "unauthorized"


def test_apps_authenticate_too(stack, admin, key):
    """Straight to an app process, without the edge's basic auth, creds are still checked."""
    port = stack.config.ap_ports[0]
    assert Client(stack).direct("GET", port, f"/read/{key}").status_code == 401
    wrong = Client(stack, "admin", "not-the-password").direct("GET", port, f"/read/{key}")
    assert wrong.status_code == 401
    assert wrong.headers["WWW-Authenticate"].startswith("Basic")
    assert admin.direct("GET", port, f"/read/{key}").status_code == 404


def test_new_user_works_through_the_edge_at_once(make_user, key):
    """The control plane re-renders the edge's htpasswd when a user is created."""
    writer = make_user("writer", ["*"])
    assert writer.post(f"/write/{key}/v").status_code == 201


def test_htpasswd_holds_salted_hashes_not_passwords(stack, make_user):
    writer = make_user("writer", ["*"])
    text = stack.htpasswd.read_text()
    line = next(line for line in text.splitlines() if line.startswith(writer.name + ":"))
    assert line.split(":", 1)[1].startswith("{SSHA}")
    assert writer.password not in text
    assert stack.htpasswd.stat().st_mode & 0o777 == 0o640


@pytest.mark.inprocess
def test_redis_holds_argon2id_hashes(planes, make_user):
    writer = make_user("writer", ["*"])
    client = planes.redis_client()
    stored = client.hget("{plab}:user:" + writer.name, "pw").decode()
    client.close()
    assert stored.startswith("$argon2id$")
    assert writer.password not in stored


def test_admin_password_file_is_private(stack):
    assert stack.admin_password_file.stat().st_mode & 0o777 == 0o600
    assert len(stack.admin_password_file.read_text().strip()) >= 43


@pytest.mark.inprocess
def test_users_listing_never_shows_secrets(admin, make_user):
    writer = make_user("writer", ["x-"])
    body = admin.get("/admin/users").text
    assert writer.password not in body
    assert "argon2" not in body
    assert "SSHA" not in body


@pytest.mark.inprocess
def test_create_user_validation(admin):
    for payload in (
        {"name": "Bad Name", "role": "reader", "prefixes": []},
        {"name": "ok-name", "role": "root", "prefixes": []},
        {"name": "ok-name", "role": "reader", "prefixes": ["a/b"]},
        {"name": "ok-name", "role": "reader", "prefixes": "app-"},
        {"name": "ok-name", "role": "reader", "prefixes": [], "password": "mine"},
    ):
        response = admin.post("/admin/users", json=payload)
        assert response.status_code == 400, payload
        assert response.json()["error"]["code"] == "bad_request"
    assert admin.post("/admin/users", data="not json").status_code == 400
    assert admin.get("/admin/users/ok-name").status_code == 404


@pytest.mark.inprocess
def test_create_user_twice_is_409(admin):
    body = {"name": "dup-user-x", "role": "reader", "prefixes": []}
    first = admin.post("/admin/users", json=body)
    assert first.status_code in (201, 409)
    second = admin.post("/admin/users", json=body)
    assert second.status_code == 409
    assert second.json()["error"]["code"] == "conflict"


@pytest.mark.inprocess
def test_generated_password_shown_once(admin, make_user):
    writer = make_user("writer", ["*"])
    assert len(writer.password) >= 43
    shown = admin.get(f"/admin/users/{writer.name}").json()
    assert "password" not in shown


@pytest.mark.inprocess
def test_user_names_with_a_trailing_newline_are_refused(admin, planes):
    """`$` would match before a final newline: a name like "bob\\n" must not reach htpasswd."""
    response = admin.post("/admin/users", json={"name": "bob\n", "role": "reader", "prefixes": []})
    assert response.status_code == 400
    assert "bob\n" not in planes.htpasswd.read_text()


# --- issue 9: scheme names are strict, at the edge and in the apps ---------------
def _basic_value(name: str, password: str) -> str:
    import base64

    return base64.b64encode(f"{name}:{password}".encode()).decode()


@pytest.mark.parametrize("scheme", ["bearer", "BEARER", "Bearer", "Token", "Digest", "Basicx"])
def test_credentials_under_another_scheme_are_refused(stack, make_user, admin, key, scheme):
    """user:password in base64 under any scheme but Basic is 401 through the edge and
    straight at a plane, and writes nothing."""
    writer = make_user("writer", ["k-"])
    header = {"Authorization": f"{scheme} {_basic_value(writer.name, writer.password)}"}
    anonymous = Client(stack)
    through_edge = anonymous.post(f"/write/{key}/edge", headers=header)
    assert through_edge.status_code == 401, through_edge.text
    assert through_edge.json()["error"]["code"] == "unauthorized"
    for port in (stack.config.ap_ports[0], stack.config.cp_port):
        path = f"/write/{key}/direct" if port != stack.config.cp_port else f"/ops/write/{key}/x"
        direct = anonymous.direct("POST", port, path, headers=header)
        assert direct.status_code == 401, (port, direct.text)
    assert admin.get(f"/read/{key}").status_code == 404


@pytest.mark.parametrize("scheme", ["Basic", "basic", "BASIC"])
def test_basic_is_accepted_in_any_case(stack, make_user, key, scheme):
    writer = make_user("writer", ["k-"])
    header = {"Authorization": f"{scheme} {_basic_value(writer.name, writer.password)}"}
    assert Client(stack).post(f"/write/{key}/edge", headers=header).status_code == 201
    port = stack.config.ap_ports[0]
    direct = Client(stack).direct("POST", port, f"/write/{key}/direct", headers=header)
    assert direct.status_code == 200


@pytest.mark.parametrize("scheme", ["Bearer", "bearer", "BEARER"])
def test_bearer_tokens_are_accepted_in_any_case(stack, make_user, key, scheme):
    writer = make_user("writer", ["k-"])
    access = writer.post("/auth/token").json()["access_token"]
    header = {"Authorization": f"{scheme} {access}"}
    assert Client(stack).post(f"/write/{key}/edge", headers=header).status_code == 201
    port = stack.config.ap_ports[0]
    direct = Client(stack).direct("POST", port, f"/write/{key}/direct", headers=header)
    assert direct.status_code == 200


# --- issue 9: the verification cache is dropped on every (re)subscription --------
def test_verification_cache_is_dropped_when_pubsub_reconnects(tmp_path):
    """redis-py reconnects a killed pub/sub connection and resubscribes without a
    word; events published meanwhile are lost, so the cache must be dropped then.
    A private redis-server (no ACL) lets the test kill the connection server-side."""
    import time

    import redis
    from redis.backoff import ExponentialBackoff
    from redis.retry import Retry

    from productionlab.redis_process import RedisProcess
    from productionlab.users import User, UserStore
    from tests.faultkit import wait_until

    server = RedisProcess(password=False, appendonly=False, directory=tmp_path)
    operator = server.start()
    # The planes' client options (store/connection.py): retries reconnect silently.
    client = redis.Redis(
        host="127.0.0.1",
        port=server.port,
        socket_timeout=2,
        retry=Retry(ExponentialBackoff(cap=0.2, base=0.02), 2),
        retry_on_error=[redis.ConnectionError, redis.TimeoutError],
    )
    store = UserStore(client, cache_secret=b"s" * 32, cache_seconds=300)
    try:
        store.start_listener()
        assert wait_until(lambda: store.cache.enabled, 30) is not None
        user = User(name="alice", role="reader", prefixes=("a-",))
        for round_ in range(2):
            store.cache.put("alice", "pw", user)
            assert store.cache.get("alice", "pw") == user
            assert wait_until(lambda: operator.pubsub_numsub("{plab}:users:events")[0][1], 30)
            assert operator.client_kill_filter(_type="pubsub") >= 1
            dropped = wait_until(lambda: store.cache.get("alice", "pw") is None, 30)
            assert dropped is not None, f"cache survived the reconnect (round {round_})"
            # ...and it is back on once resubscribed (not merely switched off).
            assert wait_until(lambda: store.cache.enabled, 30) is not None
            time.sleep(0.2)
    finally:
        store.stop_listener()
        store.events.join(10)
        client.close()
        server.stop()
