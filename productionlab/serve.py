"""Run one plane under Waitress: the entry point of every app process."""

from __future__ import annotations

import contextlib
import importlib
import logging
import os
import pkgutil
import pwd
import time

import redis
import waitress

from productionlab.audit import Actor
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
            widened = users.migrate_empty_grants(Actor(name="migration"))
            users.render_htpasswd()
            break
        except redis.RedisError as exc:
            log.warning("redis not reachable yet (%s); retrying", type(exc).__name__)
            time.sleep(delay)
            delay = min(delay * 2, 5.0)
    if created:
        log.warning("created user admin; its password is in %s", created)
    from productionlab.cp import migrate_usage

    migrate_usage(app.extensions["plab_kv"])
    if widened:
        log.warning(
            "empty-string grants (a silent wildcard) are now the explicit '*' for: %s",
            ", ".join(widened),
        )


# Everything a plane may import while serving. A plane started by root drops to an
# unprivileged user, after which the interpreter and the venv may be unreadable
# (a checkout or pyenv under a 0700 home): every module is loaded before that.
PRELOAD_PACKAGES = (
    "productionlab",
    "flask",
    "werkzeug",
    "jinja2",
    "markupsafe",
    "itsdangerous",
    "click",
    "blinker",
    "waitress",
    "redis",
    "hiredis",
    "flask_httpauth",
    "flask_limiter",
    "ordered_set",
    "typing_extensions",
    "limits",
    "pythonjsonlogger",
    "argon2",
    "_argon2_cffi_bindings",
    "prometheus_client",
    "cryptography",
    "encodings",
    "email",
    "http",
    "json",
    "logging",
    "urllib",
    "importlib.metadata",
    "zoneinfo",
)
PRELOAD_SKIP = ("__main__", ".tests", ".testing", "asyncio", "._pytest", ".contrib")


def preload_modules() -> int:
    """Import every submodule of the packages a plane uses; return how many loaded."""
    loaded = 0
    for name in PRELOAD_PACKAGES:
        try:
            package = importlib.import_module(name)
        except ImportError:
            continue
        loaded += 1
        for info in pkgutil.walk_packages(getattr(package, "__path__", []), name + "."):
            if any(part in info.name for part in PRELOAD_SKIP):
                continue
            with contextlib.suppress(Exception, SystemExit):
                importlib.import_module(info.name)
                loaded += 1
    return loaded


def drop_privileges(user: str) -> None:
    """Become ``user`` (all of real, effective and saved ids; no extra groups)."""
    from productionlab.supervisor import die_with_parent

    entry = pwd.getpwnam(user)
    os.setgroups([])
    os.setresgid(entry.pw_gid, entry.pw_gid, entry.pw_gid)
    os.setresuid(entry.pw_uid, entry.pw_uid, entry.pw_uid)
    die_with_parent()  # the kernel cleared it with the change of user
    if os.getppid() == 1:
        raise SystemExit("the supervisor is gone")
    log.info("running as %s (uid %d)", user, entry.pw_uid)


def start_audit_keeper(app) -> None:
    """Migrate, archive/trim and checkpoint the audit log: one round now (so a stack
    upgraded from the previous release is migrated before it serves), then every
    ``PLAB_AUDIT_CHECKPOINT_INTERVAL`` seconds in a background thread. Only the
    control plane runs it: it alone holds the checkpoint key and may trim."""
    from productionlab.audit_keeper import AuditKeeper

    keeper = AuditKeeper(app.extensions["plab_settings"], app.extensions["plab_redis"])
    app.extensions["plab_audit_keeper"] = keeper
    keeper.start()


def serve(
    plane: str,
    host: str,
    port: int,
    settings: Settings | None = None,
    run_as: str | None = None,
) -> None:
    settings = settings or Settings.from_env(plane=plane)
    for warning in settings.warnings:
        log.warning("configuration: %s", warning)
    if plane == "cp":
        from productionlab.cp import create_app

        app = create_app(settings)
        bootstrap_control_plane(app)
    else:
        from productionlab.ap import create_app

        app = create_app(settings)
    if run_as:
        preload_modules()
        drop_privileges(run_as)
    if plane == "cp":
        # After the drop: the keeper's files (archive, checkpoints) belong to the service user.
        start_audit_keeper(app)
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
