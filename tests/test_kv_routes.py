"""The data API the way clients use it, on the in-process layer (both planes' Flask
apps over one real redis-server, tests/inprocess.py); the edge's part is in
test_edge.py and test_hostile.py."""

from __future__ import annotations

import base64
import threading

import pytest

from productionlab.store.layout import shard_for

pytestmark = pytest.mark.inprocess


def test_write_then_read(admin, key):
    first = admin.post(f"/write/{key}/hello")
    assert first.status_code == 201
    assert first.json() == {"key": key, "version": first.json()["version"]}
    assert first.headers["ETag"] == f'"{first.json()["version"]}"'
    again = admin.post(f"/write/{key}/world")
    assert again.status_code == 200
    assert again.json()["version"] > first.json()["version"]
    read = admin.get(f"/read/{key}")
    assert read.status_code == 200
    assert read.json() == {"key": key, "value": "world", "version": again.json()["version"]}


def test_read_absent_is_404_json(admin, key):
    response = admin.get(f"/read/{key}")
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "not_found"
    assert response.json()["request_id"]


def test_path_value_is_url_decoded_and_may_hold_slashes(admin, key):
    assert admin.post(f"/write/{key}/a%2Fb%20c/d%C3%A9").status_code == 201
    assert admin.get(f"/read/{key}").json()["value"] == "a/b c/dé"


def test_path_value_bound_is_4096_bytes(admin, key):
    assert admin.post(f"/write/{key}/" + "v" * 4096).status_code == 201
    too_long = admin.post(f"/write/{key}/" + "v" * 4097)
    assert too_long.status_code == 413
    assert too_long.json()["error"]["code"] == "payload_too_large"
    assert admin.get(f"/read/{key}").json()["value"] == "v" * 4096


@pytest.mark.parametrize("value", ["a%00b", "a%0D%0Ab", "%FF%FE"])
def test_bad_path_values_are_400_and_change_nothing(admin, key, value):
    admin.post(f"/write/{key}/before")
    response = admin.post(f"/write/{key}/{value}")
    assert response.status_code == 400
    assert response.json()["error"]["code"] in ("invalid_value", "bad_request")
    assert admin.get(f"/read/{key}").json()["value"] == "before"


def test_write_needs_post(admin, key):
    response = admin.get(f"/write/{key}/x")
    assert response.status_code == 405
    assert response.json()["error"]["code"] == "method_not_allowed"


def test_put_get_head_delete(admin, key):
    put = admin.put(f"/v1/kv/{key}", data=b"\x00\x01binary\xff")
    assert put.status_code == 201
    version = put.json()["version"]
    got = admin.get(f"/v1/kv/{key}")
    assert got.status_code == 200
    assert got.content == b"\x00\x01binary\xff"
    assert got.headers["ETag"] == f'"{version}"'
    head = admin.request("HEAD", f"/v1/kv/{key}")
    assert head.status_code == 200
    assert head.content == b""
    assert head.headers["ETag"] == f'"{version}"'
    read = admin.get(f"/read/{key}").json()
    assert read["encoding"] == "base64"
    assert base64.b64decode(read["value"]) == b"\x00\x01binary\xff"
    assert admin.delete(f"/v1/kv/{key}").status_code == 204
    assert admin.get(f"/v1/kv/{key}").status_code == 404
    assert admin.delete(f"/v1/kv/{key}").status_code == 404


def test_if_none_match_star_creates_only_once(admin, key):
    assert admin.put(f"/v1/kv/{key}", data=b"1", headers={"If-None-Match": "*"}).status_code == 201
    second = admin.put(f"/v1/kv/{key}", data=b"2", headers={"If-None-Match": "*"})
    assert second.status_code == 412
    assert second.json()["error"]["code"] == "precondition_failed"
    assert admin.get(f"/v1/kv/{key}").content == b"1"


def test_if_match_compare_and_set(admin, key):
    version = admin.put(f"/v1/kv/{key}", data=b"1").json()["version"]
    stale = admin.put(f"/v1/kv/{key}", data=b"x", headers={"If-Match": f'"{version + 1000}"'})
    assert stale.status_code == 412
    ok = admin.put(f"/v1/kv/{key}", data=b"2", headers={"If-Match": f'"{version}"'})
    assert ok.status_code == 200
    assert admin.get(f"/v1/kv/{key}").content == b"2"
    absent = admin.put(f"/v1/kv/{key}-absent", data=b"x", headers={"If-Match": "*"})
    assert absent.status_code == 412


def test_if_match_on_delete(admin, key):
    version = admin.put(f"/v1/kv/{key}", data=b"1").json()["version"]
    wrong = admin.delete(f"/v1/kv/{key}", headers={"If-Match": f'"{version + 1}"'})
    assert wrong.status_code == 412
    assert admin.delete(f"/v1/kv/{key}", headers={"If-Match": f'"{version}"'}).status_code == 204


def test_if_none_match_on_get_gives_304(admin, key):
    version = admin.put(f"/v1/kv/{key}", data=b"1").json()["version"]
    response = admin.get(f"/v1/kv/{key}", headers={"If-None-Match": f'"{version}"'})
    assert response.status_code == 304


def race(count: int, attempt) -> list[int]:
    """``attempt(index)`` from ``count`` threads released at once; the statuses."""
    barrier = threading.Barrier(count)
    statuses: list[int] = []

    def run(index: int) -> None:
        barrier.wait()
        statuses.append(attempt(index).status_code)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return statuses


