"""The control plane: the admin API, and the KV routes for operators under
``/ops`` (admin role only; writes wait for fsync when redis supports it)."""

from __future__ import annotations

import logging

import redis
from flask import Flask

from productionlab import console
from productionlab.admin import admin_blueprint
from productionlab.factory import base_app
from productionlab.kv import KVStore
from productionlab.kv_routes import kv_blueprint
from productionlab.services import Services
from productionlab.settings import Settings
from productionlab.token_routes import token_blueprint

log = logging.getLogger("productionlab.cp")


def create_app(
    settings: Settings, client: redis.Redis | None = None, services: Services | None = None
) -> Flask:
    """The control plane's app (no side effects; serve.py starts what runs in the background)."""
    app, auth = base_app(settings, client, services)
    app.register_blueprint(
        kv_blueprint(auth, read_role="admin", write_role="admin", url_prefix="/ops")
    )
    app.register_blueprint(admin_blueprint(auth))
    app.register_blueprint(token_blueprint(auth))
    console.init_app(app, settings, auth)
    return app


def migrate_usage(store: KVStore) -> None:
    """Charge keys from before per-user quotas (a no-op once done). Redis may be
    down at start-up: the plane still starts, and the next start-up finishes it."""
    try:
        charged = store.migrate_usage()
    except redis.RedisError as exc:
        log.warning("usage migration postponed: redis %s", type(exc).__name__)
        return
    if charged:
        log.info("usage migration charged %d keys written before quotas", charged)
