"""The control plane: the admin API, and the KV routes for operators under
``/ops`` (admin role only; writes wait for fsync when redis supports it)."""

from __future__ import annotations

import redis
from flask import Flask

from productionlab import console
from productionlab.admin import admin_blueprint
from productionlab.factory import base_app
from productionlab.kv_routes import kv_blueprint
from productionlab.settings import Settings
from productionlab.tokens import token_blueprint


def create_app(settings: Settings, client: redis.Redis | None = None) -> Flask:
    app, auth = base_app(settings, client)
    app.register_blueprint(
        kv_blueprint(auth, read_role="admin", write_role="admin", url_prefix="/ops")
    )
    app.register_blueprint(admin_blueprint(auth))
    app.register_blueprint(token_blueprint(auth))
    console.init_app(app, settings, auth)
    return app
