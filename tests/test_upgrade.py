"""Upgrading from the previous release: its stored state keeps working.

Each change to stored state adds its own checks here (or in a test of its own
built on :mod:`upgrade_kit`).
"""

from __future__ import annotations

import json

from upgrade_kit import upgraded_fixture

from productionlab.audit import entry_hash
from productionlab.audit_archive import LEGACY_REPORT, Archive, verify_legacy
from productionlab.store.layout import shard_for
from productionlab.supervisor import Supervisor
from tests.conftest import Client

# The previous release's state, then this release started on it.
upgraded = upgraded_fixture("plab-upgrade-")


def test_previous_release_wrote_something(upgraded):
    _, old = upgraded
    assert old.keys and old.users
    assert old.audit_verify.get("ok") is True, old.audit_verify


def test_users_and_keys_survive_the_upgrade(upgraded):
    stack, old = upgraded
    writer = Client(stack, "olduser-w", old.users["olduser-w"]["password"])
    reader = Client(stack, "olduser-r", old.users["olduser-r"]["password"])
    for key, stored in old.keys.items():
        response = reader.get(f"/v1/kv/{key}")
        assert response.status_code == 200, (key, response.text)
        if "value" in stored:
            assert response.content == stored["value"].encode()
        else:
            assert response.content == bytes.fromhex(stored["value_hex"])
    assert reader.get("/v1/kv/app-old-4").status_code == 404
    response = writer.post("/write/app-old-0/after-upgrade")
    assert response.status_code == 200, response.text
    assert response.json()["version"] > old.keys["app-old-0"]["version"]
    assert reader.get("/read/app-old-0").json()["value"] == "after-upgrade"


def test_admin_and_audit_survive_the_upgrade(upgraded):
    stack, old = upgraded
    admin = Client(stack, "admin", old.admin_password)
    response = admin.get("/admin/users")
    assert response.status_code == 200, response.text
    verify = admin.post("/admin/audit/verify")
    assert verify.status_code == 200, verify.text
    assert verify.json()["ok"] is True, verify.json()


def test_failure_counting_and_aggregate_audit_work_on_the_old_log(upgraded):
    """Issue 9 adds keys ({plab}:authfail:window, :tok:<addr>, {plab}:routelimit:*) and
    a new audit action; the previous release's log and counters need no migration:
    aggregate entries chain onto its entries and the whole log still verifies."""
    import json
    import time

    import requests

    from productionlab.audit import Actor
    from productionlab.loginguard import LoginGuard

    stack, old = upgraded
    port = stack.config.ap_ports[0]
    address = "198.18.99.1"
    for n in range(3):
        junk = requests.get(
            f"http://{stack.config.bind}:{port}/read/app-old-0",
            headers={"Authorization": f"Bearer junk-{n}", "X-Forwarded-For": address},
            timeout=30,
        )
        assert junk.status_code == 401
    reader = Client(stack, "olduser-r", old.users["olduser-r"]["password"])
    right = reader.direct("GET", port, "/read/app-old-0", headers={"X-Forwarded-For": address})
    assert right.status_code == 200
    guard = LoginGuard(stack.redis_client("cp"), 10, 100)
    assert guard.close_window(Actor("-"), now=time.time() + 3600) >= 1
    client = stack.redis_client()
    entries = [json.loads(e) for e in client.lrange("{plab}:audit", 0, -1)]
    client.close()
    mine = [e for e in entries if e["action"] == "auth.failures" and e["target"] == address]
    assert mine and mine[-1]["outcome"] == "count:3"
    admin = Client(stack, "admin", old.admin_password)
    verify = admin.post("/admin/audit/verify")
    assert verify.status_code == 200 and verify.json()["ok"] is True, verify.text


