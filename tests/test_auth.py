"""Authentication at the edge and in the apps."""

from __future__ import annotations

import pytest

from tests.conftest import Client


def test_no_credentials_is_401_with_challenge(anonymous, key):
    response = anonymous.get(f"/read/{key}")
    assert response.status_code == 401
    assert response.headers["WWW-Authenticate"].startswith("Basic")
    assert response.json()["error"]["code"] == "unauthorized"


@pytest.mark.parametrize("name,password", [("admin", "wrong"), ("nobody", "x"), ("", "")])
def test_bad_credentials_are_401(stack, name, password, key):
    response = Client(stack, name, password).get(f"/read/{key}")
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


def test_redis_holds_argon2id_hashes(stack, make_user):
    writer = make_user("writer", ["*"])
    client = stack.redis_client()
    stored = client.hget("{plab}:user:" + writer.name, "pw").decode()
    client.close()
    assert stored.startswith("$argon2id$")
    assert writer.password not in stored


def test_admin_password_file_is_private(stack):
    assert stack.admin_password_file.stat().st_mode & 0o777 == 0o600
    assert len(stack.admin_password_file.read_text().strip()) >= 43


def test_users_listing_never_shows_secrets(admin, make_user):
    writer = make_user("writer", ["x-"])
    body = admin.get("/admin/users").text
    assert writer.password not in body
    assert "argon2" not in body
    assert "SSHA" not in body


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


def test_create_user_twice_is_409(admin):
    body = {"name": "dup-user-x", "role": "reader", "prefixes": []}
    first = admin.post("/admin/users", json=body)
    assert first.status_code in (201, 409)
    second = admin.post("/admin/users", json=body)
    assert second.status_code == 409
    assert second.json()["error"]["code"] == "conflict"


def test_generated_password_shown_once(admin, make_user):
    writer = make_user("writer", ["*"])
    assert len(writer.password) >= 43
    shown = admin.get(f"/admin/users/{writer.name}").json()
    assert "password" not in shown


def test_user_names_with_a_trailing_newline_are_refused(admin, stack):
    """`$` would match before a final newline: a name like "bob\\n" must not reach htpasswd."""
    response = admin.post("/admin/users", json={"name": "bob\n", "role": "reader", "prefixes": []})
    assert response.status_code == 400
    assert "bob\n" not in stack.htpasswd.read_text()
