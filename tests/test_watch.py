"""Watches (issue 13, part 3): GET /v1/watch/<key> and GET /v1/watch?prefix=
return when what they watch changes past their index (puts, deletes, expiries),
never for unrelated changes, within the caller's grants, bounded per process.
On the in-process layer (tests/inprocess.py) over the worker's real redis;
watches run in threads while the test writes.

No assertion here depends on timing: a watch that was not woken would return
after its (long) wait with ``changed`` false, which the tests reject."""

from __future__ import annotations

import itertools
import threading
from concurrent.futures import Future, ThreadPoolExecutor

import pytest

from productionlab import watch
from productionlab.luascripts import LUA_DIR
from productionlab.services import services_of
from productionlab.store.layout import shard_for, shard_of
from productionlab.watch import TOMBS_KEPT
from tests.conftest import create_user, new_writer
from tests.inprocess import start_planes
from tests.layout_kit import audit_entries, item_of

pytestmark = pytest.mark.inprocess

LONG = 60  # a wait no woken watch comes near


def in_thread(call, *args, **kwargs) -> Future:
    pool = ThreadPoolExecutor(max_workers=1)
    future = pool.submit(call, *args, **kwargs)
    pool.shutdown(wait=False)
    return future


def parked(planes, count: int = 1, plane: str = "ap", timeout: float = 20) -> None:
    """Wait until ``count`` watches are registered with the plane's change feed
    and the feed is subscribed (so a write now is seen)."""
    feed = services_of(getattr(planes, plane)).watches.feed
    event = threading.Event()
    for _ in range(int(timeout * 20)):
        if feed.waiting >= count and feed.subscribed.is_set():
            return
        event.wait(0.05)
    raise AssertionError(f"{feed.waiting} watches parked, wanted {count}")


def test_a_key_watch_answers_at_once_when_the_key_is_past_the_index(admin, key):
    version = admin.post(f"/write/{key}/one").json()["version"]
    response = admin.get(f"/v1/watch/{key}?index={version - 1}&wait={LONG}")
    assert response.status_code == 200, response.text
    assert response.json() == {
        "key": key,
        "index": version,
        "changed": True,
        "exists": True,
        "version": version,
        "value": "one",
    }
    assert response.headers["X-Plab-Index"] == str(version)


def test_a_put_wakes_the_watch_with_the_new_value(planes, admin, key):
    version = admin.post(f"/write/{key}/before").json()["version"]
    waiting = in_thread(admin.get, f"/v1/watch/{key}?index={version}&wait={LONG}")
    parked(planes)
    newer = admin.post(f"/write/{key}/after").json()["version"]
    answer = waiting.result(timeout=LONG + 30)
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["changed"] is True
    assert (body["value"], body["version"], body["index"]) == ("after", newer, newer)


def test_a_delete_wakes_the_watch_and_its_index_moves_forward(planes, admin, key):
    version = admin.post(f"/write/{key}/doomed").json()["version"]
    waiting = in_thread(admin.get, f"/v1/watch/{key}?index={version}&wait={LONG}")
    parked(planes)
    assert admin.delete(f"/v1/kv/{key}").status_code == 204
    body = waiting.result(timeout=LONG + 30).json()
    assert body["changed"] is True and body["exists"] is False
    assert body["index"] > version  # the tombstone's own version
    # Watching again from that index waits (nothing happened since) ...
    quiet = admin.get(f"/v1/watch/{key}?index={body['index']}&wait=1").json()
    assert quiet == {"key": key, "index": body["index"], "changed": False, "exists": False}
    # ... and a new write is past it.
    again = admin.post(f"/write/{key}/back").json()["version"]
    assert again > body["index"]


def test_an_expiry_wakes_the_watch_with_a_tombstone(planes, admin, key):
    version = admin.post(f"/write/{key}/brief?ttl=1").json()["version"]
    waiting = in_thread(admin.get, f"/v1/watch/{key}?index={version}&wait={LONG}")
    body = waiting.result(timeout=LONG + 30).json()
    assert body["changed"] is True and body["exists"] is False
    assert body["index"] > version


def test_an_expired_key_read_by_a_watch_gets_its_tombstone_then(planes, admin, key):
    """Without the expired-key event (a process that was not listening), the
    next watch that reads the key gives it its tombstone."""
    client = planes.redis_client()
    try:
        version = admin.post(f"/write/{key}/brief").json()["version"]
        # What a key that expired while no process listened leaves: its TTL's
        # record, no item, no tombstone.
        place = shard_for(key)
        client.hset(place.ttl_versions, key, version)
        client.delete(place.item(key))
        body = admin.get(f"/v1/watch/{key}?index={version}&wait=0").json()
        assert body["exists"] is False and body["changed"] is True
        assert body["index"] > version
        assert client.zscore(place.tombs, key) == body["index"]
        assert client.hget(place.ttl_versions, key) is None
    finally:
        client.close()


