"""The audit log's archive: old entries move from redis to files, then redis is trimmed.

Order is what makes it safe: the entries are written to a new segment file,
fsynced and renamed into place (and the directory fsynced) *before* the
control plane trims them from redis, in a script that checks the list still
starts where the segment ends. A crash in between leaves a segment whose
entries are also still in redis; the next trim writes the same segment again.

A segment ``audit-<first>-<last>.jsonl`` holds one stored entry per line, as a
JSON string of its exact bytes (entries are hashed as stored, so the archive
keeps them byte for byte). Verification reads the segments, then redis: the
first entry left in redis links (``prev``) to the last archived one.

The previous release's entries (HMAC chained) are archived the same way by
:func:`migrate_legacy`, with their verification result beside them.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import redis

from productionlab.audit import (
    AUDIT_KEYS,
    AUDIT_LIST,
    AUDIT_META,
    MIGRATE_ACTION,
    TRIM_ACTION,
    Actor,
    AuditLog,
    entry_hash,
    is_legacy,
    legacy_entry_mac,
    parse_entry,
)
from productionlab.files import write_atomic
from productionlab.luascripts import script

SEGMENT_RE = re.compile(r"\Aaudit-(\d{12})-(\d{12})\.jsonl\Z")
LEGACY_REPORT = "legacy-verification.json"

# Drops the archived entries (only the control plane's redis user may run it).
AUDIT_TRIM = script("audit_trim")


class ArchiveError(Exception):
    """The archive cannot be written or the log moved underneath; nothing was trimmed."""


@dataclass(frozen=True)
class Segment:
    first: int
    last: int
    path: Path

    def raws(self) -> list[bytes]:
        return [
            json.loads(line).encode("utf-8", "surrogateescape")
            for line in self.path.read_text(encoding="utf-8").splitlines()
            if line
        ]


class Archive:
    """The directory of archived segments (``PLAB_AUDIT_ARCHIVE_DIR``)."""

    def __init__(self, directory: Path):
        self.directory = directory

    def segments(self) -> list[Segment]:
        if not self.directory.is_dir():
            return []
        found = []
        for path in self.directory.iterdir():
            match = SEGMENT_RE.match(path.name)
            if match:
                found.append(Segment(int(match.group(1)), int(match.group(2)), path))
        return sorted(found, key=lambda s: (s.first, s.last))

    def origin(self) -> int | None:
        """The first archived sequence number, if anything is archived."""
        segments = self.segments()
        return segments[0].first if segments else None

    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        """One archiver at a time on this host (the keeper thread, the CLI, the route)."""
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        with open(self.directory / ".lock", "w") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            yield

    def write(self, first: int, raws: list[bytes], name: str | None = None) -> Path:
        """Write a segment durably: temp file, fsync, rename, fsync the directory."""
        last = first + len(raws) - 1
        path = self.directory / (name or f"audit-{first:012d}-{last:012d}.jsonl")
        body = "".join(
            json.dumps(raw.decode("utf-8", "surrogateescape")) + "\n" for raw in raws
        ).encode()
        write_durably(path, body)
        return path


def write_durably(path: Path, body: bytes) -> None:
    write_atomic(path, body, 0o600, dir_mode=0o700)
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)


def archive_and_trim(
    client: redis.Redis,
    archive: Archive,
    actor: Actor,
    keep: int,
    *,
    action: str = TRIM_ACTION,
    log_keys: tuple[str, str] = AUDIT_KEYS,
) -> tuple[int, int, Path | None]:
    """Archive all but the newest ``keep`` entries, then trim them from redis
    (``log_keys``: the chain, the main one by default; a virtual shard's chain has
    an archive of its own).

    Returns (entries dropped, first sequence number left in redis, segment path).
    """
    if keep < 1:
        raise ValueError("keep at least one entry")
    log = AuditLog(client, log_keys)
    with archive.lock():
        snap = log.snapshot()
        drop = snap.length - keep
        if drop <= 0:
            return 0, 0, None
        raws = list(log.iter_raw(0, drop - 1))
        if len(raws) != drop:
            raise ArchiveError("the audit log changed while it was read")
        path = archive.write(snap.first, raws)
        new_first = snap.first + drop
        _trim(
            client,
            actor,
            snap.first,
            drop,
            entry_hash(raws[-1]),
            action,
            f"first:{new_first}",
            log_keys=log_keys,
        )
        return drop, new_first, path


def _trim(
    client: redis.Redis,
    actor: Actor,
    expected_first: int,
    drop: int,
    last_hash: str,
    action: str,
    target: str,
    outcome: str = "ok",
    log_keys: tuple[str, str] = AUDIT_KEYS,
) -> list:
    try:
        return AUDIT_TRIM(
            client,
            keys={"audit": log_keys},
            args={
                "audit": actor.audit_args(),
                "expected_first": expected_first,
                "drop": drop,
                "last_hash": last_hash,
                "action": action,
                "target": target,
                "outcome": outcome,
            },
        )
    except redis.ResponseError as exc:
        if "audit log moved" in str(exc):
            raise ArchiveError(str(exc)) from None
        raise


# --- migration from the previous release ------------------------------------------
def legacy_present(client: redis.Redis) -> bool:
    """Is there anything of the previous release's HMAC chain left in redis?"""
    if client.hexists(AUDIT_META, "mac") or client.hexists(AUDIT_META, "seq"):
        return True
    first = client.lindex(AUDIT_LIST, 0)
    return first is not None and is_legacy(parse_entry(first))


