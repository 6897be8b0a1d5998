"""The app plane: the data API for clients."""

from __future__ import annotations

import redis
from flask import Flask

from productionlab.factory import base_app
from productionlab.kv_routes import kv_blueprint
from productionlab.services import Services
from productionlab.settings import Settings
from productionlab.watch_routes import watch_blueprint


def create_app(
    settings: Settings, client: redis.Redis | None = None, services: Services | None = None
) -> Flask:
    """The app plane's app (no side effects; serve.py starts what runs in the background)."""
    app, auth = base_app(settings, client, services)
    app.register_blueprint(kv_blueprint(auth, read_role="reader", write_role="writer"))
    app.register_blueprint(watch_blueprint(auth, read_role="reader"))
    return app
