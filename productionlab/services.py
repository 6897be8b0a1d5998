"""What a plane works with, in one typed object, and the one way to reach it.

:class:`Services` holds everything a plane uses that is not Flask: the redis
client, the KV core, users, tokens, audit, limits, durability, metrics. It is
built once by :func:`productionlab.wiring.build_services` (the planes' factory,
``serve`` and the operator CLI all use that builder) and stored under one
``app.extensions`` entry. Route code reads it with :func:`services` (a dict
lookup, as cheap as the per-module helpers it replaces).

This module imports nothing from the rest of the package at run time, so any
module may import it without a cycle.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from flask import Flask, current_app

if TYPE_CHECKING:
    import redis

    from productionlab.audit import AuditLog
    from productionlab.audit_keeper import AuditKeeper
    from productionlab.console.sessions import SessionStore
    from productionlab.kv import Quota
    from productionlab.lastused import LastUsed
    from productionlab.loginguard import LoginGuard
    from productionlab.metrics import Metrics
    from productionlab.ratelimit import UserLimit
    from productionlab.securitymetrics import SecurityMetrics
    from productionlab.settings import Settings
    from productionlab.shardbatch import ShardBatches
    from productionlab.shardkv import ShardedKV
    from productionlab.shardmigrate import LayoutGate
    from productionlab.store.durability import Durability
    from productionlab.tokens import TokenService
    from productionlab.users import UserStore
    from productionlab.watch import Watches

EXTENSION = "plab"


@dataclass(eq=False)
class Services:
    settings: Settings
    redis: redis.Redis
    durability: Durability
    quota: Quota
    kv: ShardedKV
    batches: ShardBatches
    audit: AuditLog
    users: UserStore
    lastused: LastUsed
    guard: LoginGuard  # the brute-force guard (Basic, token and refresh failures)
    user_limit: UserLimit  # the fused per-user limit of every authenticated route
    tokens: TokenService
    metrics: Metrics
    security_metrics: SecurityMetrics
    watches: Watches
    console_sessions: SessionStore | None = None  # control plane with PLAB_CONSOLE on
    # Opens the KV routes once the store is on the shard layout (shardmigrate.py).
    layout: LayoutGate | None = None
    # The control plane's custodian of the audit log: started by ``serve`` after
    # the privilege drop, or made on first use by the admin API (see admin.py).
    audit_keeper: AuditKeeper | None = None

    def install(self, app: Flask) -> None:
        app.extensions[EXTENSION] = self


def services() -> Services:
    """The current app's services (inside an app or request context)."""
    return current_app.extensions[EXTENSION]


def services_of(app: Flask) -> Services:
    """An app's services, outside a request (``serve``, benchmarks, tests)."""
    return app.extensions[EXTENSION]
