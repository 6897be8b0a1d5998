"""The admin API as a whole: the role gate, JSON errors for bad input, stats,
and that admin actions are audited."""

from __future__ import annotations

import pytest

from tests.conftest import create_user

# The admin API is the control plane's: on the in-process layer (tests/inprocess.py).
pytestmark = pytest.mark.inprocess

ADMIN_ROUTES = [
    ("GET", "/admin/users"),
    ("POST", "/admin/users"),
    ("GET", "/admin/users/admin"),
    ("PATCH", "/admin/users/admin"),
    ("POST", "/admin/users/admin/disable"),
    ("POST", "/admin/users/admin/enable"),
    ("POST", "/admin/users/admin/rotate"),
    ("POST", "/admin/users/admin/revoke-tokens"),
    ("DELETE", "/admin/users/admin"),
    ("GET", "/admin/tokens?user=admin"),
    ("GET", "/admin/tokens/keys"),
    ("POST", "/admin/tokens/abc/revoke"),
    ("GET", "/admin/audit"),
    ("GET", "/admin/audit/head"),
    ("POST", "/admin/audit/verify"),
    ("POST", "/admin/audit/trim"),
    ("GET", "/admin/backups"),
    ("POST", "/admin/backups"),
    ("POST", "/admin/backups/x.plab-backup/verify"),
    ("GET", "/admin/check-prod"),
    ("GET", "/admin/stats"),
]


@pytest.fixture(scope="module")
def non_admins(planes) -> list:
    return [create_user(planes.admin(), role, ["*"]) for role in ("reader", "writer")]


@pytest.mark.parametrize("method,path", ADMIN_ROUTES)
def test_every_admin_route_needs_the_admin_role(non_admins, anonymous, method, path):
    for user in non_admins:
        role = user.name
        response = user.request(method, path, json={})
        assert response.status_code == 403, (role, response.text)
        assert response.json()["error"]["code"] == "forbidden"
    response = anonymous.request(method, path, json={})
    assert response.status_code == 401
    assert response.headers["WWW-Authenticate"].startswith("Basic")


@pytest.mark.parametrize("method,path", ADMIN_ROUTES)
def test_admin_routes_refuse_on_the_app_plane(admin, method, path):
    """The admin API lives on the control plane only."""
    response = admin.direct(method, "ap", path.split("?")[0], json={})
    assert response.status_code == 404


@pytest.mark.parametrize(
    "data,content_type",
    [("not json", "application/json"), ("[1, 2]", "application/json"), ("", "text/plain")],
)
def test_bad_bodies_are_400_json(admin, data, content_type):
    for path in ("/admin/users", "/admin/audit/trim"):
        response = admin.post(path, data=data, headers={"Content-Type": content_type})
        assert response.status_code == 400
        assert response.json()["error"]["code"] == "bad_request"
        assert response.json()["request_id"]


def test_wrong_method_is_405_json(admin):
    response = admin.request("PUT", "/admin/stats")
    assert response.status_code == 405
    assert response.json()["error"]["code"] == "method_not_allowed"


def test_stats(admin, key):
    assert admin.post(f"/write/{key}/v").status_code == 201
    stats = admin.get("/admin/stats")
    assert stats.status_code == 200
    body = stats.json()
    assert body["keys"] >= 1 and body["users"] >= 1 and body["audit_entries"] >= 1
    assert body["aof_enabled"] is True and body["aof_last_write_status"] == "ok"


def test_admin_with_a_bearer_token(admin, anonymous):
    token = admin.post("/auth/token").json()["access_token"]
    response = anonymous.get("/admin/stats", headers={"Authorization": f"Bearer {token}"})
    assert response.status_code == 200


def test_audit_head_and_verify(admin):
    head = admin.get("/admin/audit/head").json()
    assert head["seq"] >= 1 and len(head["hash"]) == 40 and head["first"] >= 1
    verify = admin.post("/admin/audit/verify")
    assert verify.status_code == 200 and verify.json()["ok"] is True
