"""Run one plane under Waitress: the entry point of every app process."""

from __future__ import annotations

import contextlib
import importlib
import importlib.metadata
import logging
import os
import pkgutil
import pwd
import re
import threading
import time
from typing import Any

import waitress
from flask import Flask
from waitress.task import ThreadedTaskDispatcher

from productionlab.audit import Actor
from productionlab.services import Services
from productionlab.settings import Settings
from productionlab.store.connection import REDIS_FAULTS
from productionlab.wiring import build_services

log = logging.getLogger("productionlab.serve")


def bootstrap_control_plane(services: Services) -> None:
    """First start: create ``admin`` and render the edge's htpasswd, then bring the
    store up to date (``cp.migrate_data``); wait for redis, before and during both."""
    settings = services.settings
    users = services.users
    delay = 0.2
    while True:
        try:
            created = users.ensure_admin(settings.secrets_dir / "admin.password")
            widened = users.migrate_empty_grants(Actor(name="migration"))
            users.render_htpasswd()
            break
        except REDIS_FAULTS as exc:  # a cluster with no node answering too
            log.warning("redis not reachable yet (%s); retrying", type(exc).__name__)
            time.sleep(delay)
            delay = min(delay * 2, 5.0)
    if created:
        log.warning("created user admin; its password is in %s", created)
    from productionlab.cp import migrate_data

    delay = 0.2
    while not migrate_data(services):  # redis went away mid-way: the KV routes stay 503
        time.sleep(delay)
        delay = min(delay * 2, 5.0)
    if widened:
        log.warning(
            "empty-string grants (a silent wildcard) are now the explicit '*' for: %s",
            ", ".join(widened),
        )


