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


def migrate_data(services: Services) -> bool:
    """Bring keys from earlier releases up to date (a no-op once done): move the
    one-tag store to the virtual shards (:func:`migrate_to_shards`, which also
    charges keys from before per-user quotas, records the versions of keys with
    a TTL from before watches, and moves any key an app plane of the previous
    release wrote since the last run). True once the store is on the layout;
    False if a redis fault cut it short (it is idempotent:
    :func:`serve.bootstrap_control_plane` runs it again until it finishes, while
    both planes' KV routes answer 503)."""
    try:
        moved = migrate_to_shards(services.redis)
    except REDIS_FAULTS as exc:
        log.warning("data migration postponed: redis %s", type(exc).__name__)
        return False
    if moved:
        log.info("the store is on the virtual-shard layout")
    return True
