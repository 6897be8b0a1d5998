"""The control plane: the admin API, and the KV routes for operators
(admin role only; writes are strict, reads never cached)."""

from __future__ import annotations

import redis
from flask import Flask

from productionlab.admin import admin_blueprint
from productionlab.factory import base_app
from productionlab.kv_routes import kv_blueprint
from productionlab.settings import Settings


def create_app(settings: Settings, client: redis.Redis | None = None) -> Flask:
    app, auth = base_app(settings, client)
    app.register_blueprint(kv_blueprint(auth, read_role="admin", write_role="admin"))
    app.register_blueprint(admin_blueprint(auth))
    return app
