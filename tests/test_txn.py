"""POST /v1/txn: all or nothing, conditions, duplicate keys applied in order,
every key checked against role and grants first, one audit entry per change
(issue 13). On the in-process layer (tests/inprocess.py)."""

from __future__ import annotations

import base64
import itertools
import secrets

import pytest

from productionlab.store.layout import shard_of
from tests.conftest import new_writer
from tests.layout_kit import one_shard

pytestmark = pytest.mark.inprocess


def txn(client, ops, path="/v1/txn"):
    return client.post(path, json={"ops": ops})


def test_puts_apply_together_and_answer_versions(admin, key):
    a, b = one_shard(f"{key}-", 2)
    response = txn(
        admin,
        [
            {"op": "absent", "key": a},
            {"op": "put", "key": a, "value": "one"},
            {"op": "put", "key": b, "value": "two", "ttl": 600},
            {"op": "get", "key": a},
        ],
    )
    assert response.status_code == 200, response.text
    results = response.json()["results"]
    assert [r["outcome"] for r in results] == ["held", "created", "created", "found"]
    # Versions of different keys are not consecutive (each shard counts on its own);
    # what the contract promises: both puts are visible together, each at its version.
    assert results[1]["version"] != results[2]["version"]
    assert admin.get(f"/v1/kv/{b}").headers["ETag"] == f'"{results[2]["version"]}"'
    assert results[3] == {
        "op": "get",
        "key": a,
        "outcome": "found",
        "value": "one",
        "version": results[1]["version"],
    }
    assert admin.get(f"/v1/kv/{b}").content == b"two"
    assert admin.get(f"/v1/kv/{a}").headers["ETag"] == f'"{results[1]["version"]}"'


def test_failed_condition_applies_nothing_and_names_its_index(admin, key):
    a, b = one_shard(f"{key}-", 2)
    version = admin.put(f"/v1/kv/{a}", data=b"old").json()["version"]
    response = txn(
        admin,
        [
            {"op": "put", "key": b, "value": "new"},
            {"op": "delete", "key": a},
            {"op": "version_equals", "key": a, "version": version},
        ],
    )
    # The delete before it made the condition false: conditions see earlier operations.
    assert response.status_code == 409, response.text
    body = response.json()
    assert body["failed_index"] == 2
    assert body["current_version"] is None
    assert body["error"]["code"] == "condition_failed"
    assert admin.get(f"/v1/kv/{a}").content == b"old"
    assert admin.get(f"/v1/kv/{b}").status_code == 404


def test_version_equals_and_exists_hold(admin, key):
    version = admin.put(f"/v1/kv/{key}", data=b"v1").json()["version"]
    response = txn(
        admin,
        [
            {"op": "exists", "key": key},
            {"op": "version_equals", "key": key, "version": version},
            {"op": "put", "key": key, "value": "v2"},
        ],
    )
    assert response.status_code == 200, response.text
    assert response.json()["results"][2]["outcome"] == "updated"
    stale = txn(
        admin,
        [
            {"op": "version_equals", "key": key, "version": version},
            {"op": "put", "key": key, "value": "v3"},
        ],
    )
    assert stale.status_code == 409
    assert stale.json()["failed_index"] == 0
    assert stale.json()["current_version"] == response.json()["results"][2]["version"]
    assert admin.get(f"/v1/kv/{key}").content == b"v2"


def test_duplicate_keys_apply_in_order(admin, key):
    response = txn(
        admin,
        [
            {"op": "put", "key": key, "value": "first"},
            {"op": "exists", "key": key},
            {"op": "put", "key": key, "value": "second"},
            {"op": "get", "key": key},
            {"op": "delete", "key": key},
            {"op": "absent", "key": key},
            {"op": "get", "key": key},
        ],
    )
    assert response.status_code == 200, response.text
    results = response.json()["results"]
    assert [r["outcome"] for r in results] == [
        "created",
        "held",
        "updated",
        "found",
        "deleted",
        "held",
        "absent",
    ]
    assert results[3]["value"] == "second"
    assert results[4]["version"] == results[2]["version"]
    assert admin.get(f"/v1/kv/{key}").status_code == 404


def test_base64_values_round_trip(admin, key):
    raw = b"\xff\x00\xfe binary"
    response = txn(
        admin,
        [
            {
                "op": "put",
                "key": key,
                "value": base64.b64encode(raw).decode(),
                "encoding": "base64",
            },
            {"op": "get", "key": key},
        ],
    )
    assert response.status_code == 200, response.text
    got = response.json()["results"][1]
    assert got["encoding"] == "base64"
    assert base64.b64decode(got["value"]) == raw
    assert admin.get(f"/v1/kv/{key}").content == raw


def test_every_key_is_checked_before_anything_runs(admin, make_user, key):
    user, prefix = new_writer(admin, "g")
    secret_key = f"{key}-hidden"
    response = txn(
        user,
        [
            {"op": "put", "key": f"{prefix}mine", "value": "x"},
            {"op": "get", "key": secret_key},
        ],
    )
    assert response.status_code == 403
    assert secret_key not in response.text
    assert "operation 1" in response.json()["error"]["message"]
    assert admin.get(f"/v1/kv/{prefix}mine").status_code == 404


def test_a_reader_cannot_write_in_a_transaction(admin, make_user):
    prefix = f"r{secrets.token_hex(4)}-"
    reader = make_user("reader", [prefix])
    response = txn(
        reader,
        [{"op": "get", "key": f"{prefix}a"}, {"op": "put", "key": f"{prefix}a", "value": "x"}],
    )
    assert response.status_code == 403
    assert admin.get(f"/v1/kv/{prefix}a").status_code == 404
    assert txn(reader, [{"op": "get", "key": f"{prefix}a"}]).status_code == 200


