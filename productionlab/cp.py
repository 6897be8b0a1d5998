"""The control plane: the admin API, and the KV routes for operators under
``/ops`` (admin role only; writes wait for fsync when redis supports it)."""

from __future__ import annotations

import logging

import redis
from flask import Flask

from productionlab import console
from productionlab.admin import admin_blueprint
from productionlab.factory import base_app
from productionlab.kv_routes import kv_blueprint
from productionlab.services import Services
from productionlab.settings import Settings
from productionlab.shardmigrate import migrate_to_shards
from productionlab.store.connection import REDIS_FAULTS
from productionlab.token_routes import token_blueprint
from productionlab.watch_routes import watch_blueprint

log = logging.getLogger("productionlab.cp")


def create_app(
    settings: Settings, client: redis.Redis | None = None, services: Services | None = None
) -> Flask:
    """The control plane's app (no side effects; serve.py starts what runs in the background)."""
    app, auth = base_app(settings, client, services)
    app.register_blueprint(
        kv_blueprint(auth, read_role="admin", write_role="admin", url_prefix="/ops")
    )
    app.register_blueprint(watch_blueprint(auth, read_role="admin", url_prefix="/ops"))
    app.register_blueprint(admin_blueprint(auth))
    app.register_blueprint(token_blueprint(auth))
    console.init_app(app, settings, auth)
    return app


def migrate_data(services: Services) -> None:
    """Bring keys from earlier releases up to date (a no-op once done): move the
    one-tag store to the virtual shards (:func:`migrate_to_shards`, which also
    charges keys from before per-user quotas, records the versions of keys with
    a TTL from before watches, and moves any key an app plane of the previous
    release wrote since the last run). Redis may be down at start-up: the plane
    still starts (its KV routes answer 503 until the layout marker is set), and
    the next start-up finishes it."""
    try:
        moved = migrate_to_shards(services.redis)
    except REDIS_FAULTS as exc:
        log.warning("data migration postponed: redis %s", type(exc).__name__)
        return
    if moved:
        log.info("the store is on the virtual-shard layout")