# --- the audit log: the previous release's HMAC chain, archived and linked ------------
def test_legacy_audit_entries_are_archived_verified_and_linked(upgraded):
    """At its first start the control plane verified the previous release's
    HMAC-chained entries with the still-configured PLAB_AUDIT_KEY, archived them
    with the result, and the new hash chain continues from the last of them."""
    stack, _ = upgraded
    archive = stack.state / "audit" / "archive"
    report = json.loads((archive / LEGACY_REPORT).read_text())
    assert report["ok"] is True and report["checked"] > 0, report
    (segment,) = [s for s in Archive(archive).segments() if s.path.name == report["segment"]]
    raws = segment.raws()
    entries = [json.loads(r) for r in raws]
    assert all("mac" in e for e in entries) and len(entries) == report["checked"]
    assert {"user.create", "kv.put", "token.issue"} <= {e["action"] for e in entries}
    # still verifiable with the old key, from the archive alone
    key = stack.secret("audit_key").encode()
    assert verify_legacy(raws, key, report["meta"]).ok is True
    # and nothing of the old format is left in redis
    client = stack.redis_client()
    meta = client.hgetall("{plab}:audit:meta")
    assert b"mac" not in meta and b"seq" not in meta
    assert int(meta[b"first"]) == segment.last + 1
    assert meta[b"first_prev"].decode() == entry_hash(raws[-1])
    current = [json.loads(r) for r in client.lrange("{plab}:audit", 0, -1)]
    assert not any("mac" in e for e in current)
    migrate = [e for e in current if e["action"] == "audit.migrate"]
    assert [(e["target"], e["outcome"]) for e in migrate] == [
        (f"legacy:{segment.first}-{segment.last}", "ok")
    ]
    assert current[0]["seq"] == segment.last + 1 and current[0]["prev"] == entry_hash(raws[-1])
    client.close()


def test_audit_verifies_across_the_upgrade_and_new_writes_chain_on(upgraded):
    stack, old = upgraded
    admin = Client(stack, "admin", old.admin_password)
    writer = Client(stack, "olduser-w", old.users["olduser-w"]["password"])
    assert writer.post("/write/app-old-1/chained").status_code == 200
    assert admin.post("/admin/audit/checkpoint").status_code == 201
    body = admin.post("/admin/audit/verify").json()
    assert body["ok"] is True, body
    assert body["first"] == 1 and body["archived"] > 0
    assert "legacy entries, MACs checked" in body["legacy"]
    assert body["latest_checkpoint"]["seq"] == body["last"]
    client = stack.redis_client()
    last_two = client.lrange("{plab}:audit", -2, -1)
    assert json.loads(last_two[1])["prev"] == entry_hash(last_two[0])
    client.close()
    # a legacy entry changed in the archive is caught by its MAC
    archive = stack.state / "audit" / "archive"
    report = json.loads((archive / LEGACY_REPORT).read_text())
    path = archive / report["segment"]
    original = path.read_bytes()
    lines = original.decode().splitlines()
    entry = json.loads(json.loads(lines[2]))
    entry["actor"] = "mallory"
    lines[2] = json.dumps(json.dumps(entry, separators=(",", ":")))
    path.write_text("\n".join(lines) + "\n")
    try:
        body = admin.post("/admin/audit/verify").json()
        assert body["ok"] is False and body["first_bad_seq"] <= entry["seq"], body
    finally:
        path.write_bytes(original)
    assert admin.post("/admin/audit/verify").json()["ok"] is True


def test_the_app_plane_no_longer_gets_the_audit_key(upgraded):
    stack, _ = upgraded
    assert not any(k.startswith("PLAB_AUDIT") for k in stack.plane_env("ap"))
    assert "PLAB_AUDIT_KEY_FILE" in stack.plane_env("cp")


def test_previous_release_tokens_get_a_clean_401_and_basic_issues_a_new_pair(upgraded):
    """Tokens are Ed25519-signed now (the app plane holds only the public key): the
    previous release's HMAC tokens are refused once, as a clean 401 JSON error, on
    the app plane and at refresh; the user's Basic credentials issue a new pair."""
    stack, old = upgraded
    assert old.tokens["access_token"].startswith("plab1.")
    anonymous = Client(stack)
    bearer = {"Authorization": f"Bearer {old.tokens['access_token']}"}
    for response in (
        anonymous.get("/v1/kv/app-old-0", headers=bearer),
        anonymous.post("/auth/refresh", json={"refresh_token": old.tokens["refresh_token"]}),
    ):
        assert response.status_code == 401, response.text
        body = response.json()
        assert body["error"]["code"] == "unauthorized" and body["request_id"], body
    writer = Client(stack, "olduser-w", old.users["olduser-w"]["password"])
    fresh = writer.post("/auth/token")
    assert fresh.status_code == 200, fresh.text
    pair = fresh.json()
    assert pair["access_token"].startswith("plab2.")
    again = {"Authorization": f"Bearer {pair['access_token']}"}
    assert anonymous.get("/v1/kv/app-old-0", headers=again).status_code == 200
    renewed = anonymous.post("/auth/refresh", json={"refresh_token": pair["refresh_token"]})
    assert renewed.status_code == 200, renewed.text
    # the app plane was started without the signing key, with the public key only
    env = stack.plane_env("ap")
    assert "PLAB_TOKEN_KEY_FILE" not in env and "PLAB_TOKEN_PUBLIC_KEY_FILE" in env