def test_one_audit_entry_per_change(admin, make_user, key):
    prefix = f"a{secrets.token_hex(4)}-"
    writer = make_user("writer", [prefix])
    x, y = one_shard(prefix, 2)
    response = txn(
        writer,
        [
            {"op": "put", "key": x, "value": "1"},
            {"op": "put", "key": y, "value": "2"},
            {"op": "get", "key": x},
            {"op": "delete", "key": x},
        ],
    )
    assert response.status_code == 200, response.text
    entries = admin.get(f"/admin/audit?actor={writer.name}&limit=100").json()["entries"]
    changes = [(e["action"], e["target"], e["outcome"]) for e in entries]
    assert sorted(changes) == sorted(
        [
            ("kv.put", x, "created"),
            ("kv.put", y, "created"),
            ("kv.delete", x, "deleted"),
        ]
    )
    assert admin.post("/admin/audit/verify").json()["ok"] is True


def test_malformed_transactions_are_refused(admin, key):
    too_many = [{"op": "get", "key": key}] * 65
    cases = [
        {"ops": too_many},
        {"ops": []},
        {"ops": [{"op": "put", "key": key}]},
        {"ops": [{"op": "put", "key": key, "value": "%%%", "encoding": "base64"}]},
        {"ops": [{"op": "put", "key": key, "value": "x", "encoding": "latin-1"}]},
        {"ops": [{"op": "version_equals", "key": key, "version": "3"}]},
        {"ops": [{"op": "put", "key": f"{key}/x", "value": "x"}]},
        {"ops": [{"op": "put", "key": key, "value": "x", "ttl": 0}]},
        {"ops": [{"op": "incr", "key": key}]},
        {"ops": [{"op": "get", "key": key, "extra": 1}]},
        {"operations": []},
        [],
    ]
    for body in cases:
        response = admin.post("/v1/txn", json=body)
        assert response.status_code == 400, (body, response.text)
        assert response.json()["error"]["code"] in ("bad_request", "invalid_key", "invalid_value")
    assert admin.post("/v1/txn", data=b"{not json").status_code == 400
    assert admin.get(f"/v1/kv/{key}").status_code == 404


def test_each_operation_counts_against_the_user_limit(planes_with):
    admin = planes_with(PLAB_USER_RATE="10/minute")
    writer, prefix = new_writer(admin, "l")
    ops = [{"op": "put", "key": k, "value": "x"} for k in one_shard(prefix, 8)]
    assert txn(writer, ops).status_code == 200
    late = one_shard(f"{prefix}late", 3)
    refused = txn(writer, [{"op": "put", "key": k, "value": "x"} for k in late])
    assert refused.status_code == 429
    assert int(refused.headers["Retry-After"]) >= 1
    assert admin.get(f"/v1/kv/{late[0]}").status_code == 404


def test_puts_respect_the_writers_quota_all_or_nothing(planes_with):
    admin = planes_with(PLAB_USER_MAX_KEYS="3", PLAB_USER_MAX_BYTES="4096")
    writer, prefix = new_writer(admin, "q")

    def used() -> dict:
        response = admin.get(f"/admin/users/{writer.name}")
        assert response.status_code == 200, response.text
        return response.json()["usage"]

    names = one_shard(prefix, 4)  # one shard: the same transactions run on a cluster
    two = [{"op": "put", "key": k, "value": "x"} for k in names[:2]]
    assert txn(writer, two).status_code == 200
    more = [{"op": "put", "key": k, "value": "x"} for k in names[2:]]
    refused = txn(writer, more)
    assert refused.status_code == 403, refused.text
    assert refused.json()["error"]["code"] == "quota_exceeded"
    assert "operation 1" in refused.json()["error"]["message"]
    assert admin.get(f"/v1/kv/{names[2]}").status_code == 404
    assert used()["keys"] == 2
    # A delete earlier in the same transaction frees the room a later put needs.
    freed = txn(writer, [{"op": "delete", "key": names[0]}, *more])
    assert freed.status_code == 200, freed.text
    assert used()["keys"] == 3
    big = [{"op": "put", "key": names[1], "value": "y" * 5000}]
    assert txn(writer, big).json()["error"]["code"] == "quota_exceeded"
    assert used()["keys"] == 3


def test_keys_of_several_shards_in_one_transaction(admin, planes, key):
    """On a Redis Cluster a transaction keeps to one shard: keys of two shards are
    a 400 cross_shard that changes nothing; on a single redis they work together."""
    first = f"{key}-0"
    second = next(
        f"{key}-{n}" for n in itertools.count(1) if shard_of(f"{key}-{n}") != shard_of(first)
    )
    ops = [{"op": "put", "key": first, "value": "1"}, {"op": "put", "key": second, "value": "2"}]
    response = txn(admin, ops)
    if planes.cluster:
        assert response.status_code == 400, response.text
        assert response.json()["error"]["code"] == "cross_shard"
        assert "shard" in response.json()["error"]["message"]
        assert admin.get(f"/v1/kv/{first}").status_code == 404
        assert admin.get(f"/v1/kv/{second}").status_code == 404
        same = next(
            f"{key}-{n}" for n in itertools.count(1) if shard_of(f"{key}-{n}") == shard_of(first)
        )
        ops[1]["key"] = same
        assert txn(admin, ops).status_code == 200
    else:
        assert response.status_code == 200, response.text
        assert admin.get(f"/v1/kv/{second}").content == b"2"
