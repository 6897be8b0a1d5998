"""Resharding a real three-master Redis Cluster (tests/cluster_kit.py) while
traffic flows through both in-process planes (issue 12 item 3): the slot of
``{plab}`` (users, tokens, every write's quota reservation) and the slots of a few
keys' shards (their items, counters, indexes, chains) move to another master with
redis's own live-resharding sequence (``CLUSTER SETSLOT ... IMPORTING`` /
``MIGRATING``, ``MIGRATE`` a few keys at a time, ``SETSLOT ... NODE``, what
``redis-cli --cluster reshard`` does) and back, while writers put, read,
compare-and-set, delete, send transactions and bulk requests, and a watch waits.

Asserted: every answer is 2xx, or what the request itself asks for (404 for a
key deleted or never written, 412 for a stale If-Match), or 503 with
Retry-After; never 500. Every acknowledged write reads back afterwards with
its value and version; deleted keys stay deleted; the audit chain verifies.
Recorded, not asserted: how many 503s each move caused and how long it took.

It moves whichever slots ``{plab}`` and the items of the watched key and a few
sample keys hash to (the item's name from the layout, its slot and owner from the
cluster). A transaction keeps to one shard (on a cluster, keys of two shards are
400 ``cross_shard``): its two keys are picked in one shard (tests/layout_kit.py).
"""

from __future__ import annotations

import secrets
import threading
import time
from collections import Counter
from dataclasses import dataclass, field

import pytest

from tests.cluster_kit import RedisClusterKit
from tests.inprocess import Planes, park_watch, start_planes
from tests.layout_kit import item_of, one_shard

WRITERS = 2
MAX_ROUNDS = 5000  # per writer: the traffic is bounded by count as well as by the moves
DEADLINE = 600.0  # generous: the machine is shared; never a speed assertion
OTHER_SLOT_KEYS = ("reshard-a", "reshard-b", "reshard-c")
MOVE_BATCH = 3  # keys per MIGRATE: small, so traffic meets the slot split between masters
MOVE_PAUSE = 0.05


@pytest.fixture(scope="module")
def planes() -> Planes:
    kit = RedisClusterKit().start()
    started = start_planes(kit)
    yield started
    started.stop()


@dataclass
class Traffic:
    """What the writers saw: acknowledged state, answers outside the contract,
    and when each 503 came."""

    acked: dict[str, tuple[bytes, int]] = field(default_factory=dict)
    # A CAS answered 503 may or may not have applied: either state is right.
    maybe: dict[str, tuple[bytes, int, bytes]] = field(default_factory=dict)
    deleted: set[str] = field(default_factory=set)
    # A delete answered 503 may or may not have applied.
    maybe_deleted: dict[str, tuple[bytes, int]] = field(default_factory=dict)
    wrong: list[str] = field(default_factory=list)
    unavailable: list[float] = field(default_factory=list)
    requests: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def check(self, what: str, answer, *expected: int) -> bool:
        """True for a 2xx (or an ``expected`` status); a 503 must carry Retry-After."""
        with self.lock:
            self.requests += 1
            if answer.status_code == 503:
                self.unavailable.append(time.monotonic())
                retry = answer.headers.get("Retry-After", "")
                if not retry.isdigit() or int(retry) < 1:
                    self.wrong.append(f"{what}: 503 without Retry-After")
                elif answer.json()["error"]["code"] != "unavailable":
                    self.wrong.append(f"{what}: 503 {answer.text}")
                return False
            if answer.status_code in expected:
                return True
            self.wrong.append(f"{what}: {answer.status_code} {answer.text[:300]}")
            return False


def etag(version: int) -> str:
    return f'"{version}"'


