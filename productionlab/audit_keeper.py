"""The control plane's custody of the audit log: migrate, archive and trim, checkpoint,
verify. One object built from the settings, used by the background thread that
``productionlab serve cp`` starts, by the admin routes and by the CLI.

Each round of the thread: migrate the previous release's entries (once), archive
and trim when redis holds more than ``PLAB_AUDIT_MAX_ENTRIES`` (down to half of
it), and sign a checkpoint when the head moved since the last one.

Between rounds the thread also checks the log's length every second and archives
and trims as soon as it passes the bound: bulk writes append tens of thousands of
entries a second, so a log trimmed only every ``PLAB_AUDIT_CHECKPOINT_INTERVAL``
(300 s) could fill redis's ``maxmemory`` first, and every write would then be
refused until the next round.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path

import redis

from productionlab.audit import AUDIT_LIST, Actor, AuditLog
from productionlab.audit_archive import (
    Archive,
    LegacyResult,
    archive_and_trim,
    legacy_present,
    migrate_legacy,
)
from productionlab.audit_checkpoint import (
    Checkpoint,
    CheckpointFile,
    key_id,
    new_checkpoint,
    parse_signing_key,
)
from productionlab.audit_verify import VerifyResult, verify_log
from productionlab.settings import Settings
from productionlab.store.connection import REDIS_FAULTS

log = logging.getLogger("productionlab.audit")
KEEPER = Actor("audit-keeper")
LENGTH_CHECK_SECONDS = 1.0  # how often the thread compares the log's length with the bound


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

    def trim(self, actor: Actor, keep: int) -> tuple[int, int, Path | None]:
        """Archive (fsynced) then trim to the newest ``keep`` entries."""
        return archive_and_trim(self.client, self.archive, actor, keep)

    def checkpoint(self, force: bool = True) -> Checkpoint | None:
        """Sign the current head; unless ``force``, only if it moved since the last one."""
        if self.private is None:
            raise RuntimeError("PLAB_AUDIT_CHECKPOINT_KEY is not set")
        with self.archive.lock():  # no trim between reading redis and the archive
            snap = AuditLog(self.client).snapshot()
            origin = self.archive.origin() or snap.first
            latest = self.checkpoints.latest()
            if (
                not force
                and latest is not None
                and (latest.seq, latest.head)
                == (
                    snap.seq,
                    snap.head,
                )
            ):
                return None
            signed = new_checkpoint(snap.seq, snap.head, snap.first, origin).signed(self.private)
            self.checkpoints.append(signed, self.private)
            return signed

    def verify(self) -> VerifyResult:
        trusted = {}
        if self.private is not None:
            public = self.private.public_key()
            trusted[key_id(public)] = public
        with self.archive.lock():
            result = verify_log(
                self.client, self.archive, self.checkpoints, trusted, self.legacy_key
            )
        from productionlab.securitymetrics import record_audit_verification

        record_audit_verification(self.client, result.ok)  # for the control plane's gauges
        return result

    def trim_past_bound(self) -> None:
        """Archive and trim to half of ``PLAB_AUDIT_MAX_ENTRIES`` if the log holds more."""
        if self.max_entries and self.client.llen(AUDIT_LIST) > self.max_entries:
            dropped, first, path = self.trim(KEEPER, max(1, self.max_entries // 2))
            log.info("audit: archived %d entries to %s; redis keeps from %d", dropped, path, first)

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