def test_an_expired_key_pruned_by_a_listing_gets_its_tombstone_then(planes, admin, key):
    client = planes.redis_client()
    try:
        version = admin.post(f"/write/{key}-x/brief").json()["version"]
        place = shard_for(f"{key}-x")
        client.hset(place.ttl_versions, f"{key}-x", version)
        client.delete(place.item(f"{key}-x"))  # expired: the listing index still names it
        assert admin.get(f"/v1/kv?prefix={key}-").json()["keys"] == []
        assert client.zscore(place.tombs, f"{key}-x") > version
        body = admin.get(f"/v1/watch?prefix={key}-&index={version}&wait=0").json()
        assert body["changed"] is True and body["keys"] == []
    finally:
        client.close()


def test_a_change_to_another_key_wakes_nobody(planes, key):
    feed = services_of(planes.ap).watches.feed
    admin = planes.admin()
    watched = watch.Waiter(index=0, key=f"{key}-watched")
    other = watch.Waiter(index=0, key=f"{key}-other")
    probe = watch.Waiter(index=0, key=f"{key}-probe")
    with feed.registered(watched), feed.registered(other), feed.registered(probe):
        parked(planes, 3)
        # A feed that has just subscribed wakes every watch once per subscribe
        # confirmation (changes may have been missed); once the probe's change
        # is handled, those are behind us (one thread, in order).
        admin.post(f"/write/{key}-probe/x")
        assert probe.event.wait(20), "the probe's change message never arrived"
        watched.event.clear()
        other.event.clear()
        admin.post(f"/write/{key}-other/x")
        assert other.event.wait(20), "the change message never arrived"
        # Messages are handled in order by one thread: had the write to -other
        # woken -watched, it would have been set before -other.
        assert not watched.event.is_set()


def test_a_change_at_or_below_the_index_wakes_nobody(planes, key):
    feed = services_of(planes.ap).watches.feed
    waiter = watch.Waiter(index=10**12, key=key)
    with feed.registered(waiter):
        assert feed.notify(key, 10**12) == 0
        assert feed.notify(key, 10**12 + 1) == 1


def test_a_prefix_watch_wakes_for_keys_under_it_only(planes, admin):
    writer, prefix = new_writer(admin)
    first = writer.post(f"/write/{prefix}a/1").json()["version"]
    state = writer.get(f"/v1/watch?prefix={prefix}&wait=0").json()
    assert state["keys"] == [{"key": f"{prefix}a", "version": first}]
    assert state["changed"] is True and state["truncated"] is False
    index = state["index"]
    waiting = in_thread(writer.get, f"/v1/watch?prefix={prefix}&index={index}&wait={LONG}")
    parked(planes)
    admin.post(f"/write/{prefix[:-1]}x-outside/1")  # not under the prefix
    second = writer.post(f"/write/{prefix}b/2").json()["version"]
    body = waiting.result(timeout=LONG + 30).json()
    assert body["changed"] is True and body["index"] >= second
    assert body["keys"] == [
        {"key": f"{prefix}a", "version": first},
        {"key": f"{prefix}b", "version": second},
    ]


def test_a_prefix_watch_sees_deletes(planes, admin):
    writer, prefix = new_writer(admin)
    writer.post(f"/write/{prefix}gone/1")
    index = writer.get(f"/v1/watch?prefix={prefix}&wait=0").json()["index"]
    waiting = in_thread(writer.get, f"/v1/watch?prefix={prefix}&index={index}&wait={LONG}")
    parked(planes)
    assert writer.delete(f"/v1/kv/{prefix}gone").status_code == 204
    body = waiting.result(timeout=LONG + 30).json()
    assert body["changed"] is True and body["keys"] == [] and body["index"] > index


def test_a_prefix_watch_covers_only_the_callers_grants(planes, admin):
    writer, prefix = new_writer(admin)
    other_writer, other_prefix = new_writer(admin)
    writer.post(f"/write/{prefix}mine/1")
    other_writer.post(f"/write/{other_prefix}theirs/1")
    # The empty prefix is everything the caller is granted: their keys only.
    state = writer.get("/v1/watch?wait=0").json()
    assert [k["key"] for k in state["keys"]] == [f"{prefix}mine"]
    # A change outside the grants does not wake the watch.
    waiting = in_thread(writer.get, f"/v1/watch?index={state['index']}&wait=2")
    parked(planes)
    other_writer.post(f"/write/{other_prefix}theirs/2")
    body = waiting.result(timeout=60).json()
    assert body["changed"] is False
    assert [k["key"] for k in body["keys"]] == [f"{prefix}mine"]
    # A prefix wholly outside them is refused, naming nothing.
    refused = writer.get(f"/v1/watch?prefix={other_prefix}&wait=0")
    assert refused.status_code == 403
    assert other_prefix not in refused.text


