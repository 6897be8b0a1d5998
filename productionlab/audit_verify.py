"""Verify the whole audit log: the archive, then redis, against every checkpoint.

Reported with the first bad sequence number:

- an entry that is not an entry, or holds anything but plain token fields;
- a sequence number out of place (deleted, inserted or reordered entries);
- a broken link: an entry's ``prev`` is not the hash of the entry before it
  (the earlier one was changed, or the link was);
- a gap between archive segments, or between the archive and redis;
- a checkpoint whose entry is gone (truncation: the log ends before it, or
  starts after where it began), or hashes differently (rewritten and relinked);
- a checkpoint whose signature does not verify (forged or damaged).

Entries after the newest checkpoint are checked as a chain only: a full-rights
attacker can drop or rewrite that tail undetected until a checkpoint covers it.
"""

from __future__ import annotations

import hmac
from collections.abc import Iterator
from dataclasses import dataclass, field

import redis
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from productionlab.audit import (
    ENTRY_FIELDS,
    SAFE_FIELD,
    AuditLog,
    entry_hash,
    is_legacy,
    legacy_entry_mac,
    parse_entry,
)
from productionlab.audit_archive import Archive
from productionlab.audit_checkpoint import MAIN_CHAIN, CheckpointFile, for_chain


@dataclass
class VerifyResult:
    ok: bool
    checked: int
    first_bad_seq: int | None = None
    first_bad_index: int | None = None
    reason: str = ""
    archived: int = 0
    first: int = 1
    last: int = 0
    checkpoints: int = 0
    latest_checkpoint: dict | None = None
    legacy: str = ""
    problems: list[str] = field(default_factory=list)
    chain: str = "main"  # the chain these numbers are about
    chains: dict[str, dict] = field(default_factory=dict)  # every chain's verdict, by name

    def as_dict(self) -> dict:
        return {
            "chain": self.chain,
            "chains": self.chains,
            "ok": self.ok,
            "checked": self.checked,
            "first_bad_seq": self.first_bad_seq,
            "first_bad_index": self.first_bad_index,
            "reason": self.reason,
            "archived": self.archived,
            "first": self.first,
            "last": self.last,
            "checkpoints": self.checkpoints,
            "latest_checkpoint": self.latest_checkpoint,
            "legacy": self.legacy,
            "problems": self.problems[:20],
        }


@dataclass
class _Problems:
    found: list[tuple[int | None, str]] = field(default_factory=list)

    def add(self, seq: int | None, reason: str) -> None:
        self.found.append((seq, reason))

    def first(self) -> tuple[int | None, str]:
        with_seq = [p for p in self.found if p[0] is not None]
        return min(with_seq, key=lambda p: p[0]) if with_seq else self.found[0]


def _elements(
    archive: Archive, log: AuditLog, problems: _Problems
) -> Iterator[tuple[int, bytes, int | None]]:
    """(position seq, stored bytes, redis list index or None) for the archive, then redis."""
    expected: int | None = None
    for segment in archive.segments():
        if expected is not None and segment.first != expected:
            if segment.first > expected:
                problems.add(expected, f"entries {expected}..{segment.first - 1} are missing")
            else:
                problems.add(segment.first, f"archive segments overlap at {segment.first}")
        raws = segment.raws()
        if len(raws) != segment.last - segment.first + 1:
            problems.add(segment.first, f"archive segment {segment.path.name} is incomplete")
        for offset, raw in enumerate(raws):
            yield segment.first + offset, raw, None
        expected = segment.first + len(raws)
    snap = log.snapshot()
    if expected is not None and snap.first != expected:
        if snap.first > expected:
            problems.add(expected, f"entries {expected}..{snap.first - 1} are missing")
        else:
            problems.add(snap.first, f"redis holds entries from {snap.first}, already archived")
    for index, raw in enumerate(log.iter_raw(0, snap.length - 1)):
        yield snap.first + index, raw, index


