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
# Format 2 signs the head of every chain at once (the main chain and each virtual
# shard's, issue 12 item 2): one line, one signature, ``{"v": 2, "chains": {...}}``.
CONTEXT_V2 = b"productionlab audit checkpoint v2"
MAIN_CHAIN = "main"


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


def signature_valid(keys: dict[str, Ed25519PublicKey], key: str, sig: str, message: bytes) -> bool:
    """Whether ``sig`` (base64) signs ``message`` under the key named ``key`` in ``keys``."""
    public = keys.get(key)
    if public is None:
        return False
    try:
        public.verify(base64.b64decode(sig), message)
    except (InvalidSignature, binascii.Error, ValueError):
        return False
    return True


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
        return signature_valid(keys, self.key, self.sig, self.message())

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


@dataclass(frozen=True)
class ChainHead:
    """One chain's part of a format-2 checkpoint (the fields of a format-1 one)."""

    seq: int
    head: str
    first: int
    origin: int


@dataclass(frozen=True)
class ChainCheckpoint(Checkpoint):
    """A format-2 checkpoint seen as one chain's checkpoint: its signature is the
    whole line's (``parent``), so it is valid exactly when the line is."""

    chain: str = MAIN_CHAIN
    parent: MultiCheckpoint | None = None

    def valid_under(self, keys: dict[str, Ed25519PublicKey]) -> bool:
        return self.parent is not None and self.parent.valid_under(keys)

    def as_dict(self) -> dict:
        return {**super().as_dict(), "chain": self.chain, "v": 2}


@dataclass(frozen=True)
class MultiCheckpoint:
    """Format 2: every chain's (seq, head, first, origin) signed together."""

    chains: tuple[tuple[str, ChainHead], ...]  # sorted by chain name
    time: float
    key: str = ""
    sig: str = ""

    def message(self) -> bytes:
        lines = [f"{name} {c.seq} {c.head} {c.first} {c.origin}" for name, c in sorted(self.chains)]
        return CONTEXT_V2 + b"\n" + "\n".join([*lines, f"{self.time:.3f}"]).encode()

    def signed(self, private: Ed25519PrivateKey) -> MultiCheckpoint:
        signature = base64.b64encode(private.sign(self.message())).decode()
        return MultiCheckpoint(self.chains, self.time, key_id(private.public_key()), signature)

    def valid_under(self, keys: dict[str, Ed25519PublicKey]) -> bool:
        return signature_valid(keys, self.key, self.sig, self.message())

    def for_chain(self, name: str) -> ChainCheckpoint | None:
        """This checkpoint as chain ``name``'s, or None when it does not cover it."""
        for chain, head in self.chains:
            if chain == name:
                return ChainCheckpoint(
                    head.seq, head.head, head.first, head.origin, self.time, self.key, self.sig,
                    chain, self,
                )  # fmt: skip
        return None

    def as_dict(self) -> dict:
        return {
            "v": 2,
            "chains": {
                name: {"seq": c.seq, "head": c.head, "first": c.first, "origin": c.origin}
                for name, c in sorted(self.chains)
            },
            "time": round(self.time, 3),
            "key": self.key,
            "sig": self.sig,
        }

    @classmethod
    def from_dict(cls, data: dict) -> MultiCheckpoint:
        chains = tuple(
            sorted(
                (
                    str(name),
                    ChainHead(int(c["seq"]), str(c["head"]), int(c["first"]), int(c["origin"])),
                )
                for name, c in data["chains"].items()
            )
        )
        return cls(chains, float(data["time"]), str(data["key"]), str(data["sig"]))


def new_multi_checkpoint(heads: dict[str, ChainHead]) -> MultiCheckpoint:
    return MultiCheckpoint(tuple(sorted(heads.items())), round(time.time(), 3))


class CheckpointFile:
    """The append-only JSON-lines file of checkpoints, and its public key file."""

    def __init__(self, path: Path):
        self.path = path
        self.pub_path = path.with_name(path.name + ".pub")

    def append(self, checkpoint: Checkpoint | MultiCheckpoint, private: Ed25519PrivateKey) -> None:
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

    def read(self) -> list[tuple[int, Checkpoint | MultiCheckpoint | None, str]]:
        """Every line as (line number, checkpoint or None if unreadable, raw line);
        a format-2 line is a :class:`MultiCheckpoint`."""
        if not self.path.exists():
            return []
        lines = []
        for number, line in enumerate(self.path.read_text(encoding="utf-8").splitlines(), 1):
            if not line.strip():
                continue
            try:
                data = json.loads(line)
                if isinstance(data, dict) and data.get("v") == 2:
                    lines.append((number, MultiCheckpoint.from_dict(data), line))
                    continue
                checkpoint = Checkpoint(
                    int(data["seq"]),
                    str(data["head"]),
                    int(data["first"]),
                    int(data["origin"]),
                    float(data["time"]),
                    str(data["key"]),
                    str(data["sig"]),
                )
            except (ValueError, KeyError, TypeError, AttributeError):
                checkpoint = None
            lines.append((number, checkpoint, line))
        return lines

    def latest(self, chain: str = MAIN_CHAIN) -> Checkpoint | None:
        """The newest readable checkpoint of ``chain`` (format 1 covers the main chain)."""
        readable = [c for _, line, _ in self.read() if (c := for_chain(line, chain)) is not None]
        return readable[-1] if readable else None


def for_chain(line: Checkpoint | MultiCheckpoint | None, chain: str) -> Checkpoint | None:
    """A line's checkpoint of ``chain``: a format-2 line's part, a format-1 line
    for the main chain, else None."""
    if isinstance(line, MultiCheckpoint):
        return line.for_chain(chain)
    if line is not None and chain == MAIN_CHAIN:
        return line
    return None


def new_checkpoint(seq: int, head: str, first: int, origin: int) -> Checkpoint:
    # Rounded as stored: the signed text and the JSON line then agree exactly.
    return Checkpoint(seq, head, first, origin, round(time.time(), 3))