def test_a_key_outside_the_grants_is_refused(admin):
    writer, _prefix = new_writer(admin)
    response = writer.get("/v1/watch/elsewhere-key?wait=0")
    assert response.status_code == 403
    assert response.json()["error"]["code"] == "forbidden"


def test_a_reader_may_watch(admin, key):
    reader = create_user(admin, "reader", ["*"])
    admin.post(f"/write/{key}/v")
    assert reader.get(f"/v1/watch/{key}?wait=0").status_code == 200


@pytest.mark.parametrize(
    "query",
    [
        "index=-1",
        "index=abc",
        "index=1.5",
        "index=%D9%A1",  # an Arabic-Indic digit: isdigit() says yes, we say no
        "index=99999999999999999999",
        "wait=301",
        "wait=-1",
        "wait=",
        "prefix=a%2Fb",
        "prefix=" + "a" * 257,
    ],
)
def test_malformed_parameters_are_a_400(admin, key, query):
    path = "/v1/watch" if query.startswith("prefix") else f"/v1/watch/{key}"
    response = admin.get(f"{path}?{query}")
    assert response.status_code == 400, response.text
    assert response.json()["error"]["code"] == "bad_request"


@pytest.mark.parametrize("raw", ["a%2Fb", "a%0D%0Ab", "a b", "x" * 257])
def test_a_malformed_key_is_a_400(admin, raw):
    response = admin.get(f"/v1/watch/{raw}?wait=0")
    assert response.status_code == 400
    assert response.json()["error"]["code"] in ("invalid_key", "bad_request")


def test_the_control_plane_serves_watches_under_ops(admin, key):
    version = admin.post(f"/write/{key}/v").json()["version"]
    response = admin.get(f"/ops/v1/watch/{key}?index=0&wait=0")
    assert response.status_code == 200, response.text
    assert response.json()["version"] == version


def test_watches_past_the_bound_are_refused_with_retry_after(planes, planes_with, key):
    admin = planes_with(PLAB_WATCH_MAX_PER_PROCESS="1")
    version = admin.post(f"/write/{key}/v").json()["version"]
    holding = in_thread(admin.get, f"/v1/watch/{key}?index={version}&wait={LONG}")
    feed = services_of(planes.variants[-1]["ap"]).watches.feed
    for _ in range(400):
        if feed.waiting:
            break
        threading.Event().wait(0.05)
    metrics = admin.direct("GET", "ap", "/metrics").text
    assert 'plab_watches_held{plane="ap"} 1.0' in metrics
    refused = admin.get(f"/v1/watch/{key}?index={version}&wait=1")
    assert refused.status_code == 429
    assert refused.json()["error"]["code"] == "rate_limited"
    assert int(refused.headers["Retry-After"]) >= 1
    admin.post(f"/write/{key}/release")
    assert holding.result(timeout=LONG + 30).json()["changed"] is True
    # The slot is free again.
    assert admin.get(f"/v1/watch/{key}?wait=0").status_code == 200


def test_watches_off_refuses_every_watch(planes_with, key):
    admin = planes_with(PLAB_WATCH_MAX_PER_PROCESS="0")
    response = admin.get(f"/v1/watch/{key}?wait=0")
    assert response.status_code == 429
    assert "Retry-After" in response.headers


def test_a_prefix_broader_than_the_budget_is_a_400(planes_with, key):
    admin = planes_with(PLAB_WATCH_PREFIX_KEYS="3")
    for i in range(4):
        admin.post(f"/write/{key}-{i}/v")
    response = admin.get(f"/v1/watch?prefix={key}-&wait=0")
    assert response.status_code == 400
    assert "narrower" in response.json()["error"]["message"]
    assert admin.get(f"/v1/watch?prefix={key}-1&wait=0").status_code == 200