def verify_log(
    client: redis.Redis,
    archive: Archive,
    checkpoints: CheckpointFile,
    trusted: dict[str, Ed25519PublicKey],
    legacy_key: bytes | None = None,
    log: AuditLog | None = None,
    chain: str = MAIN_CHAIN,
) -> VerifyResult:
    """Verify one chain (``log``, the main chain by default; ``chain`` its name in
    format-2 checkpoints) against its archive and the checkpoints that cover it."""
    problems = _Problems()
    keys = {**checkpoints.public_keys(), **trusted}
    valid = []
    for number, line, _ in checkpoints.read():
        checkpoint = for_chain(line, chain)
        if line is None:
            problems.add(None, f"checkpoint line {number} is unreadable")
        elif checkpoint is None:
            continue  # a line that does not cover this chain
        elif not checkpoint.valid_under(keys):
            problems.add(checkpoint.seq, f"checkpoint line {number}: signature does not verify")
        else:
            valid.append(checkpoint)
    wanted = {c.seq for c in valid}
    hashes: dict[int, str] = {}
    redis_index: dict[int, int] = {}
    log = log or AuditLog(client)  # the main chain unless told another
    checked = archived = 0
    origin: int | None = None
    last = 0
    prev_raw: bytes | None = None
    prev_seq = 0
    prev_mac: str | None = None
    legacy_count = 0
    seen_new = False
    for seq, raw, index in _elements(archive, log, problems):
        if origin is None:
            origin = seq
        if index is None:
            archived += 1
        else:
            redis_index[seq] = index
        if seq in wanted:
            hashes[seq] = entry_hash(raw)
        entry = parse_entry(raw)
        if prev_raw is not None and seq != prev_seq + 1:
            prev_raw = None  # a gap, reported already: start a new chain here
        if "invalid" in entry:
            problems.add(seq, f"seq {seq} is not an audit entry")
        elif is_legacy(entry):
            legacy_count += 1
            if seen_new:
                problems.add(seq, f"seq {seq} is a legacy entry after the migration")
            elif entry.get("seq") != seq:
                problems.add(seq, f"sequence {entry.get('seq')!r} where {seq} was expected")
            elif prev_mac is not None and entry.get("prev") != prev_mac:
                problems.add(seq - 1, f"legacy chain broken between {seq - 1} and {seq}")
            elif legacy_key is not None and not hmac.compare_digest(
                legacy_entry_mac(legacy_key, entry), str(entry.get("mac"))
            ):
                problems.add(seq, f"legacy MAC of {seq} does not match")
            prev_mac = str(entry.get("mac"))
        else:
            prev_mac, seen_new = None, True
            if entry.get("seq") != seq:
                problems.add(seq, f"sequence {entry.get('seq')!r} where {seq} was expected")
            elif set(entry) != ENTRY_FIELDS or not all(
                isinstance(entry[f], str) and SAFE_FIELD.match(entry[f])
                for f in ENTRY_FIELDS - {"seq", "prev"}
            ):
                problems.add(seq, f"seq {seq} has fields an entry never holds")
            elif prev_raw is not None and entry.get("prev") != entry_hash(prev_raw):
                problems.add(
                    seq - 1,
                    f"seq {seq - 1} does not hash to what seq {seq} recorded (changed or relinked)",
                )
            elif prev_raw is None and seq == 1 and entry.get("prev") != "":
                problems.add(seq, "seq 1 links to something before it")
        prev_raw, prev_seq, last = raw, seq, seq
        checked += 1
    origin = origin if origin is not None else log.snapshot().first
    if last == 0:
        last = origin - 1
    confirmed: list[int] = []
    for checkpoint in sorted(valid, key=lambda c: c.seq):
        if checkpoint.seq > last:
            problems.add(
                last + 1,
                f"truncated: the log ends at {last} but a checkpoint covers {checkpoint.seq}",
            )
        elif checkpoint.seq >= 1 and checkpoint.origin < origin:
            problems.add(
                checkpoint.origin,
                f"entries from {checkpoint.origin} covered by a checkpoint are gone "
                f"(the log now starts at {origin})",
            )
        elif checkpoint.seq >= origin and hashes.get(checkpoint.seq) != checkpoint.head:
            since = max([s for s in confirmed if s < checkpoint.seq], default=origin - 1) + 1
            problems.add(
                since,
                f"entries {since}..{checkpoint.seq} differ from the checkpoint of "
                f"{checkpoint.seq} (rewritten)",
            )
        else:
            confirmed.append(checkpoint.seq)
    result = VerifyResult(
        ok=not problems.found,
        checked=checked,
        archived=archived,
        first=origin,
        last=last,
        checkpoints=len(valid),
        latest_checkpoint=valid[-1].as_dict() if valid else None,
        legacy=(
            f"{legacy_count} legacy entries, "
            + ("MACs checked" if legacy_key is not None else "MACs not checked (no PLAB_AUDIT_KEY)")
            if legacy_count
            else ""
        ),
        problems=[
            f"{seq}: {reason}" if seq is not None else reason for seq, reason in problems.found
        ],
    )
    if problems.found:
        seq, reason = problems.first()
        result.first_bad_seq = seq
        result.first_bad_index = redis_index.get(seq) if seq is not None else None
        result.reason = reason
    return result