@dataclass(frozen=True)
class LegacyResult:
    ok: bool | None  # None: not checked (no key)
    checked: int
    first: int
    last: int
    reason: str = ""

    @property
    def outcome(self) -> str:
        return {True: "ok", False: "failed", None: "unverified"}[self.ok]


def verify_legacy(raws: list[bytes], key: bytes | None, meta: dict[str, str]) -> LegacyResult:
    """The previous release's verification: sequence, chain, MACs, the recorded head."""
    first = int(meta.get("first") or 1)
    last = first + len(raws) - 1
    if key is None:
        return LegacyResult(None, 0, first, last, "PLAB_AUDIT_KEY is not set: MACs not checked")
    prev = meta.get("first_prev", "")
    recorded_first = 1
    for index, raw in enumerate(raws):
        entry = parse_entry(raw)
        seq = first + index
        if entry.get("seq") != seq:
            return LegacyResult(False, index, first, last, f"seq {seq}: sequence does not match")
        if entry.get("prev", "") != prev:
            return LegacyResult(False, index, first, last, f"seq {seq}: chain broken")
        if not _mac_ok(key, entry):
            return LegacyResult(False, index, first, last, f"seq {seq}: MAC does not match")
        if entry.get("action") == TRIM_ACTION:
            recorded_first = _trimmed_to(str(entry.get("target", "")))
        prev = entry["mac"]
    if first > 1 and recorded_first != first:
        return LegacyResult(False, len(raws), first, last, f"no trim to {first} is recorded")
    if "seq" in meta and int(meta["seq"]) != last:
        return LegacyResult(False, len(raws), first, last, f"head says {meta['seq']}, log ends")
    if raws and meta.get("mac", prev) != prev:
        return LegacyResult(False, len(raws), first, last, "last MAC does not match the head")
    return LegacyResult(True, len(raws), first, last)


def _mac_ok(key: bytes, entry: dict) -> bool:
    import hmac

    return hmac.compare_digest(legacy_entry_mac(key, entry), str(entry.get("mac", "")))


def _trimmed_to(target: str) -> int:
    try:
        return int(target.removeprefix("first:"))
    except ValueError:
        return -1


def migrate_legacy(
    client: redis.Redis, archive: Archive, key: bytes | None, actor: Actor
) -> LegacyResult | None:
    """Archive the previous release's entries with their verification result and
    continue the new chain after them (an ``audit.migrate`` entry records it).

    Entries appended by the new code before this ran already link to the last
    legacy entry; they stay in redis. Returns None when there is nothing to migrate.
    """
    with archive.lock():
        if not legacy_present(client):
            return None
        meta = {k.decode(): v.decode() for k, v in client.hgetall(AUDIT_META).items()}
        log = AuditLog(client)
        raws: list[bytes] = []
        for raw in log.iter_raw():
            if not is_legacy(parse_entry(raw)):
                break
            raws.append(raw)
        result = verify_legacy(raws, key, meta)
        first = int(meta.get("first") or 1)
        if raws:
            path = archive.write(first, raws)
            report = {
                "segment": path.name,
                "first": result.first,
                "last": result.last,
                "ok": result.ok,
                "checked": result.checked,
                "reason": result.reason,
                "meta": meta,
                "migrated_at": round(time.time(), 3),
            }
            write_durably(
                archive.directory / LEGACY_REPORT, (json.dumps(report, indent=1) + "\n").encode()
            )
        _trim(
            client,
            actor,
            first,
            len(raws),
            entry_hash(raws[-1]) if raws else "",
            MIGRATE_ACTION,
            f"legacy:{first}-{first + len(raws) - 1}",
            result.outcome,
        )
        return result


def legacy_report(archive: Archive) -> dict | None:
    path = archive.directory / LEGACY_REPORT
    if not path.is_file():
        return None
    return json.loads(path.read_text(encoding="utf-8"))
