"""Run one plane under Waitress: the entry point of every app process."""

from __future__ import annotations

import logging
import time

import redis
import waitress

from productionlab.settings import Settings

log = logging.getLogger("productionlab.serve")


def bootstrap_control_plane(app) -> None:
    """First start: create ``admin`` and render the edge's htpasswd; wait for redis."""
    settings: Settings = app.extensions["plab_settings"]
    users = app.extensions["plab_users"]
    delay = 0.2
    while True:
        try:
            created = users.ensure_admin(settings.secrets_dir / "admin.password")
            users.render_htpasswd()
            break
        except redis.RedisError as exc:
            log.warning("redis not reachable yet (%s); retrying", type(exc).__name__)
            time.sleep(delay)
            delay = min(delay * 2, 5.0)
    if created:
        log.warning("created user admin; its password is in %s", created)


def start_audit_keeper(app) -> None:
    """Migrate, archive/trim and checkpoint the audit log: one round now (so a stack
    upgraded from the previous release is migrated before it serves), then every
    ``PLAB_AUDIT_CHECKPOINT_INTERVAL`` seconds in a background thread. Only the
    control plane runs it: it alone holds the checkpoint key and may trim."""
    from productionlab.audit_keeper import AuditKeeper

    keeper = AuditKeeper(app.extensions["plab_settings"], app.extensions["plab_redis"])
    app.extensions["plab_audit_keeper"] = keeper
    keeper.start()


def serve(plane: str, host: str, port: int, settings: Settings | None = None) -> None:
    settings = settings or Settings.from_env(plane=plane)
    for warning in settings.warnings:
        log.warning("configuration: %s", warning)
    if plane == "cp":
        from productionlab.cp import create_app

        app = create_app(settings)
        bootstrap_control_plane(app)
        start_audit_keeper(app)
    else:
        from productionlab.ap import create_app

        app = create_app(settings)
    log.info("serving %s on %s:%s", plane, host, port)
    waitress.serve(
        app,
        host=host,
        port=port,
        threads=settings.threads,
        ident=None,
        trusted_proxy=settings.trusted_proxy,
        trusted_proxy_count=1 if settings.trusted_proxy else None,
        trusted_proxy_headers={"x-forwarded-for", "x-forwarded-proto"},
        clear_untrusted_proxy_headers=True,
        # Flask enforces the contract's body bound with a JSON 413; Waitress's
        # own plain-text 413 is only a backstop set above it.
        max_request_body_size=settings.max_body + 65536,
        channel_timeout=30,
        connection_limit=1000,
        expose_tracebacks=False,
        asyncore_use_poll=True,
    )
