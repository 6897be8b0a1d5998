"""Every audit chain of the shard layout (productionlab/audit_chains.py) and the
format-2 checkpoint that signs them all in one line, on a real single redis and
a real three-master cluster: every chain verifies, a change to one covered entry
is found in its own chain only, format-1 lines still cover the main chain, and
a forged format-2 line verifies nowhere."""

from __future__ import annotations

import fcntl
import json
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from productionlab.audit import Actor, AuditLog
from productionlab.audit_archive import Archive
from productionlab.audit_chains import (
    chain_keys,
    chain_lengths,
    chain_name,
    checkpoint_every_chain,
    heads,
    trim_every_chain,
    verify_every_chain,
)
from productionlab.audit_checkpoint import (
    MAIN_CHAIN,
    CheckpointFile,
    MultiCheckpoint,
    key_id,
    new_checkpoint,
)
from productionlab.audit_verify import verify_log
from productionlab.store.layout import SHARDS, shard_for, shard_of
from tests.layout_kit import actor, fresh, store_for

pytest_plugins = ["tests.shard_backends"]


@pytest.fixture
def files():
    with tempfile.TemporaryDirectory() as scratch:
        root = Path(scratch)
        yield root, CheckpointFile(root / "checkpoints.jsonl")


def archives_in(root: Path):
    return lambda name: Archive(root / "archive" / name)


def fill(where) -> dict[str, int]:
    kv, who = store_for(where), actor()
    written = {}
    while len({shard_of(k) for k in written}) < SHARDS:
        key = fresh("c")
        written[key] = kv.put(key, b"x", who).version
    AuditLog(where[1]).append(Actor("admin"), "user.create", who.name, "created")
    return written


def test_there_is_a_main_chain_and_one_per_shard():
    names = list(chain_keys())
    assert names[0] == MAIN_CHAIN and names[1:] == [chain_name(n) for n in range(SHARDS)]
    assert len({keys for keys in chain_keys().values()}) == SHARDS + 1


def test_every_chain_length_is_read_in_one_pipeline(where):
    _, client, _ = where
    fill(where)
    lengths = chain_lengths(client)
    assert lengths == {name: client.llen(lst) for name, (lst, _) in chain_keys().items()}
    assert all(length >= 1 for length in lengths.values()), lengths


def test_a_range_of_entries_is_read_in_round_trips_of_batches(where):
    _, client, _ = where
    log = AuditLog(client)
    for number in range(7):
        log.append(Actor("admin"), "user.create", f"reader-{number}", "created")
    stored = client.lrange(log.list_key, 0, -1)
    length = len(stored)
    assert length >= 7
    for start, stop, batch, per_trip in (
        (0, length - 1, 1000, 20),
        (0, length - 1, 1, 20),
        (1, length - 1, 2, 20),
        (1, length - 1, 2, 1),  # a round trip per LRANGE
        (0, length - 1, 2, 3),  # the last trip shorter than the others
    ):
        assert list(log.iter_raw(start, stop, batch, per_trip)) == stored[start : stop + 1]
    for batch, per_trip in ((1000, 20), (2, 3), (1, 1), (3, 2)):  # -1: to the end
        assert list(log.iter_raw(1, -1, batch, per_trip)) == stored[1:]
    assert list(log.iter_raw(0, length + 5, 3)) == stored  # a range past the end: what there is
    assert list(log.iter_raw(3, 2)) == []


def test_one_signed_line_covers_every_chain_and_each_verifies(where, files):
    root, checkpoints = files
    fill(where)
    private = Ed25519PrivateKey.generate()
    signed = checkpoint_every_chain(where[1], archives_in(root), checkpoints, private)
    assert len(checkpoints.read()) == 1
    line = json.loads(checkpoints.path.read_text())
    assert line["v"] == 2 and set(line["chains"]) == set(chain_keys())
    assert signed.valid_under({key_id(private.public_key()): private.public_key()})
    results = verify_every_chain(where[1], archives_in(root), checkpoints, {})
    assert set(results) == set(chain_keys())
    for name, result in results.items():
        assert result.ok and result.checkpoints == 1, (name, result.problems)
        assert result.latest_checkpoint["chain"] == name
    assert checkpoints.latest(chain_name(3)).seq == heads(where[1], archives_in(root))["s03"].seq


def test_a_changed_entry_is_found_in_its_own_chain_only(where, files):
    root, checkpoints = files
    _, client, _ = where
    written = fill(where)
    checkpoint_every_chain(client, archives_in(root), checkpoints, Ed25519PrivateKey.generate())
    key = sorted(written)[0]
    log_key = shard_for(key).audit[0]
    entries = client.lrange(log_key, 0, -1)
    index = next(i for i, raw in enumerate(entries) if json.loads(raw)["target"] == key)
    forged = json.loads(entries[index])
    forged["actor"] = "someone-else"
    client.lset(log_key, index, json.dumps(forged))
    try:
        results = verify_every_chain(client, archives_in(root), checkpoints, {})
    finally:  # the redis serves the module's other tests
        client.lset(log_key, index, entries[index])
    bad = {name for name, result in results.items() if not result.ok}
    assert bad == {chain_name(shard_of(key))}, {n: r.problems for n, r in results.items()}
    assert verify_every_chain(client, archives_in(root), checkpoints, {})[bad.pop()].ok


