"""The tamper-evident audit log: one entry per change, atomic with it, no
secrets in it; verification names the first bad entry for every kind of
tampering, truncation included once a signed checkpoint covers it; paging;
retention that archives first and keeps verification working."""

from __future__ import annotations

import json
import secrets
from collections.abc import Iterator
from pathlib import Path

import pytest

from productionlab.audit import entry_hash
from productionlab.audit_archive import Segment
from productionlab.store.layout import shard_for
from tests.conftest import Client, admin_of, cli, create_user, start_stack, stop_stack

AUDIT = "{plab}:audit"
META = "{plab}:audit:meta"


def tail(stack, count: int = 50, chain: str = AUDIT) -> list[dict]:
    client = stack.redis_client()
    raw = client.lrange(chain, -count, -1)
    client.close()
    return [json.loads(item) for item in raw]


# --- one entry per change, on the shared stack ------------------------------------
def entries_for(stack, target: str) -> list[dict]:
    """The entries about KV key ``target``: in its shard's chain."""
    chain, _ = shard_for(target).audit
    return [e for e in tail(stack, 400, chain) if e["target"] == target]


def main_entries_for(stack, target: str) -> list[dict]:
    """The entries about user ``target``: in the main chain."""
    return [e for e in tail(stack, 400) if e["target"] == target]


def test_write_and_delete_each_leave_one_entry(stack, admin, key):
    response = admin.post(f"/write/{key}/v", headers={"X-Request-ID": "req-audit-1"})
    assert response.status_code == 201
    version = response.json()["version"]
    (entry,) = entries_for(stack, key)
    assert entry["action"] == "kv.put" and entry["outcome"] == "created"
    assert entry["actor"] == "admin" and entry["version"] == str(version)
    assert entry["request_id"] == "req-audit-1"
    assert entry["client"] == "127.0.0.1"
    assert float(entry["ts"]) > 1.7e9
    assert set(entry) == {
        "seq", "prev", "ts", "actor", "action", "target", "outcome",
        "request_id", "client", "version",
    }  # fmt: skip
    assert admin.delete(f"/v1/kv/{key}").status_code == 204
    assert [e["action"] for e in entries_for(stack, key)] == ["kv.put", "kv.delete"]
    # a refused compare-and-set is recorded as refused, and changes nothing
    assert admin.put(f"/v1/kv/{key}", data=b"x", headers={"If-Match": '"1"'}).status_code == 412
    assert entries_for(stack, key)[-1]["outcome"] == "precondition_failed"
    assert admin.get(f"/read/{key}").status_code == 404


def test_failed_logins_and_admin_actions_are_audited(stack, admin):
    """Admin actions get an entry each; failed logins are audited in aggregate (one
    entry per address and window with its count, appended when the window closes)."""
    name = f"ghost{secrets.token_hex(4)}"
    address = f"198.18.{secrets.randbelow(250) + 1}.{secrets.randbelow(250) + 1}"
    port = stack.config.ap_ports[0]
    refused = Client(stack, name, "wrong").direct(
        "GET", port, "/read/some-key", headers={"X-Forwarded-For": address}
    )
    assert refused.status_code == 401
    client = stack.redis_client()
    try:
        counted = int(client.hget("{plab}:authfail:window", f"a:{address}") or 0)
        closed = [
            e
            for e in (json.loads(x) for x in client.lrange("{plab}:audit", -5000, -1))
            if e["action"] == "auth.failures" and e["target"] == address
        ]
    finally:
        client.close()
    assert counted + sum(int(e["outcome"].removeprefix("count:")) for e in closed) == 1
    assert all(e["actor"] == "-" for e in closed)
    created = admin.post("/admin/users", json={"name": name, "role": "reader", "prefixes": []})
    assert created.status_code == 201
    assert main_entries_for(stack, name)[-1]["action"] == "user.create"
    assert main_entries_for(stack, name)[-1]["actor"] == "admin"
    assert admin.post(f"/admin/users/{name}/disable").status_code == 200
    assert admin.delete(f"/admin/users/{name}").status_code == 204
    actions = [e["action"] for e in main_entries_for(stack, name)]
    assert actions == ["user.create", "user.disable", "user.delete"]


