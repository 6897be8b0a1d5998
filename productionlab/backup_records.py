"""What a backup holds: one record per key (key, value, version, remaining TTL),
the digest over them, and reading them from the live store. ``backup.py`` writes
them into the encrypted file (``backup_format.py``) and reads them back; the
drill (``drill.py``) compares digests.

Keys are read in lexical order from the key index, a batch at a time inside
MULTI, so each key is consistent; a backup of a busy store is not one point in
time (writes during it may or may not be included).
"""

from __future__ import annotations

import base64
import hashlib
import struct
from collections.abc import Iterable
from dataclasses import dataclass

BATCH = 500


@dataclass(frozen=True)
class Record:
    key: str
    value: bytes
    version: int
    ttl_ms: int

    def as_json(self) -> dict:
        return {
            "k": self.key,
            "v": base64.b64encode(self.value).decode(),
            "ver": self.version,
            "ttl": self.ttl_ms,
        }

    @classmethod
    def from_json(cls, data: dict) -> Record:
        return cls(data["k"], base64.b64decode(data["v"]), int(data["ver"]), int(data["ttl"]))


class Digest:
    """SHA-256 over every (key, value, version) in key order: TTLs shrink, so not them."""

    def __init__(self) -> None:
        self._hash = hashlib.sha256()
        self.count = 0

    def add(self, record: Record) -> None:
        key = record.key.encode()
        self._hash.update(struct.pack(">I", len(key)) + key)
        self._hash.update(struct.pack(">Q", len(record.value)) + record.value)
        self._hash.update(struct.pack(">Q", record.version))
        self.count += 1

    def hexdigest(self) -> str:
        return self._hash.hexdigest()


def live_digest(records: Iterable[Record]) -> Digest:
    """The digest of ``records`` (a store's, in key order), as a backup computes it."""
    digest = Digest()
    for record in records:
        digest.add(record)
    return digest
