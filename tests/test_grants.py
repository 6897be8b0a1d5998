"""Roles and key-prefix grants on the data plane, and admin-only operator access."""

from __future__ import annotations

import pytest

# Grants are enforced by the planes: on the in-process layer (tests/inprocess.py).
pytestmark = pytest.mark.inprocess


def test_reader_reads_only_inside_grants(admin, make_user, key):
    admin.post(f"/write/app-{key}/v")
    admin.post(f"/write/other-{key}/v")
    reader = make_user("reader", ["app-"])
    assert reader.get(f"/read/app-{key}").status_code == 200
    outside = reader.get(f"/read/other-{key}")
    assert outside.status_code == 403
    assert outside.json()["error"]["code"] == "forbidden"


def test_reader_cannot_write(admin, make_user, key):
    reader = make_user("reader", ["app-"])
    for response in (
        reader.post(f"/write/app-{key}/v"),
        reader.put(f"/v1/kv/app-{key}", data=b"v"),
        reader.delete(f"/v1/kv/app-{key}"),
    ):
        assert response.status_code == 403
        assert response.json()["error"]["code"] == "forbidden"
    assert admin.get(f"/read/app-{key}").status_code == 404


def test_writer_writes_inside_grants_only(admin, make_user, key):
    writer = make_user("writer", ["team-a-"])
    assert writer.post(f"/write/team-a-{key}/v").status_code == 201
    assert writer.get(f"/read/team-a-{key}").json()["value"] == "v"
    assert writer.post(f"/write/team-b-{key}/v").status_code == 403
    assert writer.put(f"/v1/kv/team-b-{key}", data=b"v").status_code == 403
    assert admin.get(f"/read/team-b-{key}").status_code == 404


def test_forbidden_key_is_not_revealed(admin, make_user, key):
    """403 whether or not the key exists: grants are checked before the store."""
    reader = make_user("reader", ["mine-"])
    admin.post(f"/write/secret-{key}/v")
    exists = reader.get(f"/read/secret-{key}")
    absent = reader.get(f"/read/secret-{key}-nope")
    assert exists.status_code == absent.status_code == 403


def test_listing_shows_only_granted_keys(admin, make_user, key):
    for name in (f"a-{key}-1", f"a-{key}-2", f"b-{key}-1", f"c-{key}-1"):
        admin.post(f"/write/{name}/v")
    reader = make_user("reader", [f"a-{key}", f"c-{key}"])
    listed = reader.get("/v1/kv", params={"limit": "1000"}).json()["keys"]
    assert listed == [f"a-{key}-1", f"a-{key}-2", f"c-{key}-1"]
    narrowed = reader.get("/v1/kv", params={"prefix": f"a-{key}-2"}).json()["keys"]
    assert narrowed == [f"a-{key}-2"]
    assert reader.get("/v1/kv", params={"prefix": f"b-{key}"}).json()["keys"] == []


def test_admin_can_use_operator_routes_and_others_cannot(admin, make_user, key):
    assert admin.post(f"/ops/write/{key}/from-ops").status_code == 201
    assert admin.get(f"/read/{key}").json()["value"] == "from-ops"
    assert admin.get(f"/ops/read/{key}").json()["value"] == "from-ops"
    assert admin.put(f"/ops/v1/kv/{key}", data=b"raw").status_code == 200
    assert admin.get(f"/ops/v1/kv/{key}").content == b"raw"
    writer = make_user("writer", ["*"])
    assert writer.get(f"/ops/read/{key}").status_code == 403
    assert writer.post(f"/ops/write/{key}/x").status_code == 403


@pytest.mark.parametrize("path", ["/admin/users", "/admin/stats", "/admin/audit"])
def test_admin_api_needs_admin(make_user, path):
    writer = make_user("writer", ["*"])
    response = writer.get(path)
    assert response.status_code == 403
    assert response.json()["error"]["code"] == "forbidden"


def test_wildcard_grant_covers_everything(admin, make_user, key):
    writer = make_user("writer", ["*"])
    assert writer.post(f"/write/{key}/v").status_code == 201
    assert writer.get(f"/read/{key}").status_code == 200


# --- issue 9: an empty-string grant is refused, never a silent wildcard ----------
@pytest.mark.parametrize("prefixes", [[""], ["a-", ""]])
def test_empty_prefix_grant_is_refused_by_the_admin_api(admin, make_user, prefixes):
    import secrets

    name = f"u{secrets.token_hex(6)}"
    created = admin.post(
        "/admin/users", json={"name": name, "role": "reader", "prefixes": prefixes}
    )
    assert created.status_code == 400
    assert created.json()["error"]["code"] == "bad_request"
    assert admin.get(f"/admin/users/{name}").status_code == 404
    reader = make_user("reader", ["a-"])
    changed = admin.request("PATCH", f"/admin/users/{reader.name}", json={"prefixes": prefixes})
    assert changed.status_code == 400
    assert admin.get(f"/admin/users/{reader.name}").json()["prefixes"] == ["a-"]


@pytest.mark.inprocess(False)  # the CLI runs against the stack's redis
def test_empty_prefix_grant_is_refused_by_the_cli(stack, admin, make_user):
    import secrets

    from tests.conftest import cli

    name = f"u{secrets.token_hex(6)}"
    created = cli(stack, "users", "create", name, "--role", "reader", "--prefix", "")
    assert created.returncode != 0
    assert "empty prefix" in created.stderr + created.stdout
    assert admin.get(f"/admin/users/{name}").status_code == 404
    reader = make_user("reader", ["a-"])
    changed = cli(stack, "users", "grants", reader.name, "--prefix", "")
    assert changed.returncode != 0
    assert admin.get(f"/admin/users/{reader.name}").json()["prefixes"] == ["a-"]


def test_an_empty_prefix_covers_nothing_even_if_one_is_stored():
    from productionlab.users import User

    assert not User("r", "reader", ("",)).covers("any-key")
    assert User("r", "reader", ("", "a-")).covers("a-1")
    assert not User("r", "reader", ("", "a-")).covers("b-1")
    assert User("r", "reader", ("*",)).covers("b-1")
