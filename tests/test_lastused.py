"""Last used, cheaply (at most one redis write a minute per user and process,
into a key the app plane's ACL allows), and the access review: the CLI's
``users review`` and ``GET /admin/users/review``."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest
import redis

from productionlab.lastused import LAST_USED, LastUsed
from productionlab.redis_process import RedisProcess
from tests.conftest import Client, admin_of, create_user


@pytest.fixture(scope="module")
def single():
    """One app-plane process, so "once a minute per process" is once a minute."""
    from tests.conftest import start_stack, stop_stack

    stack = start_stack(
        ap_workers=1, edge_rate=5000, edge_burst=5000, admin_rate=1000, admin_burst=1000
    )
    yield stack
    stop_stack(stack)


def record(stack, name: str) -> dict[str, int]:
    raw = stack.redis_client("cp").hgetall(LAST_USED + name)
    return {k.decode(): int(v) for k, v in raw.items()}


def test_a_request_records_last_used_at_most_once_a_minute(single):
    user = create_user(admin_of(single), "writer", ["lu-"])
    before = time.time()
    assert user.put("/v1/kv/lu-a", data=b"1").status_code in (200, 201)
    first = record(single, user.name)
    assert before - 1 <= first["at"] <= time.time() + 1
    # Mark the record; further requests within the minute must not write it again.
    single.redis_client("cp").hset(LAST_USED + user.name, "at", 1)
    for index in range(5):
        assert user.get("/v1/kv/lu-a").status_code == 200, index
    assert record(single, user.name)["at"] == 1


def test_a_bearer_request_records_its_token_family(single):
    user = create_user(admin_of(single), "reader", ["lf-"])
    issued = user.post("/auth/token")  # Basic, on the control plane
    assert issued.status_code == 200, issued.text
    access = issued.json()["access_token"]
    bearer = Client(single)
    with bearer.session() as session:
        session.headers["Authorization"] = f"Bearer {access}"
        answer = session.get(single.url + "/v1/kv/lf-missing", timeout=15)
    assert answer.status_code == 404, answer.text
    families = admin_of(single).get(f"/admin/tokens?user={user.name}").json()["families"]
    (family,) = [f["family"] for f in families]
    assert f"fam:{family}" in record(single, user.name)


def test_the_app_plane_may_write_last_used_but_still_not_user_records(single):
    ap = single.redis_client("ap")
    ap.hset(LAST_USED + "someone", "at", 5)
    with pytest.raises(redis.exceptions.NoPermissionError):
        ap.hset("{plab}:user:someone", "role", "admin")


def test_the_memo_is_per_process_and_per_minute():
    with RedisProcess() as client:
        tracker = LastUsed(client)
        assert tracker.touch("alice", now=1000)
        assert not tracker.touch("alice", "fam1", now=1001)
        assert tracker.touch("bob", "fam2", now=1002)
        assert client.hgetall(LAST_USED + "alice") == {b"at": b"1000"}
        assert client.hgetall(LAST_USED + "bob") == {b"at": b"1002", b"fam:fam2": b"1002"}
        assert 0 < client.ttl(LAST_USED + "alice") <= 400 * 86400
        eager = LastUsed(client, every=0)
        assert eager.touch("alice", now=2000) and eager.touch("alice", "fam3", now=2001)
        assert client.hget(LAST_USED + "alice", "at") == b"2001"


def review_cli(stack) -> list[dict]:
    result = subprocess.run(
        [sys.executable, "-m", "productionlab", "users", "review", "--json"],
        env=stack.plane_env("cp"),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    return [json.loads(line) for line in result.stdout.splitlines()]


def test_review_flags_admins_wildcards_and_unused_accounts(single):
    admin = admin_of(single)
    fresh = create_user(admin, "reader", ["rv-"])
    old = create_user(admin, "writer", ["rv-old-"])
    stale = create_user(admin, "reader", ["rv-stale-"])
    wide = create_user(admin, "reader", ["rv-"])
    changed = admin.request("PATCH", f"/admin/users/{wide.name}", json={"prefixes": ["*"]})
    assert changed.status_code == 200, changed.text
    cp = single.redis_client("cp")
    long_ago = time.time() - 120 * 86400
    # an account created 120 days ago and never used; one last used 120 days ago
    cp.hset(f"{{plab}}:user:{old.name}", "created", f"{long_ago:.3f}")
    cp.hset(f"{{plab}}:user:{stale.name}", "created", f"{long_ago:.3f}")
    cp.delete(LAST_USED + stale.name, LAST_USED + old.name)
    cp.hset(LAST_USED + stale.name, "at", int(long_ago) + 86400)
    assert fresh.post("/auth/token").status_code == 200  # a used account with a live family

    for rows in (review_cli(single), admin.get("/admin/users/review").json()["users"]):
        by_name = {row["name"]: row for row in rows}
        assert set(by_name) >= {"admin", fresh.name, old.name, stale.name, wide.name}
        assert {"admin", "wildcard"} <= set(by_name["admin"]["flags"])
        assert by_name[wide.name]["flags"] == ["wildcard"]
        assert by_name[wide.name]["grants"] == ["*"]
        assert by_name[old.name]["flags"] == ["unused_90_days"]
        assert by_name[old.name]["last_used"] is None
        assert by_name[stale.name]["flags"] == ["unused_90_days"]
        assert by_name[stale.name]["last_used"] == int(long_ago) + 86400
        row = by_name[fresh.name]
        assert row["flags"] == [] and row["role"] == "reader" and row["grants"] == ["rv-"]
        assert row["last_used"] >= time.time() - 600
        assert abs(row["created"] - time.time()) < 600
        (family,) = row["token_families"]
        assert not family["revoked"] and family["user"] == fresh.name


def test_review_is_admin_only(single):
    reader = create_user(admin_of(single), "reader", ["x-"])
    assert reader.get("/admin/users/review").status_code == 403