def one_round(client, traffic: Traffic, run: str, writer: int, n: int) -> None:
    key = f"rs-{run}-{writer}-{n}"
    put = client.put(f"/v1/kv/{key}", data=f"v{n}".encode())
    if not traffic.check("put", put, 201):
        return
    first = put.json()["version"]
    with traffic.lock:
        traffic.acked[key] = (f"v{n}".encode(), first)
    # Compare-and-set on the version just written, then a stale one (412).
    cas = client.put(f"/v1/kv/{key}", data=f"c{n}".encode(), headers={"If-Match": etag(first)})
    if traffic.check("cas", cas, 200):
        with traffic.lock:
            traffic.acked[key] = (f"c{n}".encode(), cas.json()["version"])
        stale = client.put(f"/v1/kv/{key}", data=b"stale", headers={"If-Match": etag(first)})
        traffic.check("stale cas", stale, 412)
    elif cas.status_code == 503:
        with traffic.lock:
            traffic.maybe[key] = (f"v{n}".encode(), first, f"c{n}".encode())
            del traffic.acked[key]
    read = client.get(f"/v1/kv/{key}")
    if traffic.check("get", read, 200) and key in traffic.acked:
        value, version = traffic.acked[key]
        if read.content != value or read.headers.get("ETag") != etag(version):
            with traffic.lock:
                traffic.wrong.append(f"get {key}: {read.content!r} {read.headers.get('ETag')}")
    traffic.check("get absent", client.get(f"/v1/kv/{key}-never"), 404)
    if n % 4 == 0:
        gone = client.delete(f"/v1/kv/{key}")
        if traffic.check("delete", gone, 204):
            with traffic.lock:
                traffic.acked.pop(key, None)
                traffic.maybe.pop(key, None)
                traffic.deleted.add(key)
            traffic.check("get deleted", client.get(f"/v1/kv/{key}"), 404)
        elif gone.status_code == 503:
            with traffic.lock:
                if key in traffic.acked:
                    traffic.maybe_deleted[key] = traffic.acked.pop(key)
                traffic.maybe.pop(key, None)  # either state or gone: not checked further
    if n % 5 == 1:
        a, b = one_shard(f"{key}-t", 2)  # a transaction on a cluster keeps to one shard
        txn = client.post(
            "/v1/txn",
            json={
                "ops": [
                    {"op": "absent", "key": a},
                    {"op": "put", "key": a, "value": "ta"},
                    {"op": "put", "key": b, "value": "tb"},
                    {"op": "get", "key": a},
                ]
            },
        )
        if traffic.check("txn", txn, 200):
            results = txn.json()["results"]
            with traffic.lock:
                traffic.acked[a] = (b"ta", results[1]["version"])
                traffic.acked[b] = (b"tb", results[2]["version"])
    if n % 5 == 3:
        items = [{"op": "put", "key": f"{key}-b{i}", "value": f"b{i}"} for i in range(3)]
        items.append({"op": "get", "key": key})
        bulk = client.post("/v1/bulk", json={"items": items})
        if traffic.check("bulk", bulk, 200):
            for i, result in enumerate(bulk.json()["results"][:3]):
                if result.get("outcome") == "created":
                    with traffic.lock:
                        traffic.acked[f"{key}-b{i}"] = (f"b{i}".encode(), result["version"])


def writer(client, traffic: Traffic, run: str, index: int, stop: threading.Event) -> None:
    deadline = time.monotonic() + DEADLINE
    for n in range(MAX_ROUNDS):
        if stop.is_set() or time.monotonic() > deadline:
            return
        try:
            one_round(client, traffic, run, index, n)
        except Exception as exc:  # a failure in the test's own code must not hide
            with traffic.lock:
                traffic.wrong.append(f"writer {index}: {type(exc).__name__}: {exc}")
            return