def test_entries_never_hold_values_passwords_or_tokens(stack, admin, make_user, key):
    marker = f"secret-value-{secrets.token_hex(8)}"
    user = make_user("writer", [key])
    assert user.post(f"/write/{key}/{marker}").status_code == 201
    assert user.put(f"/v1/kv/{key}", data=marker.encode() + b"-body").status_code == 200
    pair = user.post("/auth/token").json()
    Client(stack, user.name, user.password + "x").direct("GET", stack.config.ap_ports[0], "/read/x")
    rotated = admin.post(f"/admin/users/{user.name}/rotate").json()["password"]
    client = stack.redis_client()
    raw = b"\n".join(client.lrange(AUDIT, 0, -1)).decode()
    client.close()
    for secret in (marker, user.password, rotated, pair["access_token"], pair["refresh_token"]):
        assert secret not in raw
    for part in pair["refresh_token"].split(".")[2:]:
        assert part not in raw


def test_paging_and_actor_filter(stack, admin, make_user, key):
    user = make_user("writer", [key])
    for index in range(5):
        assert user.post(f"/write/{key}/v{index}").status_code in (200, 201)
    merged = admin.get("/admin/audit", params={"actor": user.name, "limit": 1000}).json()
    assert [e["action"] for e in merged["entries"]] == ["kv.put"] * 5
    chain = merged["entries"][0]["chain"]  # one key: its shard's chain
    assert {e["chain"] for e in merged["entries"]} == {chain}
    mine = list(reversed(merged["entries"]))  # merged is newest first; one chain, oldest first
    first_seq = mine[0]["seq"]
    one = {"chain": chain, "actor": user.name}
    page1 = admin.get("/admin/audit", params={"since": first_seq, "limit": 2, **one})
    assert page1.status_code == 200
    body = page1.json()
    assert [e["seq"] for e in body["entries"]] == [e["seq"] for e in mine[:2]]
    page2 = admin.get(
        "/admin/audit", params={"since": body["next_since"], "limit": 2, **one}
    ).json()
    assert [e["seq"] for e in page2["entries"]] == [e["seq"] for e in mine[2:4]]
    unfiltered = admin.get(
        "/admin/audit", params={"chain": chain, "since": first_seq, "limit": 3}
    ).json()
    assert [e["seq"] for e in unfiltered["entries"]] == [first_seq, first_seq + 1, first_seq + 2]
    assert unfiltered["next_since"] == first_seq + 3
    bad_cases = (
        {"since": "0"},
        {"since": "x"},
        {"limit": "0"},
        {"limit": "1001"},
        {"limit": "-1"},
        {"chain": "s16"},
        {"cursor": "1.2"},
    )
    for bad in bad_cases:
        response = admin.get("/admin/audit", params=bad)
        assert response.status_code == 400, bad
        assert response.json()["error"]["code"] == "bad_request"


def test_verify_passes_on_the_shared_stack(stack, admin):
    response = admin.post("/admin/audit/verify")
    assert response.status_code == 200, response.text
    assert response.json()["ok"] is True and response.json()["checked"] > 0


# --- tampering, on a stack of its own ---------------------------------------------
@pytest.fixture(scope="module")
def own() -> Iterator:
    stack = start_stack(edge_rate=1000, edge_burst=1000, admin_rate=1000, admin_burst=1000)
    admin = admin_of(stack)
    # The main chain (users, tokens, auth) is the one tampered with below; KV
    # changes go to their shards' chains (test_audit_chains.py covers those).
    for _ in range(12):
        create_user(admin, "writer", ["t-"])
    yield stack
    stop_stack(stack)


def audit_dir(stack) -> Path:
    return stack.state / "audit"


@pytest.fixture
def redis_of(own):
    """The own stack's redis and audit files, restored to their state before the test."""
    client = own.redis_client()
    entries, meta = client.lrange(AUDIT, 0, -1), client.hgetall(META)
    saved = {p: p.read_bytes() for p in audit_dir(own).rglob("*") if p.is_file()}
    yield client
    pipe = client.pipeline()
    pipe.delete(AUDIT, META)
    pipe.rpush(AUDIT, *entries)
    if meta:
        pipe.hset(META, mapping=meta)
    pipe.execute()
    client.close()
    for path in [p for p in audit_dir(own).rglob("*") if p.is_file()]:
        if path not in saved:
            path.unlink()
    for path, body in saved.items():
        path.write_bytes(body)


def verify_cli(stack) -> tuple[int, str]:
    result = cli(stack, "audit", "verify")
    return result.returncode, result.stdout + result.stderr


def checkpoint(stack) -> dict:
    result = cli(stack, "audit", "checkpoint")
    assert result.returncode == 0, result.stdout + result.stderr
    return json.loads(result.stdout)


def test_untampered_log_verifies(own, redis_of):
    mark = checkpoint(own)
    code, output = verify_cli(own)
    assert code == 0, output
    assert "audit: OK" in output and f"checkpoint at seq {mark['seq']}" in output


def entry_at(client, index: int) -> dict:
    return json.loads(client.lindex(AUDIT, index))


