"""The control plane's custody of the audit log: migrate, archive and trim, checkpoint,
verify. One object built from the settings, used by the background thread that
``productionlab serve cp`` starts, by the admin routes and by the CLI.

The log is several chains (``audit_chains``: ``main`` and one per virtual shard);
the keeper covers every one: a checkpoint signs every chain's head in one
format-2 line, verification checks each chain with its own archive (the main
chain's in ``PLAB_AUDIT_ARCHIVE_DIR``, a shard's in its subdirectory ``sNN``), a
trim archives-then-trims each chain.

Each round of the thread: migrate the previous release's entries (once), archive
and trim when the whole log holds more than ``PLAB_AUDIT_MAX_ENTRIES`` (the
longest chains, down to one length that leaves half the bound), and sign a
checkpoint when a head moved since the last one.

Between rounds the thread also checks the log's length every second and archives
and trims as soon as it passes the bound: bulk writes append tens of thousands of
entries a second, so a log trimmed only every ``PLAB_AUDIT_CHECKPOINT_INTERVAL``
(300 s) could fill redis's ``maxmemory`` first, and every write would then be
refused until the next round.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path

import redis

from productionlab.audit import Actor, AuditLog
from productionlab.audit_archive import (
    Archive,
    LegacyResult,
    legacy_present,
    migrate_legacy,
)
from productionlab.audit_chains import (
    chain_keys,
    chain_lengths,
    checkpoint_every_chain,
    trim_every_chain,
    verify_every_chain,
)
from productionlab.audit_checkpoint import (
    MAIN_CHAIN,
    CheckpointFile,
    MultiCheckpoint,
    key_id,
    parse_signing_key,
)
from productionlab.audit_verify import VerifyResult
from productionlab.settings import Settings
from productionlab.store.connection import REDIS_FAULTS

log = logging.getLogger("productionlab.audit")
KEEPER = Actor("audit-keeper")
LENGTH_CHECK_SECONDS = 1.0  # how often the thread compares the log's length with the bound


def _reason(problem: str) -> str:
    """A problem without its leading sequence number ("12: checkpoint line 3: ...")."""
    head, _, rest = problem.partition(": ")
    return rest if head.isdigit() else problem


def combined(results: dict[str, VerifyResult]) -> VerifyResult:
    """One verdict over every chain (see :meth:`AuditKeeper.verify`)."""
    main = results[MAIN_CHAIN]
    failing = [name for name, r in results.items() if not r.ok]
    shown_name = failing[0] if failing and main.ok else MAIN_CHAIN
    shown = results[shown_name]
    problems = list(main.problems)
    said = {_reason(p) for p in problems}
    for name, result in results.items():
        for problem in result.problems if name != MAIN_CHAIN else ():
            # A checkpoint line's own problem (a forged line) is found by every chain.
            if _reason(problem) not in said:
                said.add(_reason(problem))
                problems.append(f"chain {name}: {problem}")
    return dataclasses.replace(
        shown,
        ok=not failing,
        chain=shown_name,
        problems=problems,
        chains={
            name: {
                "ok": r.ok,
                "checked": r.checked,
                "first_bad_seq": r.first_bad_seq,
                "reason": r.reason,
            }
            for name, r in results.items()
        },
    )


def checkpoint_summary(checkpoint: MultiCheckpoint) -> dict:
    """What the route and the CLI answer: the main chain's head at the top (as a
    format-1 checkpoint read), every chain's under ``chains``."""
    body = checkpoint.as_dict()
    main = body["chains"].get(MAIN_CHAIN, {})
    return {**main, **body}