def test_slots_move_to_another_master_and_back_under_traffic(planes, record_property, caplog):
    kit = planes.redis
    assert isinstance(kit, RedisClusterKit)
    client = planes.variant(PLAB_USER_RATE="1000000/minute")
    admin = planes.admin()
    run = secrets.token_hex(4)
    traffic = Traffic()
    # Some state before the move: it must move with its slot and come back.
    for n in range(30):
        one_round(client, traffic, run, 9, n)
    assert not traffic.wrong, traffic.wrong
    # A watch parked on a key, woken by a write while the {plab} slot is half moved.
    watched = f"rs-{run}-watch"
    since = client.put(f"/v1/kv/{watched}", data=b"1").json()["version"]
    watch, woken = park_watch(planes, client, f"/v1/watch/{watched}?index={since}&wait=120")
    written_during: list = []

    def write_the_watched_key() -> None:
        answer = client.put(f"/v1/kv/{watched}", data=b"2")
        written_during.append(answer)

    stop = threading.Event()
    writers = [
        threading.Thread(target=writer, args=(client, traffic, run, i, stop))
        for i in range(WRITERS)
    ]
    for thread in writers:
        thread.start()
    moves: list[dict] = []
    try:
        for _ in range(200):  # bounded: let the writers get going
            if traffic.requests >= 40:
                break
            time.sleep(0.05)
        plab_slot = kit.slot_of("{plab}")
        home = kit.owner_of_slot(plab_slot)
        legs = []  # the {plab} slot to each other master and back; shards' slots once
        for away in (n for n in kit.nodes if n is not home):
            legs += [(plab_slot, away, "away"), (plab_slot, home, "back")]
        watched_slot = kit.slot_of(item_of(watched))
        shard_slots = {kit.slot_of(item_of(k)) for k in (watched, *OTHER_SLOT_KEYS)}
        for slot in sorted(shard_slots - {plab_slot}):
            owner = kit.owner_of_slot(slot)
            other = next(n for n in kit.nodes if n is not owner)
            legs += [(slot, other, "away"), (slot, owner, "back")]
        for slot, target, leg in legs:
            before, asked = len(traffic.unavailable), traffic.requests
            # The watched key is written while its own shard's slot is half moved.
            during = write_the_watched_key if slot == watched_slot and not written_during else None
            started = time.monotonic()
            keys = kit.move_slot(slot, target, batch=MOVE_BATCH, pause=MOVE_PAUSE, during=during)
            took = time.monotonic() - started
            kit.wait_ready()
            assert kit.owner_of_slot(slot) is target
            moves.append(
                {
                    "slot": slot,
                    "leg": leg,
                    "keys": keys,
                    "seconds": round(took, 2),
                    "requests": traffic.requests - asked,
                    "unavailable": len(traffic.unavailable) - before,
                }
            )
    finally:
        stop.set()
        for thread in writers:
            thread.join(120)
    unavailable = len(traffic.unavailable)
    record_property("reshard_moves", moves)
    record_property("reshard_requests", traffic.requests)
    record_property("reshard_unavailable", unavailable)
    faults = Counter(
        r.getMessage()[:60] for r in caplog.records if r.name == "productionlab.errors"
    )
    record_property("reshard_redis_faults", dict(faults))
    print(f"moves: {moves}; requests {traffic.requests}, 503s {unavailable}; faults {faults}")
    assert not any(t.is_alive() for t in writers)
    assert not traffic.wrong, traffic.wrong[:20]
    assert moves and moves[0]["keys"] > 0  # the {plab} slot held data and it moved
    moved_shards = [m for m in moves if m["slot"] in shard_slots and m["leg"] == "away"]
    assert moved_shards and all(m["keys"] > 0 for m in moved_shards), moves  # items moved
    assert traffic.requests > 100
    # The watch: woken by the write made while its slot was half moved (or 503).
    assert written_during, "the watched key was never written"
    for _ in range(50):  # a 503 wrote nothing (or may have): write again, bounded
        if traffic.check("watched put", written_during[-1], 200):
            break
        written_during.append(client.put(f"/v1/kv/{watched}", data=b"2"))
    watch.join(150)
    assert woken, "the watch never answered"
    if traffic.check("watch", woken[0], 200):
        assert woken[0].json()["index"] > since
    # Everything acknowledged is there with its value and version; deletes stayed.
    for key, (value, version) in traffic.acked.items():
        read = admin.get(f"/v1/kv/{key}")
        assert read.status_code == 200, (key, read.text)
        assert (read.content, read.headers["ETag"]) == (value, etag(version)), key
    for key, (value, version, cas_value) in traffic.maybe.items():
        read = admin.get(f"/v1/kv/{key}")
        assert read.status_code == 200, (key, read.text)
        if read.content != value:
            assert read.content == cas_value, key
        else:
            assert read.headers["ETag"] == etag(version), key
    for key, (value, version) in traffic.maybe_deleted.items():
        read = admin.get(f"/v1/kv/{key}")
        assert read.status_code in (200, 404), (key, read.text)
        if read.status_code == 200:
            assert (read.content, read.headers["ETag"]) == (value, etag(version)), key
    for key in traffic.deleted:
        assert admin.get(f"/v1/kv/{key}").status_code == 404, key
    verified = admin.post("/admin/audit/verify")
    assert verified.status_code == 200, verified.text
    for plane in ("ap", "cp"):
        assert admin.direct("GET", plane, "/ready").status_code == 200
