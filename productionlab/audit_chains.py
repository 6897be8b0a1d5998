"""Every audit chain of the virtual-shard layout (issue 12 item 2).

The main chain (``{plab}:audit``: users, tokens, auth events, and the KV
changes made before the migration) and one chain per shard (``layout.Shard.audit``:
the KV changes in that shard, appended by the same script as the change). A
format-2 checkpoint (``audit_checkpoint.MultiCheckpoint``) signs every chain's
head in one line; format-1 lines keep covering the main chain. Each chain is
verified by ``audit_verify.verify_log`` on its own, with its own archive.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import redis
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from productionlab.audit import AUDIT_KEYS, Actor, AuditLog
from productionlab.audit_archive import Archive, archive_and_trim
from productionlab.audit_checkpoint import (
    MAIN_CHAIN,
    ChainHead,
    CheckpointFile,
    MultiCheckpoint,
    new_multi_checkpoint,
)
from productionlab.audit_verify import VerifyResult, verify_log
from productionlab.settings.model import AUDIT_ARCHIVERS
from productionlab.store.layout import all_shards


def chain_name(number: int) -> str:
    """Shard ``number``'s chain in checkpoints and reports: ``s00`` .. ``s15``."""
    return f"s{number:02d}"


def chain_keys() -> dict[str, tuple[str, str]]:
    """Every chain's list and meta keys, by name (the main chain first)."""
    return {MAIN_CHAIN: AUDIT_KEYS, **{chain_name(s.number): s.audit for s in all_shards()}}


def chain_lengths(client: redis.Redis) -> dict[str, int]:
    """Every chain's length in one round trip (one per master on a cluster): the
    keeper asks every second, while bulk writes may keep redis busy."""
    keys = chain_keys()
    pipe = client.pipeline(transaction=False)
    for list_key, _ in keys.values():
        pipe.llen(list_key)
    return {name: int(length) for name, length in zip(keys, pipe.execute(), strict=True)}


def heads(client: redis.Redis, archives: Callable[[str], Archive]) -> dict[str, ChainHead]:
    """Every chain's head now (``origin``: where its kept chain begins, archive included)."""
    found = {}
    for name, keys in chain_keys().items():
        snap = AuditLog(client, keys).snapshot()
        found[name] = ChainHead(
            snap.seq, snap.head, snap.first, archives(name).origin() or snap.first
        )
    return found


def checkpoint_every_chain(
    client: redis.Redis,
    archives: Callable[[str], Archive],
    checkpoints: CheckpointFile,
    private: Ed25519PrivateKey,
) -> MultiCheckpoint:
    """Sign every chain's head in one format-2 line and append it."""
    signed = new_multi_checkpoint(heads(client, archives)).signed(private)
    checkpoints.append(signed, private)
    return signed


def verify_every_chain(
    client: redis.Redis,
    archives: Callable[[str], Archive],
    checkpoints: CheckpointFile,
    trusted: dict[str, Ed25519PublicKey],
    legacy_key: bytes | None = None,
) -> dict[str, VerifyResult]:
    """Each chain verified on its own, by name, under its archive's lock: no trim
    moves its entries from redis to the archive while they are read. Only the chain
    being verified is locked, so the keeper goes on trimming the others (a
    verification reads the whole archive and may take long)."""
    results = {}
    for name, keys in chain_keys().items():
        archive = archives(name)
        with archive.lock():
            results[name] = verify_log(
                client,
                archive,
                checkpoints,
                trusted,
                legacy_key if name == MAIN_CHAIN else None,
                log=AuditLog(client, keys),
                chain=name,
            )
    return results


def trim_every_chain(
    client: redis.Redis,
    archives: Callable[[str], Archive],
    actor: Actor,
    keep: int,
    only: set[str] | None = None,
) -> dict[str, tuple[int, int, Path | None]]:
    """Archive-then-trim each chain (or those named in ``only``) into its own archive,
    keeping its newest ``keep`` entries: (entries dropped, first sequence number left
    in redis, segment) by chain (the trim's own entry is in that chain).

    ``AUDIT_ARCHIVERS`` chains at once, each on its own connection; a chain's archive
    lock keeps any other archiver off it. If one chain fails, its error is raised once
    the others are done: their trims stand, each recorded in its own chain."""
    with ThreadPoolExecutor(AUDIT_ARCHIVERS, thread_name_prefix="audit-archiver") as pool:
        running = {
            name: pool.submit(archive_and_trim, client, archives(name), actor, keep, log_keys=keys)
            for name, keys in chain_keys().items()
            if only is None or name in only
        }
        return {name: future.result() for name, future in running.items()}
