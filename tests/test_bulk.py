"""POST /v1/bulk and GET /v1/kv?values=true (issue 13): many independent items
in one request, one result each, every key checked first, the per-user limit
counting items, pages bounded by count and by bytes. On the in-process layer
(tests/inprocess.py)."""

from __future__ import annotations

import base64
import secrets

import pytest

from tests.conftest import new_writer
from tests.layout_kit import one_shard

pytestmark = pytest.mark.inprocess


def bulk(client, items, path="/v1/bulk"):
    return client.post(path, json={"items": items})


def test_a_thousand_puts_then_reads_one_result_each(admin, key):
    puts = [{"op": "put", "key": f"{key}-{i:04d}", "value": f"v{i}"} for i in range(1000)]
    response = bulk(admin, puts)
    assert response.status_code == 200, response.text
    results = response.json()["results"]
    assert len(results) == 1000
    assert {r["outcome"] for r in results} == {"created"}
    versions = [r["version"] for r in results]
    assert len(set(versions)) == 1000  # never repeated; across keys, in no promised order
    again = bulk(admin, puts[:50]).json()["results"]  # each key's version increases
    assert [r["outcome"] for r in again] == ["updated"] * 50
    assert all(r["version"] > v for r, v in zip(again, versions[:50], strict=True))
    gets = [{"op": "get", "key": f"{key}-{i:04d}"} for i in range(0, 1000, 10)]
    gets.append({"op": "get", "key": f"{key}-missing"})
    read = bulk(admin, gets).json()["results"]
    assert [r["value"] for r in read[:-1]] == [f"v{i}" for i in range(0, 1000, 10)]
    assert read[-1] == {"op": "get", "key": f"{key}-missing", "outcome": "absent"}


def test_items_are_independent_and_apply_in_order(admin, key):
    raw = b"\x00\xffbytes"
    response = bulk(
        admin,
        [
            {"op": "delete", "key": key},
            {
                "op": "put",
                "key": key,
                "value": base64.b64encode(raw).decode(),
                "encoding": "base64",
            },
            {"op": "get", "key": key},
            {"op": "put", "key": f"{key}-t", "value": "x", "ttl": 300},
        ],
    )
    assert response.status_code == 200, response.text
    results = response.json()["results"]
    assert [r["outcome"] for r in results] == ["absent", "created", "found", "created"]
    assert base64.b64decode(results[2]["value"]) == raw
    assert admin.get(f"/v1/kv/{key}").content == raw


def test_every_key_is_checked_first_and_the_403_names_no_key(admin, make_user, key):
    prefix = f"b{secrets.token_hex(4)}-"
    writer = make_user("writer", [prefix])
    hidden = f"{key}-hidden"
    response = bulk(
        writer,
        [{"op": "put", "key": f"{prefix}ok", "value": "x"}, {"op": "delete", "key": hidden}],
    )
    assert response.status_code == 403
    assert hidden not in response.text
    assert admin.get(f"/v1/kv/{prefix}ok").status_code == 404
    reader = make_user("reader", [prefix])
    assert bulk(reader, [{"op": "put", "key": f"{prefix}r", "value": "x"}]).status_code == 403
    assert bulk(reader, [{"op": "get", "key": f"{prefix}r"}]).status_code == 200


def test_malformed_bulk_requests_are_refused(admin, key):
    cases = [
        {"items": [{"op": "get", "key": key}] * 1001},
        {"items": []},
        {"items": [{"op": "version_equals", "key": key, "version": 1}]},
        {"items": [{"op": "put", "key": key, "value": 3}]},
        {"ops": [{"op": "get", "key": key}]},
    ]
    for body in cases:
        response = admin.post("/v1/bulk", json=body)
        assert response.status_code == 400, (body, response.text)
    oversized = {"items": [{"op": "put", "key": key, "value": "x" * (1100 * 1024)}]}
    assert admin.post("/v1/bulk", json=oversized).status_code == 413
    assert admin.get(f"/v1/kv/{key}").status_code == 404


@pytest.mark.parametrize("path,field", [("/ops/v1/bulk", "items"), ("/ops/v1/txn", "ops")])
def test_the_control_plane_serves_bulk_and_transactions(admin, key, path, field):
    operation = {"op": "put", "key": key, "value": "ops"}
    response = admin.post(path, json={field: [operation]})
    assert response.status_code == 200, response.text
    assert admin.get(f"/v1/kv/{key}").content == b"ops"


def test_the_user_limit_counts_items_not_requests(planes_with):
    admin = planes_with(PLAB_USER_RATE="50/minute")
    writer, prefix = new_writer(admin, "l")
    items = [{"op": "put", "key": f"{prefix}{i}", "value": "x"} for i in range(40)]
    assert bulk(writer, items).status_code == 200
    refused = bulk(writer, items[:20])
    assert refused.status_code == 429
    assert int(refused.headers["Retry-After"]) >= 1


def test_a_bulk_put_over_quota_is_refused_alone(planes_with):
    admin = planes_with(PLAB_USER_MAX_KEYS="2")
    writer, prefix = new_writer(admin, "q")
    # One shard: a cluster applies a bulk request shard by shard, so across shards
    # which put is refused follows shard order (README); within one, request order.
    names = one_shard(prefix, 3)
    items = [{"op": "put", "key": k, "value": "x"} for k in names]
    results = bulk(writer, items).json()["results"]
    assert [r["outcome"] for r in results] == ["created", "created", "quota_exceeded"]
    assert admin.get(f"/v1/kv/{names[2]}").status_code == 404
    assert admin.get(f"/admin/users/{writer.name}").json()["usage"]["keys"] == 2


def test_listing_with_values_is_bounded_by_count_and_bytes(planes_with):
    admin = planes_with(PLAB_LIST_MAX_BYTES="1000")
    prefix = f"p{secrets.token_hex(4)}-"
    items = [{"op": "put", "key": f"{prefix}{i}", "value": str(i) * 400} for i in range(5)]
    items.append({"op": "put", "key": f"{prefix}b", "value": "/w==", "encoding": "base64"})
    assert bulk(admin, items).status_code == 200
    seen, cursor, pages = [], "", 0
    while True:
        response = admin.get(f"/v1/kv?prefix={prefix}&values=true&limit=4&cursor={cursor}")
        assert response.status_code == 200, response.text
        page = response.json()
        pages += 1
        assert 1 <= len(page["items"]) <= 4
        assert sum(len(i["value"]) for i in page["items"] if "encoding" not in i) <= 1000
        seen += page["items"]
        if page["next_cursor"] is None:
            break
        cursor = page["next_cursor"]
    assert [i["key"] for i in seen] == [f"{prefix}{i}" for i in range(5)] + [f"{prefix}b"]
    assert seen[0]["value"] == "0" * 400 and isinstance(seen[0]["version"], int)
    assert seen[-1]["encoding"] == "base64" and base64.b64decode(seen[-1]["value"]) == b"\xff"
    assert pages >= 3  # two 400-byte values per 1000-byte page
    assert admin.get(f"/v1/kv?prefix={prefix}&values=yes").status_code == 400
    plain = admin.get(f"/v1/kv?prefix={prefix}").json()
    assert "items" not in plain and len(plain["keys"]) == 6