def test_compare_and_set_race_has_one_winner(admin, key):
    version = admin.put(f"/v1/kv/{key}", data=b"start").json()["version"]
    statuses = race(
        8,
        lambda index: admin.put(
            f"/v1/kv/{key}", data=f"writer-{index}".encode(), headers={"If-Match": f'"{version}"'}
        ),
    )
    assert sorted(statuses) == [200] + [412] * 7
    assert admin.get(f"/v1/kv/{key}").content.startswith(b"writer-")


def test_if_none_match_race_creates_once(admin, key):
    statuses = race(
        6,
        lambda index: admin.put(
            f"/v1/kv/{key}", data=str(index).encode(), headers={"If-None-Match": "*"}
        ),
    )
    assert sorted(statuses) == [201] + [412] * 5


def item_of(key: str) -> str:
    """The redis key of ``key``'s item (in its shard)."""
    return shard_for(key).item(key)


def test_ttl_expires_keys(admin, key, planes):
    assert admin.put(f"/v1/kv/{key}?ttl=1", data=b"soon gone").status_code == 201
    client = planes.redis_client()
    assert 0 < client.pttl(item_of(key)) <= 1000
    client.close()
    # Let redis expire it instead of sleeping a fixed time in the test.
    import time

    deadline = time.monotonic() + 5
    while admin.get(f"/v1/kv/{key}").status_code != 404:
        assert time.monotonic() < deadline, "key with ttl=1 still readable after 5 s"
        time.sleep(0.2)


def test_overwrite_without_ttl_clears_it(admin, key, planes):
    admin.put(f"/v1/kv/{key}?ttl=100", data=b"1")
    admin.put(f"/v1/kv/{key}", data=b"2")
    client = planes.redis_client()
    assert client.pttl(item_of(key)) == -1
    client.close()


@pytest.mark.parametrize("ttl", ["0", "-1", "abc", "1.5", "999999999999"])
def test_bad_ttl_is_400(admin, key, ttl):
    response = admin.put(f"/v1/kv/{key}?ttl={ttl}", data=b"x")
    assert response.status_code == 400
    assert admin.get(f"/v1/kv/{key}").status_code == 404


def test_write_accepts_ttl(admin, key, planes):
    assert admin.post(f"/write/{key}/v?ttl=50").status_code == 201
    client = planes.redis_client()
    assert 0 < client.pttl(item_of(key)) <= 50_000
    client.close()


def test_body_at_limit_accepted_and_over_limit_413(admin, key, planes):
    limit = planes.max_body_bytes()
    assert admin.put(f"/v1/kv/{key}", data=b"x" * limit).status_code == 201
    over = admin.put(f"/v1/kv/{key}", data=b"y" * (limit + 1))
    assert over.status_code == 413
    assert over.json()["error"]["code"] == "payload_too_large"
    assert admin.get(f"/v1/kv/{key}").content == b"x" * limit


def test_listing_pages_with_cursor(admin):
    prefix = "list-" + key_suffix()
    written = sorted(f"{prefix}-{i:03d}" for i in range(25))
    for name in written:
        assert admin.post(f"/write/{name}/v").status_code == 201
    seen: list[str] = []
    cursor = None
    pages = 0
    while True:
        params = {"prefix": prefix, "limit": "10"}
        if cursor:
            params["cursor"] = cursor
        page = admin.get("/v1/kv", params=params)
        assert page.status_code == 200
        body = page.json()
        assert len(body["keys"]) <= 10
        seen += body["keys"]
        pages += 1
        cursor = body["next_cursor"]
        if cursor is None:
            break
    assert seen == written
    assert pages >= 3


def test_listing_skips_deleted_and_expired(admin, planes):
    prefix = "gone-" + key_suffix()
    admin.post(f"/write/{prefix}-a/v")
    admin.post(f"/write/{prefix}-b/v")
    admin.delete(f"/v1/kv/{prefix}-a")
    client = planes.redis_client()
    client.delete(item_of(f"{prefix}-b"))  # as if it expired
    client.close()
    assert admin.get("/v1/kv", params={"prefix": prefix}).json() == {
        "keys": [],
        "next_cursor": None,
    }


@pytest.mark.parametrize(
    "params",
    [
        {"limit": "0"},
        {"limit": "1001"},
        {"limit": "x"},
        {"prefix": "a/b"},
        {"prefix": "a.b"},
        {"cursor": "!!!"},
        {"cursor": base64.urlsafe_b64encode(b"a b").decode()},
    ],
)
def test_listing_rejects_bad_parameters(admin, params):
    response = admin.get("/v1/kv", params=params)
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "bad_request"


def key_suffix() -> str:
    import secrets

    return secrets.token_hex(6)


@pytest.mark.parametrize("number", ["%C2%B2", "%D9%A3", "%EF%BC%91"])
def test_non_ascii_digits_are_400_not_500(admin, key, number):
    """str.isdigit() accepts '²', '٣' and fullwidth '1', which int() refuses."""
    assert admin.put(f"/v1/kv/{key}?ttl={number}", data=b"x").status_code == 400
    assert admin.get(f"/v1/kv?limit={number}").status_code == 400
    assert admin.get(f"/admin/audit?limit={number}").status_code == 400
    assert admin.get(f"/v1/kv/{key}").status_code == 404


def test_last_full_page_has_no_cursor(admin):
    prefix = "exact-" + key_suffix()
    for index in range(4):
        admin.post(f"/write/{prefix}-{index}/v")
    first = admin.get("/v1/kv", params={"prefix": prefix, "limit": "2"}).json()
    assert first["keys"] == [f"{prefix}-0", f"{prefix}-1"] and first["next_cursor"]
    second = admin.get(
        "/v1/kv", params={"prefix": prefix, "limit": "2", "cursor": first["next_cursor"]}
    ).json()
    assert second == {"keys": [f"{prefix}-2", f"{prefix}-3"], "next_cursor": None}
