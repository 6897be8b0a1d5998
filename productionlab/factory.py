"""What both planes share: the short list of extensions every app gets.

Making an app has no side effects: the services come from wiring.py (built
there if not given), nothing here starts a thread or contacts redis, and the
user-event listener and the audit keeper are started by serve.py.
"""

from __future__ import annotations

import redis
from flask import Flask
from flask.sessions import SessionInterface

from productionlab import errors, headers, metrics, requestlog, routelimits, securitymetrics
from productionlab.auth import Authenticator
from productionlab.auth import init_app as init_auth
from productionlab.health import health_blueprint
from productionlab.kv_routes import TailConverter
from productionlab.openapi import openapi_blueprint
from productionlab.services import Services
from productionlab.settings import Settings
from productionlab.wiring import build_services


class NoSessions(SessionInterface):
    """Neither plane uses cookie sessions: skip building a signing serializer per request."""

    def open_session(self, app, request):
        return None

    def save_session(self, app, session, response) -> None:
        return None


def base_app(
    settings: Settings,
    client: redis.Redis | None = None,
    services: Services | None = None,
) -> tuple[Flask, Authenticator]:
    """A plane's app with ``services`` (built from ``settings`` and ``client`` when not given)."""
    if services is None:
        services = build_services(settings, client)
    elif services.settings != settings:
        raise ValueError("the services were built from other settings")
    app = Flask(f"productionlab.{settings.plane}")
    app.config.update(
        MAX_CONTENT_LENGTH=settings.max_body,
        PLAB_MAX_PATH_VALUE=settings.max_path_value,
        PLAB_LIST_MAX_BYTES=settings.list_max_bytes,
        JSON_SORT_KEYS=False,
        DEBUG=False,
        PROPAGATE_EXCEPTIONS=False,
        TRAP_HTTP_EXCEPTIONS=False,
        SECRET_KEY=settings.secret_key,
    )
    app.url_map.converters["tail"] = TailConverter
    app.session_interface = NoSessions()
    services.install(app)

    requestlog.init_app(app, settings.plane)
    errors.init_app(app)
    headers.init_app(app)
    metrics.init_app(app, services.metrics)
    securitymetrics.init_app(app, services.security_metrics)
    # Flask-Limiter's per-route limits serve the control plane's /admin and /auth
    # routes; the app plane has none (its hot routes keep the fused UserLimit).
    route_limits = (
        routelimits.RouteLimits(app, settings, services.redis) if settings.plane == "cp" else None
    )
    auth = init_auth(app, services, route_limits)
    app.register_blueprint(health_blueprint())
    app.register_blueprint(metrics.metrics_blueprint())
    app.register_blueprint(openapi_blueprint())
    return app, auth
