"""Credentials: the user lifecycle through the admin API and the CLI, the
edge's htpasswd, and cache invalidation in every process."""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
import time

import pytest

from productionlab.credential_cache import VerificationCache
from productionlab.users import User
from tests.conftest import Client

NEVER_SHOWN = ("pw", "edge", "password_hash", "edge_hash", "gen")


def everywhere(stack, client: Client, method: str, path: str) -> list[int]:
    """The status of one request through the edge and straight to every app process."""
    statuses = [client.request(method, path).status_code]
    for port in stack.config.ap_ports:
        statuses.append(client.direct(method, port, path).status_code)
    return statuses


def refused_everywhere_within(stack, client: Client, path: str, seconds: float) -> list[int]:
    deadline = time.monotonic() + seconds
    while True:
        statuses = everywhere(stack, client, "GET", path)
        if all(s == 401 for s in statuses) or time.monotonic() > deadline:
            return statuses


def cli(stack, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "productionlab", *args],
        env=stack.plane_env("cp"),
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_create_shows_password_once_and_list_never(admin, stack):
    name = f"u{secrets.token_hex(5)}"
    created = admin.post("/admin/users", json={"name": name, "role": "writer", "prefixes": ["a-"]})
    assert created.status_code == 201
    body = created.json()
    assert body["name"] == name and body["role"] == "writer" and body["prefixes"] == ["a-"]
    assert len(body["password"]) >= 43
    assert created.headers["Location"] == f"/admin/users/{name}"
    listed = admin.get("/admin/users")
    assert listed.status_code == 200
    assert body["password"] not in listed.text
    mine = next(u for u in listed.json()["users"] if u["name"] == name)
    assert not set(mine) & set(NEVER_SHOWN) and "password" not in mine
    shown = admin.get(f"/admin/users/{name}").json()
    assert shown["name"] == name and "password" not in shown and not set(shown) & set(NEVER_SHOWN)


@pytest.mark.parametrize(
    "body,status",
    [
        ({"name": "Bad Name", "role": "reader", "prefixes": []}, 400),
        ({"name": "ok-name", "role": "root", "prefixes": []}, 400),
        ({"name": "ok-name", "role": "reader", "prefixes": ["no/slash"]}, 400),
        ({"name": "ok-name", "role": "reader", "prefixes": "a-"}, 400),
        ({"name": "ok-name", "role": "reader", "prefixes": [], "password": "x"}, 400),
        ({"name": "admin", "role": "reader", "prefixes": []}, 409),
    ],
)
def test_bad_user_bodies_change_nothing(admin, body, status):
    before = admin.get("/admin/users").json()
    response = admin.post("/admin/users", json=body)
    assert response.status_code == status
    assert response.json()["error"]["code"] in ("bad_request", "conflict")
    assert admin.get("/admin/users").json() == before


def test_admin_routes_need_admin(stack, make_user, anonymous):
    writer = make_user("writer", ["*"])
    for method, path in [
        ("GET", "/admin/users"),
        ("POST", "/admin/users/admin/disable"),
        ("GET", "/admin/audit"),
        ("POST", "/admin/backups"),
    ]:
        assert writer.request(method, path).status_code == 403
        assert anonymous.request(method, path).status_code == 401


def test_unknown_user_is_404(admin):
    for method, path in [
        ("GET", "/admin/users/nobody-here"),
        ("PATCH", "/admin/users/nobody-here"),
        ("POST", "/admin/users/nobody-here/disable"),
        ("POST", "/admin/users/nobody-here/rotate"),
        ("DELETE", "/admin/users/nobody-here"),
    ]:
        kwargs = {"json": {"role": "reader"}} if method == "PATCH" else {}
        assert admin.request(method, path, **kwargs).status_code == 404, path


def test_admin_cannot_lock_itself_out(admin):
    assert admin.post("/admin/users/admin/disable").status_code == 400
    assert admin.delete("/admin/users/admin").status_code == 400
    assert admin.request("PATCH", "/admin/users/admin", json={"role": "reader"}).status_code == 400
    assert admin.get("/admin/users").status_code == 200