def assert_names(stack, seq: int, reason_part: str) -> dict:
    code, output = verify_cli(stack)
    assert code != 0
    assert f"seq {seq}" in output, output
    assert reason_part in output, output
    response = admin_of(stack).post("/admin/audit/verify")
    assert response.status_code == 409
    body = response.json()
    assert body["ok"] is False and body["first_bad_seq"] == seq, body
    return body


def test_truncation_with_a_rewritten_head_is_reported(own, redis_of):
    """A full-rights redis user pops the newest entries and makes the head agree
    with what is left: once a checkpoint covers them, that is truncation."""
    covered = checkpoint(own)
    last = entry_at(redis_of, -1)
    assert covered["seq"] == last["seq"]
    popped = [json.loads(redis_of.rpop(AUDIT)) for _ in range(3)]
    remaining = entry_at(redis_of, -1)
    # whatever head the log keeps in its meta, make it agree with the shortened list
    redis_of.hset(META, mapping={"seq": remaining["seq"], "mac": remaining.get("mac", "")})
    body = assert_names(own, popped[-1]["seq"], "truncated")
    assert body["first_bad_index"] is None


def test_modification_is_detected(own, redis_of):
    checkpoint(own)
    entry = entry_at(redis_of, 5)
    entry["actor"] = "someone-else"
    redis_of.lset(AUDIT, 5, json.dumps(entry))
    assert_names(own, entry["seq"], "does not hash")


def test_modified_outcome_is_detected(own, redis_of):
    entry = entry_at(redis_of, 7)
    entry["outcome"] = "deleted"
    redis_of.lset(AUDIT, 7, json.dumps(entry))
    assert_names(own, entry["seq"], "does not hash")


def test_deletion_is_detected(own, redis_of):
    victim = redis_of.lindex(AUDIT, 4)
    seq = json.loads(victim)["seq"]
    assert redis_of.lrem(AUDIT, 1, victim) == 1
    assert_names(own, seq, f"where {seq} was expected")


def test_deleting_the_newest_entry_is_detected_once_covered(own, redis_of):
    checkpoint(own)
    last = json.loads(redis_of.rpop(AUDIT))
    assert_names(own, last["seq"], "truncated")


def test_deleting_the_oldest_entry_without_a_trim_is_detected(own, redis_of):
    first = json.loads(redis_of.lpop(AUDIT))
    assert_names(own, first["seq"], f"where {first['seq']} was expected")


def test_hiding_a_head_deletion_in_the_meta_is_detected(own, redis_of):
    """Forging what a trim records (first, first_prev) is not enough: a checkpoint
    saw those entries, and neither the archive nor redis holds them now."""
    checkpoint(own)
    first_seq = entry_at(redis_of, 0)["seq"]
    dropped = [redis_of.lpop(AUDIT) for _ in range(3)]
    kept = entry_at(redis_of, 0)
    redis_of.hset(META, mapping={"first": kept["seq"], "first_prev": entry_hash(dropped[-1])})
    assert_names(own, first_seq, "gone")


def test_insertion_is_detected(own, redis_of):
    pivot = redis_of.lindex(AUDIT, 3)
    forged = json.loads(pivot)
    forged.update(action="kv.delete", target="t-1", outcome="deleted")
    redis_of.linsert(AUDIT, "AFTER", pivot, json.dumps(forged))
    assert_names(own, forged["seq"] + 1, "sequence")


def test_insertion_with_renumbering_and_relinking_is_caught_by_the_checkpoint(own, redis_of):
    """No secret makes the chain: a forger can renumber and relink everything after
    an insertion. The signed checkpoint of the old head is what catches it."""
    mark = checkpoint(own)
    raws = redis_of.lrange(AUDIT, 0, -1)
    entries = [json.loads(e) for e in raws]
    first = entries[0]["seq"]
    forged = dict(entries[3], action="user.create", target="mallory")
    rewritten = [*entries[:4], forged, *entries[4:]]
    rebuilt: list[bytes] = []
    prev = entries[0]["prev"]
    for offset, entry in enumerate(rewritten):
        entry["seq"], entry["prev"] = first + offset, prev
        rebuilt.append(json.dumps(entry).encode())
        prev = entry_hash(rebuilt[-1])
    redis_of.delete(AUDIT)
    redis_of.rpush(AUDIT, *rebuilt)
    code, output = verify_cli(own)
    assert code != 0 and "rewritten" in output, output
    body = admin_of(own).post("/admin/audit/verify").json()
    assert body["ok"] is False
    assert body["first_bad_seq"] <= first + 4 <= mark["seq"]


