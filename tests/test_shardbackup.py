"""Backups on the virtual shards (productionlab/shardbackup.py through backup.py's
create and restore), on a real single redis and a real three-master cluster:
a backup of the shards restores into them with values, versions, TTLs, audit
entries and charges; a backup that the last release of the one-tag layout
(577e7c6, its own code: tests/upgrade_kit.py) took restores into the shards with
the same digest; new versions after a restore are above the backup's."""

from __future__ import annotations

import secrets
import tempfile
from pathlib import Path

import pytest

from productionlab.audit import Actor, AuditLog
from productionlab.backup import create_backup, restore_backup, verify_backup
from productionlab.backup_format import BackupError
from productionlab.backup_records import Digest
from productionlab.shardbackup import ShardStore
from productionlab.shardkv import ShardedKV
from productionlab.store.durability import Durability
from productionlab.store.layout import SHARDS, shard_for, shard_of
from tests import layout_kit
from tests.upgrade_kit import one_tag_backup, one_tag_writes

client = layout_kit.client  # the fixture: a single redis, then a cluster

SECRET = secrets.token_hex(32)


def test_a_backup_of_the_shards_restores_into_them(client):
    kv = ShardedKV(client, Durability(client, strict=False))
    alice = Actor("alice", "127.0.0.1", "b")
    written = {}
    for n in range(40):
        key = f"bk-{n:02d}-{secrets.token_hex(2)}"
        written[key] = kv.put(key, f"v{n}".encode(), alice, ttl=3600 if n % 4 == 0 else None)
    assert len({shard_of(k) for k in written}) > SHARDS // 2
    before = kv.usage("alice")
    store = ShardStore()
    with tempfile.TemporaryDirectory() as scratch:
        summary = create_backup(client, SECRET, Path(scratch), progress=False, store=store)
        assert summary.keys == 40 and summary.kv_version >= max(w.version for w in written.values())
        digest = Digest()
        for record in store.records(client):
            digest.add(record)
        assert verify_backup(summary.path, SECRET).digest == digest.hexdigest() == summary.digest
        for key in sorted(written)[:10]:  # these get another value, the rest stays
            kv.put(key, b"changed", alice)
        with pytest.raises(BackupError, match="already holds"):
            restore_backup(
                client, summary.path, SECRET, Actor("operator"), progress=False, store=store
            )
        restored = restore_backup(
            client,
            summary.path,
            SECRET,
            Actor("operator"),
            overwrite=True,
            progress=False,
            store=store,
        )
    assert restored == 40
    for key, result in sorted(written.items()):
        item = kv.get(key)
        assert (item.value, item.version) == (f"v{int(key[3:5])}".encode(), result.version)
        ttl = client.pttl(shard_for(key).item(key))
        assert (ttl > 0) == (int(key[3:5]) % 4 == 0), (key, ttl)
        chain = [e for e in AuditLog(client, shard_for(key).audit).iter_all() if e["target"] == key]
        assert chain[-1]["action"] == "kv.restore" and chain[-1]["actor"] == "operator"
    after = kv.usage("alice")  # charged again to their last writer in the chains
    assert (after.keys, after.bytes) == (before.keys, before.bytes)
    newest = kv.put(sorted(written)[0], b"after", alice)
    assert newest.version > summary.kv_version


def test_a_backup_of_the_one_tag_layout_restores_into_the_shards(client):
    bob = Actor("bob", "127.0.0.1", "b")
    names = [f"old-{n}" for n in range(20)]
    versions = one_tag_writes(
        client, [["put", k, f"o{k[4:]}".encode().hex(), "bob", None] for k in names]
    )
    keys = dict(zip(names, versions, strict=True))
    with tempfile.TemporaryDirectory() as scratch:
        summary = one_tag_backup(client, SECRET, Path(scratch))
        assert summary.keys == 20
        for key in names:  # what 577e7c6 backed up, gone: the shards are empty
            client.delete("{plab}:kv:" + key)
        store = ShardStore()
        assert store.key_count(client) == 0
        restored = restore_backup(
            client, summary.path, SECRET, Actor("operator"), progress=False, store=store
        )
        assert restored == 20
        again = create_backup(client, SECRET, Path(scratch), progress=False, store=store)
    assert again.digest == summary.digest and again.keys == 20
    kv = ShardedKV(client, Durability(client, strict=False))
    for key, version in keys.items():
        assert kv.get(key).version == version
    assert kv.put("old-0", b"new", bob).version > summary.kv_version