def test_disabled_user_is_refused_within_a_second_everywhere(stack, admin, make_user, key):
    user = make_user("reader", ["*"])
    # warm every verification cache: the edge and both app processes accept the user
    assert everywhere(stack, user, "GET", f"/read/{key}") == [404] * (
        1 + len(stack.config.ap_ports)
    )
    assert everywhere(stack, user, "GET", f"/read/{key}") == [404] * (
        1 + len(stack.config.ap_ports)
    )
    assert admin.post(f"/admin/users/{user.name}/disable").json()["disabled"] is True
    statuses = refused_everywhere_within(stack, user, f"/read/{key}", 1.0)
    assert statuses == [401] * (1 + len(stack.config.ap_ports))
    assert f"\n{user.name}:" not in "\n" + stack.htpasswd.read_text()
    # re-enabled: accepted again everywhere
    assert admin.post(f"/admin/users/{user.name}/enable").json()["disabled"] is False
    assert everywhere(stack, user, "GET", f"/read/{key}") == [404] * (
        1 + len(stack.config.ap_ports)
    )


def test_rotation_shows_a_new_password_once_and_kills_the_old(stack, admin, make_user, key):
    user = make_user("reader", ["*"])
    assert everywhere(stack, user, "GET", f"/read/{key}") == [404] * 3
    rotated = admin.post(f"/admin/users/{user.name}/rotate")
    assert rotated.status_code == 200
    new_password = rotated.json()["password"]
    assert new_password != user.password and len(new_password) >= 43
    assert refused_everywhere_within(stack, user, f"/read/{key}", 1.0) == [401] * 3
    fresh = Client(stack, user.name, new_password)
    assert everywhere(stack, fresh, "GET", f"/read/{key}") == [404] * 3
    assert new_password not in admin.get(f"/admin/users/{user.name}").text


def test_grant_change_applies_at_once_everywhere(stack, admin, make_user, key):
    user = make_user("writer", [key])
    assert everywhere(stack, user, "GET", f"/read/{key}") == [404] * 3
    changed = admin.request("PATCH", f"/admin/users/{user.name}", json={"prefixes": ["elsewhere-"]})
    assert changed.status_code == 200 and changed.json()["prefixes"] == ["elsewhere-"]
    assert changed.json()["role"] == "writer"
    deadline = time.monotonic() + 1.0
    while everywhere(stack, user, "GET", f"/read/{key}") != [403] * 3:
        assert time.monotonic() < deadline
    bad = admin.request("PATCH", f"/admin/users/{user.name}", json={"role": "god"})
    assert bad.status_code == 400
    assert admin.request("PATCH", f"/admin/users/{user.name}", json={}).status_code == 400


def test_deleted_user_is_refused_everywhere(stack, admin, make_user, key):
    user = make_user("reader", ["*"])
    assert everywhere(stack, user, "GET", f"/read/{key}") == [404] * 3
    assert admin.delete(f"/admin/users/{user.name}").status_code == 204
    assert refused_everywhere_within(stack, user, f"/read/{key}", 1.0) == [401] * 3
    assert admin.get(f"/admin/users/{user.name}").status_code == 404
    assert admin.delete(f"/admin/users/{user.name}").status_code == 404


def test_htpasswd_is_replaced_atomically(stack, make_user):
    """A reader holding the old file keeps a complete old copy: the new file was
    renamed into place, never rewritten in place (nginx never sees half a file)."""
    with open(stack.htpasswd, encoding="utf-8") as old:
        user = make_user("reader", ["*"])
        assert os.fstat(old.fileno()).st_nlink == 0  # the old file was replaced
        assert user.name not in old.read()
    after = stack.htpasswd.stat()
    assert after.st_mode & 0o777 == 0o640
    lines = stack.htpasswd.read_text().splitlines()
    assert any(line.startswith(user.name + ":{SSHA}") for line in lines)
    # renders still in flight (the control plane's listener) finish; none leave a temp file
    deadline = time.monotonic() + 5
    while True:
        leftovers = [p.name for p in stack.htpasswd.parent.iterdir() if p.name.startswith(".")]
        if not leftovers or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert leftovers == []


