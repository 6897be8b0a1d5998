"""The one wiring: build a plane's :class:`~productionlab.services.Services`.

Both planes' ``create_app`` (through factory.py), ``serve`` and the operator
CLI build their services here, so a limit, a key or a pool size is wired the
same way everywhere. Building has no side effects: no thread is started and
redis is not contacted (a cluster URL excepted: its client discovers the nodes
when made). What runs in the background (the user-event listener, the audit
keeper) is started by the server that serves the app (serve.py).
"""

from __future__ import annotations

import redis

from productionlab.audit import AuditLog
from productionlab.kv import Quota
from productionlab.lastused import LastUsed
from productionlab.loginguard import failure_guard
from productionlab.metrics import Metrics, RedisMemoryCollector
from productionlab.ratelimit import UserLimit
from productionlab.securitymetrics import RecoveryCollector, SecurityMetrics
from productionlab.services import Services
from productionlab.settings import Settings
from productionlab.shardbatch import ShardBatches
from productionlab.shardkv import ShardedKV
from productionlab.shardmigrate import LayoutGate
from productionlab.shardwatch import ShardWatchStore
from productionlab.store.connection import connect
from productionlab.store.durability import Durability
from productionlab.tokens import build_service
from productionlab.users import UserStore
from productionlab.watch import ChangeFeed, Watches, WatchSlots


def build_users(settings: Settings, client: redis.Redis) -> UserStore:
    """The user store; only the control plane renders the edge's htpasswd."""
    return UserStore(
        client,
        cache_secret=settings.secret_key.encode(),
        cache_seconds=settings.verify_cache_seconds,
        htpasswd_path=settings.htpasswd_path if settings.plane == "cp" else None,
        verify_concurrency=settings.verify_concurrency,
        verify_retry_after=settings.verify_retry_after,
    )


def build_metrics(settings: Settings, client: redis.Redis) -> tuple[Metrics, SecurityMetrics]:
    """The plane's Prometheus registry with its collectors (none asks redis until scraped)."""
    metrics = Metrics(settings.plane)
    metrics.redis_memory = RedisMemoryCollector(lambda: client, settings.plane)
    metrics.registry.register(metrics.redis_memory)
    security = SecurityMetrics(metrics.registry, settings.plane)
    if settings.plane == "cp":
        metrics.registry.register(RecoveryCollector(client, settings))
    return metrics, security


def build_watches(client: redis.Redis, max_per_process: int, prefix_keys: int) -> Watches:
    """The watches' states on the shards, this process's change feed, its bound."""
    store = ShardWatchStore(client, prefix_keys)
    return Watches(store, ChangeFeed(client, store), WatchSlots(max_per_process))


def build_services(
    settings: Settings, client: redis.Redis | None = None, pool_size: int | None = None
) -> Services:
    """Everything ``settings`` configure that does not need a Flask app."""
    client = client or connect(settings, pool_size=pool_size)
    durability = Durability(
        client,
        strict=settings.strict_durability,
        fsync_when_possible=settings.plane == "cp",
        replicated=settings.replicated_durability,
        replica_timeout_ms=settings.replica_timeout_ms,
    )
    quota = Quota(settings.user_max_keys, settings.user_max_bytes)
    kv = ShardedKV(client, durability, quota)
    users = build_users(settings, client)
    metrics, security = build_metrics(settings, client)
    watches = build_watches(client, settings.watch_max_per_process, settings.watch_prefix_keys)
    metrics.watches_held.labels(settings.plane).set_function(lambda: watches.slots.holding)
    console_sessions = None
    if settings.plane == "cp" and settings.console:
        from productionlab.console.sessions import SessionStore

        console_sessions = SessionStore(
            client, settings.secret_key, settings.console_idle, settings.console_lifetime
        )
    return Services(
        settings=settings,
        redis=client,
        durability=durability,
        quota=quota,
        kv=kv,
        batches=ShardBatches(kv),
        audit=AuditLog(client),
        users=users,
        lastused=LastUsed(client),
        guard=failure_guard(settings, client),
        user_limit=UserLimit(client, settings.user_rate, settings.rate_limits_enabled),
        tokens=build_service(settings, client, users),
        metrics=metrics,
        security_metrics=security,
        watches=watches,
        console_sessions=console_sessions,
        layout=LayoutGate(client),
    )