def test_a_chain_that_cannot_be_archived_fails_alone(where, files):
    """Chains are archived several at once: one chain's failure is raised, the others'
    trims stand (archived, then trimmed) and the failing chain keeps every entry."""
    root, _ = files
    _, client, _ = where
    fill(where)
    fill(where)  # every chain at least two entries: each has one to archive
    broken = chain_name(3)
    (root / "archive").mkdir()
    (root / "archive" / broken).write_text("a file where the chain's archive should be\n")
    broken_log = AuditLog(client, chain_keys()[broken])
    before = broken_log.snapshot()
    with pytest.raises(OSError):
        trim_every_chain(client, archives_in(root), Actor("keeper"), keep=1)
    assert broken_log.snapshot() == before
    for name, keys in chain_keys().items():
        if name != broken:
            assert archives_in(root)(name).segments(), name
            assert AuditLog(client, keys).snapshot().length == 2, name  # kept one + the trim's


def archive_lock_waited_on(thread: threading.Thread) -> str | None:
    """The chain whose archive lock ``thread`` is waiting for, if it is in one."""
    frame = sys._current_frames().get(thread.ident)
    while frame is not None:
        archive = frame.f_locals.get("self")
        if frame.f_code.co_name == "lock" and isinstance(archive, Archive):
            return archive.directory.name
        frame = frame.f_back
    return None


def lock_is_free(archive: Archive) -> bool:
    with open(archive.directory / ".lock", "w") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        fcntl.flock(handle, fcntl.LOCK_UN)
        return True


def test_a_verification_locks_one_chain_at_a_time(where, files):
    """A verification reads the whole archive and may take long: it holds the lock of
    the chain it reads only, so the keeper goes on archiving and trimming the others.
    Here it waits for the last chain's lock (a trim of that chain under way) while
    every other chain's archive is free, then verifies every chain."""
    root, checkpoints = files
    _, client, _ = where
    fill(where)
    archives = archives_in(root)
    last = list(chain_keys())[-1]
    results: dict = {}
    verifier = threading.Thread(
        target=lambda: results.update(verify_every_chain(client, archives, checkpoints, {}))
    )
    with archives(last).lock():
        verifier.start()
        deadline = time.monotonic() + 30
        while archive_lock_waited_on(verifier) != last:
            assert verifier.is_alive() and time.monotonic() < deadline, "it did not wait"
            time.sleep(0.01)
        others = [name for name in chain_keys() if name != last]
        assert [name for name in others if not lock_is_free(archives(name))] == []
    verifier.join(30)
    assert not verifier.is_alive()
    assert set(results) == set(chain_keys())
    assert all(result.ok for result in results.values()), results


def test_format_one_lines_still_cover_the_main_chain(where, files):
    root, checkpoints = files
    _, client, _ = where
    fill(where)
    private = Ed25519PrivateKey.generate()
    snap = AuditLog(client).snapshot()
    checkpoints.append(
        new_checkpoint(snap.seq, snap.head, snap.first, snap.first).signed(private), private
    )
    checkpoint_every_chain(client, archives_in(root), checkpoints, private)
    results = verify_every_chain(client, archives_in(root), checkpoints, {})
    assert results[MAIN_CHAIN].ok and results[MAIN_CHAIN].checkpoints == 2
    assert all(r.ok and r.checkpoints == 1 for n, r in results.items() if n != MAIN_CHAIN)
    # Today's verifier of the main chain reads the file with both formats in it.
    assert verify_log(client, archives_in(root)(MAIN_CHAIN), checkpoints, {}).ok


def test_a_forged_line_verifies_nowhere(where, files):
    root, checkpoints = files
    _, client, _ = where
    fill(where)
    private = Ed25519PrivateKey.generate()
    signed = checkpoint_every_chain(client, archives_in(root), checkpoints, private)
    data = signed.as_dict()
    data["chains"]["s05"]["seq"] += 1  # claims one more entry than was signed
    with open(checkpoints.path, "a") as handle:
        handle.write(json.dumps(data) + "\n")
    forged = MultiCheckpoint.from_dict(data)
    assert not forged.valid_under({key_id(private.public_key()): private.public_key()})
    results = verify_every_chain(client, archives_in(root), checkpoints, {})
    assert all(not r.ok for r in results.values())
    assert all(any("signature does not verify" in p for p in r.problems) for r in results.values())


def test_every_chain_archives_and_trims_into_its_own_archive_and_still_verifies(where, files):
    root, checkpoints = files
    _, client, _ = where
    fill(where)
    fill(where)
    private = Ed25519PrivateKey.generate()
    checkpoint_every_chain(client, archives_in(root), checkpoints, private)
    trimmed = trim_every_chain(client, archives_in(root), Actor("keeper"), keep=1)
    dropped = {name: count for name, (count, _, _) in trimmed.items()}
    assert dropped[MAIN_CHAIN] >= 1 and all(n >= 1 for n in dropped.values()), dropped
    for name in chain_keys():
        assert archives_in(root)(name).segments(), name
    checkpoint_every_chain(client, archives_in(root), checkpoints, private)
    results = verify_every_chain(client, archives_in(root), checkpoints, {})
    for name, result in results.items():
        assert result.ok and result.archived >= dropped[name], (name, result.problems)
        assert result.checkpoints == 2