def test_cli_user_lifecycle(stack, admin, key):
    name = f"c{secrets.token_hex(5)}"
    created = cli(stack, "users", "create", name, "--role", "writer", "--prefix", key)
    assert created.returncode == 0, created.stderr
    password = json.loads(created.stdout)["password"]
    user = Client(stack, name, password)
    assert user.post(f"/write/{key}/v").status_code == 201
    listed = cli(stack, "users", "list")
    assert listed.returncode == 0 and password not in listed.stdout
    assert name in [json.loads(line)["name"] for line in listed.stdout.splitlines()]
    shown = json.loads(cli(stack, "users", "show", name).stdout)
    assert shown["prefixes"] == [key] and "password" not in shown

    assert cli(stack, "users", "grants", name, "--role", "reader").returncode == 0
    assert json.loads(cli(stack, "users", "show", name).stdout)["role"] == "reader"
    assert cli(stack, "users", "disable", name).returncode == 0
    assert refused_everywhere_within(stack, user, f"/read/{key}", 1.0) == [401] * 3
    assert cli(stack, "users", "enable", name).returncode == 0
    assert user.get(f"/read/{key}").status_code == 200
    rotated = cli(stack, "users", "rotate", name)
    assert rotated.returncode == 0
    new_password = json.loads(rotated.stdout)["password"]
    assert new_password != password
    assert Client(stack, name, new_password).get(f"/read/{key}").status_code == 200
    assert cli(stack, "users", "delete", name).returncode == 0
    missing = cli(stack, "users", "show", name)
    assert missing.returncode == 1 and "no user" in missing.stderr
    actions = [
        e["action"] for e in audit_entries(admin, actor=f"cli:{_login()}") if e["target"] == name
    ]
    for action in (
        "user.create",
        "user.grants",
        "user.disable",
        "user.enable",
        "user.rotate",
        "user.delete",
    ):
        assert action in actions


def audit_entries(admin: Client, **filters: str) -> list[dict]:
    """Every audit entry matching the filters, following next_since to the end."""
    found, since = [], 1
    while since is not None:
        page = admin.get("/admin/audit", params={"since": since, "limit": 1000, **filters})
        assert page.status_code == 200, page.text
        found += page.json()["entries"]
        since = page.json()["next_since"]
    return found


def _login() -> str:
    import getpass

    return getpass.getuser()


def test_cache_never_keeps_a_verification_begun_before_a_change():
    cache = VerificationCache(b"s" * 32, ttl=60)
    cache.enabled = True
    user = User("x", "reader", ("*",))
    epoch = cache.epoch
    cache.clear()  # a change arrives while the slow hash runs
    cache.put("x", "pw", user, epoch)
    assert cache.get("x", "pw") is None
    cache.put("x", "pw", user, cache.epoch)
    assert cache.get("x", "pw") is user


def test_expired_credential_is_verified_once_not_by_every_thread(stack, make_user):
    """Single flight: concurrent misses on one credential run argon2id once."""
    import threading

    from productionlab import users as users_module
    from productionlab.users import UserStore

    writer = make_user("writer", ["*"])
    store = UserStore(stack.redis_client(), b"s" * 32, cache_seconds=60)
    store.cache.enabled = True
    real_hasher = users_module.HASHER
    calls = []

    class CountingHasher:
        """The real argon2id hasher, counting its verifications."""

        def verify(self, hashed: str, password: str) -> bool:
            calls.append(1)
            return real_hasher.verify(hashed, password)

        def hash(self, password: str) -> str:
            return real_hasher.hash(password)

    users_module.HASHER = CountingHasher()
    try:
        barrier = threading.Barrier(8)
        results = []

        def verify() -> None:
            barrier.wait()
            results.append(store.verify(writer.name, writer.password))

        threads = [threading.Thread(target=verify) for _ in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    finally:
        users_module.HASHER = real_hasher
        store.client.close()
    assert all(user is not None and user.name == writer.name for user in results)
    assert len(results) == 8
    assert len(calls) == 1
