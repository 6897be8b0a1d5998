"""The encrypted backup file format (``.plab-backup``): its key derivation, its
chunked writer and its authenticated reader. What goes into a backup, and
creating, verifying and restoring one, is in ``backup.py``.

File format::

    MAGIC (8 bytes) | header length (4, big-endian) | header (JSON) | chunk*

The header names the format, the key id of the backup key, a random salt and
nonce prefix. Each chunk is ``length (4) | AES-256-GCM ciphertext+tag`` of at
most 1 MiB of plaintext; its nonce is the prefix plus the chunk's index and its
associated data is the SHA-256 of magic+length+header, the index and a last-chunk
flag. So a flipped byte anywhere (header included), a dropped, repeated or
reordered chunk, or a truncated file fails authentication.

The file key is HKDF-SHA256 of ``PLAB_BACKUP_KEY`` with the per-file salt; the
key id is derived from the secret alone, so a backup made with another key is
refused by name before any decryption is tried.
"""

from __future__ import annotations

import base64
import hashlib
import json
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import IO

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

MAGIC = b"PLABBK1\n"
FORMAT = "productionlab-backup"
SUFFIX = ".plab-backup"
CHUNK = 1024 * 1024


class BackupError(Exception):
    """The backup cannot be made, read or restored; the message says why."""


# --- keys -------------------------------------------------------------------------
def _secret_bytes(secret: str) -> bytes:
    text = secret.strip()
    try:
        return bytes.fromhex(text)
    except ValueError:
        return text.encode()


def key_id(secret: str) -> str:
    return hashlib.sha256(b"productionlab backup key id\0" + _secret_bytes(secret)).hexdigest()[:16]


def file_key(secret: str, salt: bytes) -> bytes:
    return HKDF(
        algorithm=hashes.SHA256(), length=32, salt=salt, info=b"productionlab backup v1"
    ).derive(_secret_bytes(secret))


# --- writing --------------------------------------------------------------------
class ChunkWriter:
    """Plaintext in, sealed chunks out: one per CHUNK bytes, the last one flagged."""

    def __init__(self, handle: IO[bytes], aead: AESGCM, nonce_prefix: bytes, header_hash: bytes):
        self.handle, self.aead = handle, aead
        self.nonce_prefix, self.header_hash = nonce_prefix, header_hash
        self.buffer = bytearray()
        self.index = 0

    def write(self, data: bytes) -> None:
        self.buffer += data
        while len(self.buffer) > CHUNK:
            self._emit(bytes(self.buffer[:CHUNK]), last=False)
            del self.buffer[:CHUNK]

    def close(self) -> None:
        self._emit(bytes(self.buffer), last=True)

    def _emit(self, plain: bytes, last: bool) -> None:
        nonce = self.nonce_prefix + struct.pack(">I", self.index)
        sealed = self.aead.encrypt(nonce, plain, _chunk_aad(self.header_hash, self.index, last))
        self.handle.write(struct.pack(">I", len(sealed)) + sealed)
        self.index += 1


def _chunk_aad(header_hash: bytes, index: int, last: bool) -> bytes:
    return header_hash + struct.pack(">I?", index, last)


def record_line(data: dict) -> bytes:
    """One plaintext record: compact JSON and a newline."""
    return json.dumps(data, separators=(",", ":")).encode() + b"\n"


# --- reading --------------------------------------------------------------------
def read_header(path: Path) -> tuple[dict, bytes]:
    with open(path, "rb") as handle:
        if handle.read(len(MAGIC)) != MAGIC:
            raise BackupError(f"{path.name} is not a productionlab backup")
        raw_length = handle.read(4)
        if len(raw_length) != 4:
            raise BackupError(f"{path.name} is truncated")
        (length,) = struct.unpack(">I", raw_length)
        if length > 64 * 1024:
            raise BackupError(f"{path.name} has a corrupt header")
        header = handle.read(length)
    try:
        data = json.loads(header)
    except (ValueError, UnicodeDecodeError) as exc:
        raise BackupError(f"{path.name} has a corrupt header") from exc
    if not isinstance(data, dict) or data.get("format") != FORMAT or data.get("version") != 1:
        raise BackupError(f"{path.name} has an unknown format")
    return data, MAGIC + raw_length + header


def iter_backup(path: Path, secret: str) -> Iterator[dict]:
    """Decrypt and yield the JSON records. Raises BackupError on any tampering.

    Records are yielded as chunks authenticate; callers that change anything
    must consume the whole file once first (see :func:`verify_backup`).
    """
    header, prefix = read_header(path)
    if header.get("key_id") != key_id(secret):
        raise BackupError(
            f"{path.name} was made with backup key {header.get('key_id')!r}; "
            f"the configured PLAB_BACKUP_KEY has id {key_id(secret)!r}"
        )
    try:
        salt = base64.b64decode(header["salt"])
        nonce_prefix = base64.b64decode(header["nonce_prefix"])
    except (KeyError, ValueError) as exc:
        raise BackupError(f"{path.name} has a corrupt header") from exc
    if len(nonce_prefix) != 8:
        raise BackupError(f"{path.name} has a corrupt header")
    aead = AESGCM(file_key(secret, salt))
    header_hash = hashlib.sha256(prefix).digest()
    pending = b""
    ended = False
    with open(path, "rb") as handle:
        handle.seek(len(prefix))
        index = 0
        while True:
            raw_length = handle.read(4)
            if not raw_length:
                break
            if len(raw_length) != 4 or ended:
                raise BackupError(f"{path.name} is corrupt (data after the last chunk)")
            (length,) = struct.unpack(">I", raw_length)
            sealed = handle.read(length)
            if len(sealed) != length or length > CHUNK + 16:
                raise BackupError(f"{path.name} is truncated or corrupt")
            nonce = nonce_prefix + struct.pack(">I", index)
            plain = None
            for last in (False, True):
                try:
                    plain = aead.decrypt(nonce, sealed, _chunk_aad(header_hash, index, last))
                    ended = last
                    break
                except InvalidTag:
                    continue
            if plain is None:
                raise BackupError(
                    f"{path.name} failed authentication at chunk {index}: "
                    "it is corrupt or was tampered with"
                )
            index += 1
            lines = (pending + plain).split(b"\n")
            pending = lines.pop()
            for line in lines:
                yield json.loads(line)
    if not ended:
        raise BackupError(f"{path.name} is truncated (no final chunk)")
    if pending:
        raise BackupError(f"{path.name} is corrupt (a partial record at the end)")