def trim_level(lengths: list[int], budget: int) -> int:
    """The length to cut the longest chains to so that all chains together hold
    at most ``budget`` entries (at least 1 each): chains already shorter keep
    every entry, so a quiet chain is not trimmed because a busy one grew."""
    remaining = budget
    ordered = sorted(lengths)
    for index, length in enumerate(ordered):
        left = len(ordered) - index
        if length * left > remaining:
            return max(1, remaining // left)
        remaining -= length
    return max(1, max(ordered, default=1))


class AuditKeeper:
    def __init__(self, settings: Settings, client: redis.Redis):
        self.settings = settings
        self.client = client
        self.archive = Archive(settings.audit_archive_path)
        self.checkpoints = CheckpointFile(settings.audit_checkpoint_path)
        self.private = (
            parse_signing_key(settings.audit_checkpoint_key)
            if settings.audit_checkpoint_key
            else None
        )
        self.legacy_key = settings.audit_key.encode() if settings.audit_key else None
        self.max_entries = settings.audit_max_entries
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # --- operations ------------------------------------------------------------------
    def migrate(self, actor: Actor = KEEPER) -> LegacyResult | None:
        result = migrate_legacy(self.client, self.archive, self.legacy_key, actor)
        if result is not None:
            log.warning(
                "audit: archived the previous release's entries %s..%s (verification: %s%s)",
                result.first,
                result.last,
                result.outcome,
                f", {result.reason}" if result.reason else "",
            )
        return result

    def archive_of(self, chain: str) -> Archive:
        """The chain's archive: the main chain's directory, a shard's subdirectory in it."""
        if chain == MAIN_CHAIN:
            return self.archive
        return Archive(self.archive.directory / chain)

    def trim(self, actor: Actor, keep: int) -> tuple[int, int, Path | None]:
        """Archive (fsynced) then trim every chain to its newest ``keep`` entries;
        answers the main chain's (dropped, first, segment)."""
        trimmed = self.trim_chains(actor, keep)
        return trimmed[MAIN_CHAIN]

    def trim_chains(
        self, actor: Actor, keep: int, only: set[str] | None = None
    ) -> dict[str, tuple[int, int, Path | None]]:
        """Archive-then-trim each chain (or those in ``only``) into its own archive."""
        return trim_every_chain(self.client, self.archive_of, actor, keep, only)

    def checkpoint(self, force: bool = True) -> MultiCheckpoint | None:
        """Sign every chain's head in one line; unless ``force``, only if one moved."""
        if self.private is None:
            raise RuntimeError("PLAB_AUDIT_CHECKPOINT_KEY is not set")
        with contextlib.ExitStack() as held:  # no trim between reading redis and an archive
            for name in chain_keys():
                held.enter_context(self.archive_of(name).lock())
            if not force and not self._heads_moved():
                return None
            return checkpoint_every_chain(
                self.client, self.archive_of, self.checkpoints, self.private
            )

    def _heads_moved(self) -> bool:
        for name, keys in chain_keys().items():
            latest = self.checkpoints.latest(name)
            snap = AuditLog(self.client, keys).snapshot()
            if latest is None or (latest.seq, latest.head) != (snap.seq, snap.head):
                if latest is not None or snap.seq > 0:
                    return True
        return False

    def verify(self) -> VerifyResult:
        """Every chain verified on its own; ok only if all are. The answer's numbers
        are the main chain's unless another chain fails (then that chain's, named by
        ``chain``); ``chains`` holds every chain's verdict."""
        trusted = {}
        if self.private is not None:
            public = self.private.public_key()
            trusted[key_id(public)] = public
        results = verify_every_chain(
            self.client, self.archive_of, self.checkpoints, trusted, self.legacy_key
        )
        result = combined(results)
        from productionlab.securitymetrics import record_audit_verification

        record_audit_verification(self.client, result.ok)  # for the control plane's gauges
        return result

    def trim_past_bound(self) -> None:
        """When the whole log (every chain together) holds more than
        ``PLAB_AUDIT_MAX_ENTRIES``, archive and trim the longest chains to one
        length (:func:`trim_level`) that leaves half the bound in redis. A bound
        per chain would let redis hold one bound per chain (17 with the virtual
        shards: ~220 MB of entries at the default, most of a 256 MB redis)."""
        if not self.max_entries:
            return
        lengths = chain_lengths(self.client)
        if sum(lengths.values()) <= self.max_entries:
            return
        keep = trim_level(list(lengths.values()), self.max_entries // 2)
        over = {name for name, length in lengths.items() if length > keep}
        for name, (dropped, first, path) in self.trim_chains(KEEPER, keep, over).items():
            log.info(
                "audit: chain %s: archived %d entries to %s; redis keeps from %d",
                name,
                dropped,
                path,
                first,
            )

    def tick(self) -> None:
        """One round: migrate, archive and trim past the bound, checkpoint."""
        if legacy_present(self.client):
            self.migrate()
        self.trim_past_bound()
        if self.private is not None:
            self.checkpoint(force=False)

    # --- the background thread -----------------------------------------------------------
    def start(self) -> threading.Thread:
        """Run :meth:`tick` now (in the caller), then every
        ``PLAB_AUDIT_CHECKPOINT_INTERVAL`` seconds in a daemon thread, which also
        trims as soon as the log passes its bound (checked every second)."""
        self.safe_tick()
        self._thread = threading.Thread(target=self._run, name="audit-keeper", daemon=True)
        self._thread.start()
        return self._thread

    def stop(self) -> None:
        self._stop.set()

    def safe_tick(self) -> None:
        self._safely(self.tick)

    def _safely(self, step: Callable[[], None], level: int = logging.WARNING) -> None:
        try:
            step()
        except (*REDIS_FAULTS, OSError, RuntimeError) as exc:
            log.log(level, "audit keeper: %s: %s (retrying)", type(exc).__name__, exc)
        except Exception:  # the thread must outlive any one failed round
            log.exception("audit keeper round failed")

    def _run(self) -> None:
        interval = self.settings.audit_checkpoint_interval
        next_round = time.monotonic() + interval
        while not self._stop.wait(min(LENGTH_CHECK_SECONDS, interval)):
            if time.monotonic() >= next_round:
                self.safe_tick()
                next_round = time.monotonic() + interval
            else:
                # Quiet: while redis is away this fails every second; the round warns.
                self._safely(self.trim_past_bound, logging.DEBUG)