def test_the_oldest_tombstones_are_dropped_and_raise_the_floor(planes, admin, key):
    client = planes.redis_client()
    place = shard_for(key)  # every shard keeps its own tombstones and floor
    names = (f"{key}-fake-{i}" for i in itertools.count())
    fakes = list(itertools.islice((n for n in names if shard_of(n) == place.number), TOMBS_KEPT))
    try:
        for start in range(0, len(fakes), 10_000):
            chunk = fakes[start : start + 10_000]
            client.zadd(place.tombs, {name: 1 + start + i for i, name in enumerate(chunk)})
        admin.post(f"/write/{key}/v")
        assert admin.delete(f"/v1/kv/{key}").status_code == 204
        assert client.zcard(place.tombs) <= TOMBS_KEPT
        assert client.zscore(place.tombs, fakes[0]) is None
        floor = int(client.get(place.floor))
        assert floor >= 1
        # A key whose tombstone is gone reads as the floor.
        body = admin.get(f"/v1/watch/{fakes[0]}?index=0&wait=0").json()
        assert body["exists"] is False and body["index"] == floor
    finally:
        for start in range(0, len(fakes), 10_000):
            client.zrem(place.tombs, *fakes[start : start + 10_000])
        client.delete(place.floor)
        client.close()


def test_the_lua_names_are_the_modules():
    marks = (LUA_DIR / "shard_marks.lua").read_text()
    assert f"'{watch.CHANGES}'" in marks
    assert f"local TOMBS_KEPT = {TOMBS_KEPT}\n" in marks


def test_redis_going_away_under_a_parked_watch_is_a_503_with_retry_after():
    """Its own planes and redis: the watch is parked when redis dies; the lost
    subscription wakes it, its state read fails, and it answers 503."""
    own = start_planes()
    try:
        admin = own.admin()
        version = admin.post("/write/fault-watch/v").json()["version"]
        waiting = in_thread(admin.get, f"/v1/watch/fault-watch?index={version}&wait={LONG}")
        parked(own)
        own.redis.stop()
        answer = waiting.result(timeout=LONG + 30)
        assert answer.status_code == 503, answer.text
        assert answer.json()["error"]["code"] == "unavailable"
        assert int(answer.headers["Retry-After"]) >= 1
        refused = admin.get(f"/v1/watch/fault-watch?index={version}&wait=1")
        assert refused.status_code == 503
    finally:
        own.stop()


# The app plane's ACL rule of the release before watches (redis.conf.j2), as a
# compose deployment that upgraded the images but not redis.conf still has it.
PREVIOUS_AP_ACL = (
    "resetkeys resetchannels %R~{plab}:* &{plab}:users:events -@all +@connection +@read "
    "-@dangerous +info +config|get +client|setname +ping -keys -scan -randomkey +subscribe "
    "+unsubscribe +script|load +script|exists (~{plab}:* -@all +evalsha +eval) "
    "(~{plab}:kv:* ~{plab}:kv-version ~{plab}:kv-index ~{plab}:usage:* ~{plab}:limits:* "
    "~{plab}:authfail:* ~{plab}:lastused:* -@all +@read +@write -@dangerous -@scripting "
    "-keys -scan -randomkey) (%W~{plab}:audit -@all +rpush)"
)


def test_a_write_under_the_previous_acl_is_refused_and_changes_nothing(planes, admin, key):
    """Upgraded code on a redis whose ACL predates watches (and the shards): the
    shard keys of every write script are refused before anything changed (the
    app answers 503 until redis.conf is rendered again)."""
    import redis as redis_py

    from productionlab.audit import Actor
    from productionlab.shardkv import ShardedKV
    from productionlab.store.durability import Durability

    user = f"plab-ap-old-{key}"
    rules = PREVIOUS_AP_ACL.split()
    if planes.cluster:  # a cluster client learns the topology with CLUSTER SLOTS
        rules.append("+cluster|slots")
    for node in planes.redis_nodes():  # every master of a cluster has its own ACL
        node.execute_command("ACL", "SETUSER", user, "on", ">pw", *rules)
        node.close()
    root = planes.redis_client()
    old = planes.redis_client(username=user, password="pw")
    try:
        admin.post(f"/write/{key}/kept")
        before = (root.hgetall(item_of(key)), audit_entries(root))
        store = ShardedKV(old, Durability(old, strict=False))
        for change in (
            lambda: store.put(key, b"new", Actor("old")),
            lambda: store.put(key, b"new", Actor("old"), ttl=60),
            lambda: store.delete(key, Actor("old")),
        ):
            with pytest.raises(redis_py.exceptions.RedisError) as refusal:
                change()
            said = str(refusal.value)
            assert "can't" in said or "NOPERM" in said or "no permissions" in said
            assert (root.hgetall(item_of(key)), audit_entries(root)) == before
    finally:
        old.close()
        root.close()
        for node in planes.redis_nodes():
            node.execute_command("ACL", "DELUSER", user)
            node.close()
