"""Encrypted backups of the key-value data: create, verify, restore (the restore
drill is in ``drill.py``; the encrypted file format, its keys and its chunks, is
in ``backup_format.py``; the records and their digest in ``backup_records.py``).

The plaintext is JSON lines: a start record (the version counter), one record
per key (key, value as base64, version, remaining TTL in ms) and an end record
(key count and digest).
"""

from __future__ import annotations

import base64
import contextlib
import datetime
import hashlib
import json
import os
import struct
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Protocol

import redis
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from productionlab.audit import Actor
from productionlab.backup_format import (
    FORMAT,
    MAGIC,
    SUFFIX,
    BackupError,
    ChunkWriter,
    file_key,
    iter_backup,
    key_id,
    read_header,
    record_line,
)
from productionlab.backup_records import Digest, Record
from productionlab.shardbackup import ShardStore


class RecordStore(Protocol):
    """Where a backup reads its records and a restore writes them."""

    def kv_version(self, client: redis.Redis) -> int: ...
    def key_count(self, client: redis.Redis) -> int: ...
    def records(self, client: redis.Redis) -> Iterator[Record]: ...
    def restore_batch(
        self, client: redis.Redis, batch: list[Record], actor: Actor, overwrite: bool
    ) -> int: ...
    def finish_restore(self, client: redis.Redis, kv_version: int) -> None: ...


# --- progress -------------------------------------------------------------------
class Progress:
    """A progress bar on a terminal; nothing at all when stderr is a log."""

    def __init__(self, total: int, label: str, stream: IO[str] | None = None):
        self.stream = stream or sys.stderr
        self.enabled = self.stream.isatty()
        self.total, self.label, self.done = max(total, 1), label, 0
        self._last = 0.0

    def advance(self, count: int) -> None:
        self.done += count
        now = time.monotonic()
        if self.enabled and (now - self._last > 0.1 or self.done >= self.total):
            self._last = now
            share = min(1.0, self.done / self.total)
            bar = "#" * int(share * 30)
            self.stream.write(f"\r{self.label} [{bar:<30}] {self.done}/{self.total} keys")
            self.stream.flush()

    def close(self) -> None:
        if self.enabled:
            self.stream.write("\n")
            self.stream.flush()


# --- writing and reading files ------------------------------------------------
@dataclass(frozen=True)
class Summary:
    path: Path
    keys: int
    digest: str
    kv_version: int
    key_id: str
    created: str
    size: int

    def as_dict(self) -> dict:
        return {
            "name": self.path.name,
            "keys": self.keys,
            "digest": self.digest,
            "kv_version": self.kv_version,
            "key_id": self.key_id,
            "created": self.created,
            "size": self.size,
        }


def create_backup(
    client: redis.Redis,
    secret: str,
    directory: Path,
    *,
    name: str | None = None,
    progress: bool = True,
    store: RecordStore | None = None,
) -> Summary:
    """Write one encrypted backup file into ``directory`` (atomically: temp, fsync, rename)."""
    store = store or ShardStore()
    if not secret:
        raise BackupError("PLAB_BACKUP_KEY is not set")
    directory.mkdir(parents=True, exist_ok=True)
    created = datetime.datetime.now(datetime.UTC).strftime("%Y%m%dT%H%M%S.%fZ")
    path = directory / (name or f"plab-{created}{SUFFIX}")
    salt, nonce_prefix = os.urandom(16), os.urandom(8)
    header = json.dumps(
        {
            "format": FORMAT,
            "version": 1,
            "key_id": key_id(secret),
            "salt": base64.b64encode(salt).decode(),
            "nonce_prefix": base64.b64encode(nonce_prefix).decode(),
            "created": created,
            "cipher": "AES-256-GCM",
            "kdf": "HKDF-SHA256",
        },
        separators=(",", ":"),
    ).encode()
    prefix = MAGIC + struct.pack(">I", len(header)) + header
    aead = AESGCM(file_key(secret, salt))
    kv_version = store.kv_version(client)
    bar = Progress(store.key_count(client), "backup") if progress else None
    digest = Digest()
    descriptor, temp = tempfile.mkstemp(dir=directory, prefix=".backup-")
    try:
        with os.fdopen(descriptor, "wb") as handle:
            handle.write(prefix)
            writer = ChunkWriter(handle, aead, nonce_prefix, hashlib.sha256(prefix).digest())
            writer.write(record_line({"start": FORMAT, "kv_version": kv_version}))
            for record in store.records(client):
                writer.write(record_line(record.as_json()))
                digest.add(record)
                if bar is not None and digest.count % 100 == 0:
                    bar.advance(100)
            writer.write(
                record_line({"end": True, "count": digest.count, "digest": digest.hexdigest()})
            )
            writer.close()
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(temp, 0o600)
        os.replace(temp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temp)
        raise
    finally:
        if bar is not None:
            bar.advance(digest.count % 100)
            bar.close()
    return Summary(
        path,
        digest.count,
        digest.hexdigest(),
        kv_version,
        key_id(secret),
        created,
        path.stat().st_size,
    )


