"""What both planes share: the short list of extensions every app gets."""

from __future__ import annotations

import redis
from flask import Flask
from flask.sessions import SessionInterface

from productionlab import errors, headers, metrics, ratelimit, requestlog, securitymetrics, tokens
from productionlab.audit import AuditLog
from productionlab.auth import Authenticator
from productionlab.auth import init_app as init_auth
from productionlab.health import health_blueprint
from productionlab.kv import KVStore, Quota
from productionlab.kv_routes import TailConverter
from productionlab.lastused import LastUsed
from productionlab.openapi import openapi_blueprint
from productionlab.settings import Settings
from productionlab.store.connection import connect
from productionlab.store.durability import Durability
from productionlab.users import UserStore


class NoSessions(SessionInterface):
    """Neither plane uses cookie sessions: skip building a signing serializer per request."""

    def open_session(self, app, request):
        return None

    def save_session(self, app, session, response) -> None:
        return None


def base_app(settings: Settings, client: redis.Redis | None = None) -> tuple[Flask, Authenticator]:
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
    app.extensions["plab_settings"] = settings
    client = client or connect(settings)
    app.extensions["plab_redis"] = client

    requestlog.init_app(app, settings.plane)
    errors.init_app(app)
    headers.init_app(app)
    metrics.init_app(app, settings.plane)
    securitymetrics.init_app(app, settings)

    durability = Durability(
        client, strict=settings.strict_durability, fsync_when_possible=settings.plane == "cp"
    )
    app.extensions["plab_durability"] = durability
    quota = Quota(settings.user_max_keys, settings.user_max_bytes)
    app.extensions["plab_kv"] = KVStore(client, durability, quota)
    app.extensions["plab_audit"] = AuditLog(client)
    users = UserStore(
        client,
        cache_secret=settings.secret_key.encode(),
        cache_seconds=settings.verify_cache_seconds,
        htpasswd_path=settings.htpasswd_path if settings.plane == "cp" else None,
        verify_concurrency=settings.verify_concurrency,
        verify_retry_after=settings.verify_retry_after,
    )
    users.start_listener()
    app.extensions["plab_users"] = users
    app.extensions["plab_lastused"] = LastUsed(client)
    guard = ratelimit.failure_guard(settings, client)
    app.extensions["plab_guard"] = guard
    user_limit = ratelimit.init_app(app, settings, client)
    # Flask-Limiter's per-route limits serve the control plane's /admin and /auth
    # routes; the app plane has none (its hot routes keep the fused UserLimit).
    route_limits = ratelimit.RouteLimits(app, settings, client) if settings.plane == "cp" else None
    auth = init_auth(app, users, guard, user_limit, route_limits)
    tokens.init_app(app, auth)  # Bearer access tokens on both planes
    app.register_blueprint(health_blueprint())
    app.register_blueprint(openapi_blueprint())
    return app, auth
