"""Signed checkpoints of the audit log, kept outside redis.

A checkpoint says "the log's entry ``seq`` hashes to ``head``" (with where
redis's part then started, ``first``, where the kept chain began, ``origin``,
and the time), signed with Ed25519 by a key only the control plane holds
(``PLAB_AUDIT_CHECKPOINT_KEY``). Because each entry's ``prev`` is the hash of
the one before, a checkpoint covers every entry up to ``seq``: no one with
redis rights alone (the app plane's, or full ones) can drop, change, insert or
reorder a covered entry without verification reporting it.

Checkpoints are appended, one JSON object a line, to ``PLAB_AUDIT_CHECKPOINT_FILE``
(fsynced; ship it off-box to keep them beyond the host). The public key is
written beside it (``<file>.pub``, PEM), so anyone can verify the signatures
without the private key.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import fcntl
import hashlib
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

CONTEXT = b"productionlab audit checkpoint v1"


def parse_signing_key(text: str) -> Ed25519PrivateKey:
    """An Ed25519 private key from PEM (PKCS#8) or a 32-byte seed in hex or base64.

    Raises ValueError with a message fit for a configuration error.
    """
    text = text.strip()
    if text.startswith("-----BEGIN"):
        try:
            key = serialization.load_pem_private_key(text.encode(), password=None)
        except (ValueError, TypeError) as exc:
            raise ValueError(f"not a readable unencrypted PEM private key ({exc})") from None
        if not isinstance(key, Ed25519PrivateKey):
            raise ValueError("the PEM key is not an Ed25519 key")
        return key
    seed: bytes | None = None
    with contextlib.suppress(ValueError):
        seed = bytes.fromhex(text)
    if seed is None or len(seed) != 32:
        with contextlib.suppress(binascii.Error, ValueError):
            seed = base64.b64decode(text + "=" * (-len(text) % 4), altchars=b"-_", validate=False)
    if seed is None or len(seed) != 32:
        raise ValueError("give a PEM Ed25519 key or a 32-byte seed as hex or base64")
    if len(set(seed)) < 8:
        raise ValueError("the seed is a pattern, not random bytes")
    return Ed25519PrivateKey.from_private_bytes(seed)


def public_pem(key: Ed25519PublicKey) -> str:
    return key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    ).decode()


def key_id(key: Ed25519PublicKey) -> str:
    raw = key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


@dataclass(frozen=True)
class Checkpoint:
    seq: int
    head: str
    first: int
    origin: int
    time: float
    key: str = ""
    sig: str = ""

    def message(self) -> bytes:
        fields = [str(self.seq), self.head, str(self.first), str(self.origin), f"{self.time:.3f}"]
        return CONTEXT + b"\n" + "\n".join(fields).encode()

    def signed(self, private: Ed25519PrivateKey) -> Checkpoint:
        signature = private.sign(self.message())
        return Checkpoint(
            self.seq,
            self.head,
            self.first,
            self.origin,
            self.time,
            key_id(private.public_key()),
            base64.b64encode(signature).decode(),
        )

    def valid_under(self, keys: dict[str, Ed25519PublicKey]) -> bool:
        public = keys.get(self.key)
        if public is None:
            return False
        try:
            public.verify(base64.b64decode(self.sig), self.message())
        except (InvalidSignature, binascii.Error, ValueError):
            return False
        return True

    def as_dict(self) -> dict:
        return {
            "seq": self.seq,
            "head": self.head,
            "first": self.first,
            "origin": self.origin,
            "time": round(self.time, 3),
            "key": self.key,
            "sig": self.sig,
        }


class CheckpointFile:
    """The append-only JSON-lines file of checkpoints, and its public key file."""

    def __init__(self, path: Path):
        self.path = path
        self.pub_path = path.with_name(path.name + ".pub")

    def append(self, checkpoint: Checkpoint, private: Ed25519PrivateKey) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._publish(private.public_key())
        line = (json.dumps(checkpoint.as_dict(), separators=(",", ":")) + "\n").encode()
        descriptor = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX)
            os.write(descriptor, line)
            os.fsync(descriptor)
        finally:
            os.close(descriptor)

    def _publish(self, public: Ed25519PublicKey) -> None:
        """Add the public key to ``<file>.pub`` unless it is there (keys are never removed,
        so checkpoints signed before a key change stay verifiable)."""
        pem = public_pem(public)
        existing = self.pub_path.read_text(encoding="utf-8") if self.pub_path.exists() else ""
        if pem not in existing:
            with open(self.pub_path, "a", encoding="utf-8") as handle:
                handle.write(pem)
                handle.flush()
                os.fsync(handle.fileno())

    def public_keys(self) -> dict[str, Ed25519PublicKey]:
        if not self.pub_path.exists():
            return {}
        keys = {}
        text = self.pub_path.read_text(encoding="utf-8")
        for block in text.split("-----END PUBLIC KEY-----"):
            if "-----BEGIN PUBLIC KEY-----" not in block:
                continue
            pem = block[block.index("-----BEGIN") :] + "-----END PUBLIC KEY-----\n"
            with contextlib.suppress(ValueError):
                key = serialization.load_pem_public_key(pem.encode())
                if isinstance(key, Ed25519PublicKey):
                    keys[key_id(key)] = key
        return keys

    def read(self) -> list[tuple[int, Checkpoint | None, str]]:
        """Every line as (line number, checkpoint or None if unreadable, raw line)."""
        if not self.path.exists():
            return []
        lines = []
        for number, line in enumerate(self.path.read_text(encoding="utf-8").splitlines(), 1):
            if not line.strip():
                continue
            try:
                data = json.loads(line)
                checkpoint = Checkpoint(
                    int(data["seq"]),
                    str(data["head"]),
                    int(data["first"]),
                    int(data["origin"]),
                    float(data["time"]),
                    str(data["key"]),
                    str(data["sig"]),
                )
            except (ValueError, KeyError, TypeError):
                checkpoint = None
            lines.append((number, checkpoint, line))
        return lines

    def latest(self) -> Checkpoint | None:
        readable = [c for _, c, _ in self.read() if c is not None]
        return readable[-1] if readable else None


def new_checkpoint(seq: int, head: str, first: int, origin: int) -> Checkpoint:
    # Rounded as stored: the signed text and the JSON line then agree exactly.
    return Checkpoint(seq, head, first, origin, round(time.time(), 3))