# Everything a plane may import while serving. A plane started by root drops to an
# unprivileged user, after which the interpreter and the venv may be unreadable
# (a checkout or pyenv under a 0700 home): every module is loaded before that.
# The runtime requirements (requirements.txt, as the installed distribution's
# metadata lists them) are found by :func:`required_packages`; this list holds
# what they pull in and the standard library's packages a plane uses.
PRELOAD_PACKAGES = (
    "productionlab",
    "markupsafe",
    "itsdangerous",
    "click",
    "blinker",
    "ordered_set",
    "typing_extensions",
    "_argon2_cffi_bindings",
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


def _canonical(distribution: str) -> str:
    return re.sub(r"[-_.]+", "-", distribution).lower()


def required_packages(distribution: str = "productionlab") -> tuple[str, ...]:
    """The top-level import names of ``distribution``'s runtime requirements."""
    try:
        requires = importlib.metadata.requires(distribution) or []
    except importlib.metadata.PackageNotFoundError:
        log.warning("%s is not installed: only the listed packages are preloaded", distribution)
        return ()
    wanted = {_canonical(re.split(r"[\s<>=!~;\[(]", line, maxsplit=1)[0]) for line in requires}
    provided = importlib.metadata.packages_distributions()
    return tuple(
        sorted(
            name
            for name, owners in provided.items()
            if any(_canonical(owner) in wanted for owner in owners)
        )
    )


def preload_packages() -> tuple[str, ...]:
    return tuple(dict.fromkeys((*PRELOAD_PACKAGES, *required_packages())))


def preload_modules() -> int:
    """Import every submodule of the packages a plane uses; return how many loaded."""
    loaded = 0
    for name in preload_packages():
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


def start_audit_keeper(services: Services) -> None:
    """Migrate, archive/trim and checkpoint the audit log: one round now (so a stack
    upgraded from the previous release is migrated before it serves), then every
    ``PLAB_AUDIT_CHECKPOINT_INTERVAL`` seconds in a background thread. Only the
    control plane runs it: it alone holds the checkpoint key and may trim."""
    from productionlab.audit_keeper import AuditKeeper

    keeper = AuditKeeper(services.settings, services.redis)
    services.audit_keeper = keeper
    keeper.start()


def check_store_layout(services: Services) -> None:
    """Refuse to start on a store written with another shard count (ConfigError);
    a store not migrated yet, or redis not answering, is no reason to stop."""
    from productionlab.settings import ConfigError
    from productionlab.shardmigrate import LayoutMismatch, check_layout

    try:
        check_layout(services.redis)
    except LayoutMismatch as exc:
        raise ConfigError(str(exc)) from None
    except REDIS_FAULTS as exc:
        log.warning("the store's layout is not checked: redis %s", type(exc).__name__)


def make_app(settings: Settings) -> tuple[Flask, Services]:
    """The plane's services, built once, and its app over them (no side effects)."""
    services = build_services(settings)
    if settings.plane == "cp":
        from productionlab.cp import create_app
    else:
        from productionlab.ap import create_app
    return create_app(settings, services=services), services


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
    app, services = make_app(settings)
    check_store_layout(services)
    # The factory starts nothing: the server does. The user-event listener keeps
    # the verification cache honest (and on: it is off while unsubscribed).
    services.users.start_listener()
    try:
        if plane == "cp":
            bootstrap_control_plane(services)
        if run_as:
            preload_modules()
            drop_privileges(run_as)
        if plane == "cp":
            # After the drop: the keeper's files (archive, checkpoints) belong to the service user.
            start_audit_keeper(services)
        log.info("serving %s on %s:%s", plane, host, port)
        run_waitress(app, host, port, settings)
    finally:
        services.users.stop_listener()
        services.watches.feed.stop()


def watch_paths(app: Flask) -> tuple[str, ...]:
    """The path prefixes of ``app``'s watch routes (the ``watch`` blueprint, wherever
    a plane mounts it): what :class:`SplitDispatcher` sends to the watch pool."""
    prefixes = {
        rule.rule.split("<", 1)[0].rstrip("/")
        for rule in app.url_map.iter_rules()
        if rule.endpoint.startswith("watch.")
    }
    return tuple(sorted(prefixes))


class WatchThreads(ThreadedTaskDispatcher):
    """The watches' pool; its threads are named ``waitress-watch-N``."""

    def start_new_thread(self, target: Any, thread_no: int) -> None:
        thread = threading.Thread(
            target=target, name=f"waitress-watch-{thread_no}", args=(thread_no,), daemon=True
        )
        thread.start()


class SplitDispatcher:
    """Two Waitress thread pools behind one listener: ``PLAB_THREADS`` threads for
    ordinary requests, ``PLAB_WATCH_MAX_PER_PROCESS`` for watches (parked for up
    to 300 s each, bounded by :class:`~productionlab.watch.WatchSlots`).

    Waitress hands each parsed request (its channel) to one dispatcher's
    ``add_task``; this one sends it to the pool its path belongs to. One pool of
    8 + 128 threads open to every request would let 136 runnable threads contend
    for the GIL: reads measured 14 % slower with a 25 % higher p99, and a
    semaphore in front of the app won back only half (docs/BENCHMARKS.md). The
    dispatcher is passed through ``create_server``'s ``_dispatcher`` argument
    (Waitress's hook for a custom dispatcher, marked a test shim there:
    requirements.txt pins Waitress, and tests/test_watch.py proves that parked
    watches never take an ordinary thread)."""

    def __init__(self, ordinary_threads: int, watch_threads: int, paths: tuple[str, ...]):
        self.paths = paths
        self.ordinary = ThreadedTaskDispatcher()
        self.ordinary.set_thread_count(ordinary_threads)
        self.watches: ThreadedTaskDispatcher | None = None
        if watch_threads > 0:
            self.watches = WatchThreads()
            self.watches.set_thread_count(watch_threads)

    def add_task(self, channel: Any) -> None:
        requests = getattr(channel, "requests", None)
        path = getattr(requests[0], "path", "") if requests else ""
        if self.watches is not None and path.startswith(self.paths):
            self.watches.add_task(channel)
        else:
            self.ordinary.add_task(channel)

    def set_thread_count(self, count: int) -> None:
        self.ordinary.set_thread_count(count)

    def shutdown(self, cancel_pending: bool = True, timeout: float = 5) -> bool:
        done = self.ordinary.shutdown(cancel_pending, timeout)
        if self.watches is not None:
            done = self.watches.shutdown(cancel_pending, timeout) and done
        return done


def run_waitress(app: Flask, host: str, port: int, settings: Settings) -> None:
    try:
        waitress.serve(
            app,
            _dispatcher=SplitDispatcher(
                settings.threads, settings.watch_max_per_process, watch_paths(app)
            ),
            threads=settings.threads,
            host=host,
            port=port,
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
    except RuntimeError as exc:
        if "thread" not in str(exc):
            raise
        # A container's pids limit (docker-compose.yml) below the threads asked for.
        raise SystemExit(
            f"could not start {settings.serving_threads} threads (PLAB_THREADS "
            f"{settings.threads} + PLAB_WATCH_MAX_PER_PROCESS {settings.watch_max_per_process}): "
            "lower them or raise the process limit (compose: pids_limit)"
        ) from exc