def test_previous_release_users_are_reviewed_and_their_use_recorded(upgraded):
    """Issue 15, item 4: no last-used record before the upgrade (shown as never),
    and the upgraded app plane's ACL lets it record one."""
    from productionlab.lastused import LAST_USED, review

    stack, old = upgraded
    cp = stack.redis_client("cp")
    reader = Client(stack, "olduser-r", old.users["olduser-r"]["password"])
    assert reader.get("/v1/kv/app-old-0").status_code == 200
    # written by the upgraded app plane (this request, or an earlier test's within
    # the minute): the previous release never wrote these keys
    assert int(cp.hget(LAST_USED + "olduser-r", "at") or 0) > 0
    cp.delete(LAST_USED + "olduser-r")
    rows = {row["name"]: row for row in review(all_users(stack), cp, lambda name: [])}
    assert rows["olduser-r"]["last_used"] is None
    assert "unused_90_days" not in rows["olduser-r"]["flags"]  # created today
    assert rows["olduser-w"]["role"] == "writer" and rows["olduser-w"]["grants"] == ["app-"]
    assert rows["olduser-empty"]["flags"] == ["wildcard"]  # the old "" grant, now "*"


def all_users(stack: Supervisor) -> list:
    from productionlab.users import UserStore

    return UserStore(stack.redis_client("cp"), b"k" * 32).all()


def test_a_stored_empty_grant_becomes_an_explicit_wildcard(upgraded):
    """The previous release stored "" as a grant (a silent wildcard); it is refused
    now, and the upgrade makes a stored one the explicit "*" it meant, audited, so
    the user keeps its access and every listing shows it for what it is."""
    stack, old = upgraded
    admin = Client(stack, "admin", old.admin_password)
    shown = admin.get("/admin/users/olduser-empty")
    assert shown.status_code == 200, shown.text
    assert shown.json()["prefixes"] == ["*"]
    reader = Client(stack, "olduser-empty", old.users["olduser-empty"]["password"])
    assert reader.get("/read/app-old-0").status_code == 200
    client = stack.redis_client()
    entries = [json.loads(e) for e in client.lrange("{plab}:audit", 0, -1)]
    client.close()
    assert any(
        e["action"] == "user.grants"
        and e["target"] == "olduser-empty"
        and e["actor"] == "migration"
        for e in entries
    )


def test_keys_with_a_ttl_from_before_watches_get_a_tombstone_when_they_expire(upgraded):
    """The previous release wrote app-old-ttl (a day's TTL) with no record of its
    version for watches; the control plane's start-up migration recorded it, so
    its expiry (brought forward here) gives it a tombstone past its version."""
    stack, old = upgraded
    version = old.keys["app-old-ttl"]["version"]
    client = stack.redis_client("cp")
    # recorded as the store moved to the shards (shardmigrate.py)
    ttl_versions = shard_for("app-old-ttl").ttl_versions
    assert int(client.hget(ttl_versions, "app-old-ttl")) == version
    assert client.hget(shard_for("app-old-0").ttl_versions, "app-old-0") is None  # no TTL
    reader = Client(stack, "olduser-r", old.users["olduser-r"]["password"])
    waiting = reader.get(f"/v1/watch/app-old-ttl?index={version}&wait=0").json()
    assert waiting["exists"] is True and waiting["changed"] is False
    client.pexpire(shard_for("app-old-ttl").item("app-old-ttl"), 1)
    body = reader.get(f"/v1/watch/app-old-ttl?index={version}&wait=60").json()
    assert body["changed"] is True and body["exists"] is False
    assert body["index"] > version
