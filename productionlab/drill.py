"""The restore drill: back up (or take a backup file), restore it into a scratch
redis-server of our own (``redis_process.RedisProcess``: loopback, a random
password, AOF on, a 0700 temp dir removed afterwards) and compare key count and
digest with the backup and with the live data."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import redis

from productionlab.audit import Actor
from productionlab.backup import create_backup, restore_backup, verify_backup
from productionlab.backup_format import BackupError
from productionlab.backup_records import live_digest
from productionlab.redis_process import RedisProcess, RedisProcessError
from productionlab.shardbackup import ShardStore


@contextmanager
def scratch_redis() -> Iterator[redis.Redis]:
    """The drill's throwaway redis-server; a failure to start it is a BackupError."""
    try:
        server = RedisProcess()
    except RedisProcessError:
        raise BackupError("redis-server is not installed; the drill needs it") from None
    try:
        client = server.start()
    except RedisProcessError as exc:
        raise BackupError(f"the drill's redis-server did not start ({exc})") from None
    try:
        yield client
    finally:
        server.stop()


@dataclass(frozen=True)
class DrillReport:
    ok: bool
    backup: str
    backup_keys: int
    restored_keys: int
    live_keys: int
    backup_digest: str
    restored_digest: str
    live_digest: str
    seconds: float

    def lines(self) -> list[str]:
        verdict = "PASS" if self.ok else "FAIL"
        return [
            f"drill {verdict}: {self.backup}",
            f"  backup:   {self.backup_keys} keys, digest {self.backup_digest[:16]}",
            f"  restored: {self.restored_keys} keys, digest {self.restored_digest[:16]} "
            f"(temporary redis-server, AOF on)",
            f"  live:     {self.live_keys} keys, digest {self.live_digest[:16]}"
            + ("" if self.live_digest == self.backup_digest else " (changed since the backup)"),
            f"  took {self.seconds:.1f}s",
        ]

    def as_dict(self) -> dict:
        return {**self.__dict__, "lines": self.lines()}


def drill(
    client: redis.Redis,
    secret: str,
    directory: Path,
    *,
    path: Path | None = None,
    progress: bool = True,
) -> DrillReport:
    """Back up now (or take ``path``), restore into a temporary redis-server, and
    compare key count and digest with the backup and with the live data.

    Passes when the restored data equals the backup and the backup equals the
    live data (a store written to during the drill fails it: run it again, or
    drill an existing file, whose comparison with live data is only reported).
    """
    started = time.monotonic()
    fresh = path is None
    if path is None:
        summary = create_backup(client, secret, directory, progress=progress)
        path = summary.path
    contents = verify_backup(path, secret)
    with scratch_redis() as scratch:
        restore_backup(scratch, path, secret, Actor("drill"), overwrite=False, progress=progress)
        restored = live_digest(ShardStore().records(scratch))
        aof = scratch.info("persistence").get("aof_enabled")
    live = live_digest(ShardStore().records(client))
    matches_backup = restored.count == contents.keys and restored.hexdigest() == contents.digest
    ok = bool(matches_backup and aof)
    if ok and fresh:
        ok = live.count == contents.keys and live.hexdigest() == contents.digest
    return DrillReport(
        ok,
        path.name,
        contents.keys,
        restored.count,
        live.count,
        contents.digest,
        restored.hexdigest(),
        live.hexdigest(),
        time.monotonic() - started,
    )