def test_reordering_is_detected(own, redis_of):
    a, b = redis_of.lindex(AUDIT, 2), redis_of.lindex(AUDIT, 3)
    redis_of.lset(AUDIT, 2, b)
    redis_of.lset(AUDIT, 3, a)
    assert_names(own, json.loads(a)["seq"], "sequence")


def test_admin_verify_names_the_first_bad_entry(own, redis_of):
    entry = entry_at(redis_of, 2)
    entry["target"] = "t-other"
    redis_of.lset(AUDIT, 2, json.dumps(entry))
    later = entry_at(redis_of, 6)
    later["actor"] = "x"
    redis_of.lset(AUDIT, 6, json.dumps(later))
    body = admin_of(own).post("/admin/audit/verify").json()
    assert body["first_bad_seq"] == entry["seq"] and body["first_bad_index"] == 2


def test_a_forged_checkpoint_is_reported(own, redis_of):
    """A checkpoint line not signed by the control plane's key (a made-up one, or
    one signed by another key) is reported, not trusted."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from productionlab.audit_checkpoint import Checkpoint

    real = checkpoint(own)
    path = audit_dir(own) / "checkpoints.jsonl"
    line = json.loads(path.read_text().splitlines()[-1])  # format 2: every chain's head
    main = dict(line["chains"]["main"], seq=real["seq"] + 50)
    tampered = dict(line, chains={**line["chains"], "main": main})
    other = Checkpoint(real["seq"], "0" * 40, real["first"], real["origin"], 1.0e9)
    with open(path, "a") as handle:
        handle.write(json.dumps(tampered) + "\n")
        handle.write(json.dumps(other.signed(Ed25519PrivateKey.generate()).as_dict()) + "\n")
    code, output = verify_cli(own)
    assert code != 0 and "signature does not verify" in output, output
    body = admin_of(own).post("/admin/audit/verify").json()
    assert body["ok"] is False
    assert sum("signature does not verify" in p for p in body["problems"]) == 2
    # the genuine checkpoint still counts; the forged ones claim nothing
    assert body["checkpoints"] >= 1 and "truncated" not in " ".join(body["problems"])


# --- retention ----------------------------------------------------------------------
def segments(stack) -> list[Path]:
    return sorted((audit_dir(stack) / "archive").glob("audit-*.jsonl"))


def test_trim_archives_first_and_keeps_verification_working(own, redis_of, tmp_path):
    mark = checkpoint(own)
    before = redis_of.lrange(AUDIT, 0, -1)
    first_before = entry_at(redis_of, 0)["seq"]
    archive = tmp_path / "archive.jsonl"
    result = cli(own, "audit", "trim", "--keep", "5", "--archive", str(archive))
    assert result.returncode == 0, result.stderr
    entries = [json.loads(e) for e in redis_of.lrange(AUDIT, 0, -1)]
    assert len(entries) == 6  # the five kept and the trim's own entry
    assert entries[-1]["action"] == "audit.trim"
    assert entries[-1]["target"] == f"first:{entries[0]['seq']}"
    meta = redis_of.hgetall(META)
    assert int(meta[b"first"]) == entries[0]["seq"]
    # the dropped entries are in the state dir's archive, byte for byte
    (segment,) = [s for s in segments(own) if s.name.startswith(f"audit-{first_before:012d}")]
    archived = Segment(0, 0, segment).raws()
    assert archived == before[: len(before) - 5]
    assert entry_hash(archived[-1]) == meta[b"first_prev"].decode() == entries[0]["prev"]
    assert len(archive.read_text().splitlines()) == len(archived)
    code, output = verify_cli(own)
    assert code == 0, output
    assert f"{len(archived)} archived" in output
    # paging still addresses entries by seq after the trim
    admin = admin_of(own)
    page = admin.get("/admin/audit", params={"since": entries[2]["seq"], "limit": 2}).json()
    assert [e["seq"] for e in page["entries"]] == [entries[2]["seq"], entries[3]["seq"]]
    early = admin.get("/admin/audit", params={"since": 1, "limit": 1}).json()
    assert early["entries"][0]["seq"] == entries[0]["seq"]
    # new entries keep chaining after a trim; a checkpoint covers across the trim
    assert admin.post("/ops/write/t-after/x").status_code == 201
    checkpoint(own)
    assert verify_cli(own)[0] == 0
    # an archived entry changed on disk is caught (the checkpoint covers it)
    lines = segment.read_text().splitlines()
    changed = json.loads(json.loads(lines[1]))
    changed["actor"] = "nobody"
    lines[1] = json.dumps(json.dumps(changed))
    segment.write_text("\n".join(lines) + "\n")
    code, output = verify_cli(own)
    assert code != 0 and f"seq {first_before + 1}" in output, output
    assert mark["seq"] >= first_before + 1
    segment.write_bytes(b"".join(json.dumps(r.decode()).encode() + b"\n" for r in archived))
    assert verify_cli(own)[0] == 0
    # and dropping one more from the head without a trim is caught
    kept = redis_of.lrange(AUDIT, 0, -1)
    redis_of.lpop(AUDIT)
    assert verify_cli(own)[0] != 0
    redis_of.delete(AUDIT)
    redis_of.rpush(AUDIT, *kept)
    assert verify_cli(own)[0] == 0
    # as is losing an archive segment the checkpoints covered
    segment.unlink()
    code, output = verify_cli(own)
    assert code != 0 and "gone" in output, output


def test_trim_by_retention_setting_and_route(own, redis_of):
    result = cli(own, "audit", "trim", env={"PLAB_AUDIT_RETENTION": "8"})
    assert result.returncode == 0, result.stderr
    assert redis_of.llen(AUDIT) == 9
    assert cli(own, "audit", "trim").stdout.startswith("audit: no retention set")
    admin = admin_of(own)
    response = admin.post("/admin/audit/trim", json={"keep": 3})
    assert response.status_code == 200
    assert response.json()["archived"].startswith("audit-")
    assert redis_of.llen(AUDIT) == 4
    assert admin.post("/admin/audit/checkpoint").status_code == 201
    assert admin.post("/admin/audit/verify").json()["ok"] is True
    for bad in ({"keep": 0}, {"keep": "3"}, {}, {"keep": True}):
        assert admin.post("/admin/audit/trim", json=bad).status_code == 400
    assert redis_of.llen(AUDIT) == 4


# --- atomicity ------------------------------------------------------------------------
def test_a_failing_append_leaves_neither_change_nor_entry(own, redis_of):
    """Redis does not roll back a script: the append must fail before the change."""
    admin = admin_of(own)
    place = shard_for("t-atomic")
    shard_chain, _ = place.audit
    redis_of.rename(AUDIT, "{plab}:audit-saved")
    redis_of.set(AUDIT, "not a list")
    redis_of.set(shard_chain, "not a list")  # the key's own chain (empty on this stack)
    try:
        counter = redis_of.get(place.counter)
        failed = admin.post("/ops/write/t-atomic/x")
        assert failed.status_code == 503
        assert failed.headers["Retry-After"]
        assert redis_of.exists(place.item("t-atomic")) == 0
        assert redis_of.get(place.counter) == counter
        users_before = redis_of.smembers("{plab}:users")
        assert (
            admin.post(
                "/admin/users", json={"name": "atomic", "role": "reader", "prefixes": []}
            ).status_code
            == 503
        )
        assert redis_of.smembers("{plab}:users") == users_before
        assert redis_of.exists("{plab}:user:atomic") == 0
    finally:
        redis_of.delete(AUDIT, shard_chain)
        redis_of.rename("{plab}:audit-saved", AUDIT)
    assert verify_cli(own)[0] == 0
    assert admin.get("/ops/read/t-atomic").status_code == 404


def test_the_listing_merges_every_chain_newest_first(stack, admin, make_user, key):
    """Without ``chain`` the listing merges the main chain (user events) and the
    shards' chains (KV changes) by time, newest first; ``next_cursor`` pages
    through all of them with nothing skipped or repeated."""
    user = make_user("writer", [key])
    written = [f"{key}-{i}" for i in range(7)]  # several keys: several shards' chains
    for name in written:
        assert user.post(f"/write/{name}/v").status_code == 201
    user.post(f"/write/{key}-0/again")
    everything = admin.get("/admin/audit", params={"actor": user.name, "limit": 1000}).json()
    assert everything["next_since"] is None
    entries = everything["entries"]
    assert [e["target"] for e in reversed(entries)] == [*written, f"{key}-0"]
    assert len({e["chain"] for e in entries}) > 1
    times = [float(e["ts"]) for e in entries]
    assert times == sorted(times, reverse=True)
    paged, cursor = [], None
    for _ in range(20):
        params = {"actor": user.name, "limit": 3, **({"cursor": cursor} if cursor else {})}
        page = admin.get("/admin/audit", params=params).json()
        paged += page["entries"]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert [(e["chain"], e["seq"]) for e in paged] == [(e["chain"], e["seq"]) for e in entries]
    created = admin.get("/admin/audit", params={"actor": admin.name, "limit": 1000}).json()
    assert any(
        e["chain"] == "main" and e["action"] == "user.create" and e["target"] == user.name
        for e in created["entries"]
    )