@dataclass(frozen=True)
class Contents:
    keys: int
    digest: str
    kv_version: int


def verify_backup(path: Path, secret: str) -> Contents:
    """Read the whole file: authentication, record count and digest must all hold."""
    digest = Digest()
    kv_version, end = 0, None
    for data in iter_backup(path, secret):
        if "start" in data:
            kv_version = int(data.get("kv_version", 0))
        elif "end" in data:
            end = data
        else:
            digest.add(Record.from_json(data))
    if end is None or end.get("count") != digest.count or end.get("digest") != digest.hexdigest():
        raise BackupError(f"{path.name} does not match its own summary")
    return Contents(digest.count, digest.hexdigest(), kv_version)


def restore_backup(
    client: redis.Redis,
    path: Path,
    secret: str,
    actor: Actor,
    *,
    overwrite: bool = False,
    progress: bool = True,
    store: RecordStore | None = None,
) -> int:
    """Load a verified backup. Refuses a store that has keys unless ``overwrite``.

    With ``overwrite`` the backup's keys replace existing ones; keys not in the
    backup are left alone. Each restored key gets its own audit entry.
    """
    store = store or ShardStore()
    contents = verify_backup(path, secret)
    existing = store.key_count(client)
    if existing and not overwrite:
        raise BackupError(
            f"the store already holds {existing} keys; restore into an empty store "
            "or pass --overwrite"
        )
    bar = Progress(contents.keys, "restore") if progress else None
    restored = 0
    batch: list[Record] = []

    def flush() -> int:
        count = store.restore_batch(client, batch, actor, overwrite)
        if bar is not None:
            bar.advance(len(batch))
        batch.clear()
        return count

    try:
        for data in iter_backup(path, secret):
            if "start" in data or "end" in data:
                continue
            batch.append(Record.from_json(data))
            if len(batch) >= 200:
                restored += flush()
        if batch:
            restored += flush()
        store.finish_restore(client, contents.kv_version)
    finally:
        if bar is not None:
            bar.close()
    return restored


def list_backups(directory: Path) -> list[dict]:
    listed = []
    if not directory.is_dir():
        return listed
    for path in sorted(directory.glob(f"*{SUFFIX}")):
        entry = {"name": path.name, "size": path.stat().st_size}
        try:
            header, _ = read_header(path)
            entry.update(created=header.get("created"), key_id=header.get("key_id"))
        except BackupError as exc:
            entry["error"] = str(exc)
        listed.append(entry)
    return listed


def backup_path(directory: Path, name: str) -> Path:
    """A backup in ``directory`` by file name only (no paths from clients)."""
    if "/" in name or "\\" in name or name.startswith(".") or not name.endswith(SUFFIX):
        raise BackupError(f"{name!r} is not a backup file name")
    path = directory / name
    if not path.is_file():
        raise FileNotFoundError(name)
    return path
