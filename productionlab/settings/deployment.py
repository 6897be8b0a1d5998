"""The deployment's concerns: which environment and plane, the local stack's
listeners and counts, the edge, redis and the files and directories. Each concern
has a ``read_*`` (environment -> field values) and a ``check_*`` (what is wrong)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

from productionlab.settings.secretcheck import read_secret
from productionlab.settings.values import ConfigError, EnvReader, parse_cidrs, redis_maxmemory
from productionlab.store.urls import redacted, url_problem

if TYPE_CHECKING:
    from productionlab.settings.model import Settings

DURABILITY_MODES = ("everysec", "strict", "replicated")
# WAIT blocks its connection: it must end before the client's 2 s socket timeout.
MAX_REPLICA_TIMEOUT_MS = 1500
ENVIRONMENTS = ("development", "production", "test")
MAX_PORT = 65535
MAX_AP_WORKERS = 256

Fields = dict[str, object]


def optional_path(value: str) -> Path | None:
    return Path(value) if value else None


# --- environment: which environment, which plane, how durable -------------------
def read_environment(env: EnvReader, plane: str) -> Fields:
    return {
        "env": env.get("ENV", "development"),
        "durability": env.get("DURABILITY", "everysec"),
        "replica_timeout_ms": env.integer("REPLICA_TIMEOUT_MS", 1000),
        "debug": env.get("DEBUG", "0").lower() in ("1", "true", "on"),
    }


def check_environment(s: Settings, problems: list[str], warnings: list[str]) -> None:
    if s.env not in ENVIRONMENTS:
        problems.append(f"PLAB_ENV={s.env!r} is not one of {', '.join(ENVIRONMENTS)}")
    if s.plane not in ("ap", "cp"):
        problems.append(f"plane {s.plane!r} is not ap or cp")
    if s.durability not in DURABILITY_MODES:
        problems.append(
            f"PLAB_DURABILITY={s.durability!r} is not one of {', '.join(DURABILITY_MODES)}"
        )
    if not 1 <= s.replica_timeout_ms <= MAX_REPLICA_TIMEOUT_MS:
        problems.append(
            f"PLAB_REPLICA_TIMEOUT_MS={s.replica_timeout_ms} must be between 1 and "
            f"{MAX_REPLICA_TIMEOUT_MS} (milliseconds; below the redis client's 2 s timeout)"
        )
    if s.durability != "everysec" and s.redis_url.startswith("redis+cluster://"):
        # WAIT/WAITAOF count what their own connection wrote; a cluster client has no
        # pinned connection to the key's master (and CONFIG GET reaches one node).
        problems.append(
            f"PLAB_DURABILITY={s.durability} is not supported with redis+cluster:// "
            "(only everysec: set appendfsync on every master)"
        )
    if s.production and s.debug:
        problems.append("PLAB_DEBUG is on in production")


# --- the local stack: listeners, process counts, redis.conf --------------------
STACK_PORTS = ("HTTPS_PORT", "HTTP_PORT", "AP_PORT", "CP_PORT", "REDIS_PORT")


def read_stack(env: EnvReader, plane: str) -> Fields:
    fields: Fields = {
        "bind": env.get("BIND", "127.0.0.1"),
        "ap_workers": env.integer("AP_WORKERS", max(1, os.cpu_count() or 1)),
        "stack_redis_tls": env.on_off("REDIS_TLS", "off"),
    }
    defaults = {"HTTPS_PORT": 8443, "HTTP_PORT": 8080, "AP_PORT": 8101, "CP_PORT": 8201}
    for name in STACK_PORTS:
        fields[name.lower()] = env.integer(name, defaults.get(name, 6390))
    return fields


def check_stack(s: Settings, problems: list[str], warnings: list[str]) -> None:
    if not s.bind.strip():
        problems.append("PLAB_BIND is empty (the address the local stack listens on)")
    for name in STACK_PORTS:
        port = getattr(s, name.lower())
        if not 1 <= port <= MAX_PORT:
            problems.append(f"PLAB_{name}={port} is not a port (1..{MAX_PORT})")
    if not 1 <= s.ap_workers <= MAX_AP_WORKERS:
        problems.append(f"PLAB_AP_WORKERS={s.ap_workers} must be between 1 and {MAX_AP_WORKERS}")
    elif 1 <= s.ap_port and s.ap_port + s.ap_workers - 1 > MAX_PORT:
        problems.append(f"PLAB_AP_PORT={s.ap_port} leaves no port for each of PLAB_AP_WORKERS")


# --- the edge: what the planes check too (body size, trusted load balancers) -----
def read_edge(env: EnvReader, plane: str) -> Fields:
    return {
        "edge_trusted_proxies": env.cidrs("EDGE_TRUSTED_PROXIES"),
        "max_body": env.size("MAX_BODY", "1m"),
    }


def check_edge(s: Settings, problems: list[str], warnings: list[str]) -> None:
    try:
        parse_cidrs(" ".join(s.edge_trusted_proxies))
    except ValueError as exc:
        problems.append(f"PLAB_EDGE_TRUSTED_PROXIES: {exc}")
    if not 1 <= s.max_body <= 1024**3:
        problems.append("PLAB_MAX_BODY must be between 1 byte and 1g")


# --- the edge's own limits: nginx's rates per address, workers, upstream names ----
EDGE_COUNTS = {"EDGE_RATE": 50, "EDGE_BURST": 100, "ADMIN_RATE": 5, "ADMIN_BURST": 10}
# The watch routes' own edge limits, per user (issue 13): requests/s and burst, and how
# many watches one user may hold open at the edge. nginx takes 1..65535 connections.
WATCH_COUNTS = {"EDGE_WATCH_RATE": 10, "EDGE_WATCH_BURST": 50, "EDGE_WATCH_CONNS": 32}
MAX_EDGE_WATCH_CONNS = 65535


def read_edge_limits(env: EnvReader, plane: str) -> Fields:
    counts = EDGE_COUNTS | WATCH_COUNTS
    fields: Fields = {name.lower(): env.integer(name, n) for name, n in counts.items()}
    return fields | {
        "edge_workers": env.get("EDGE_WORKERS", "2").strip(),
        "ap_host": env.get("AP_HOST", "ap"),
        "cp_host": env.get("CP_HOST", "cp"),
    }


def check_edge_limits(s: Settings, problems: list[str], warnings: list[str]) -> None:
    for name in EDGE_COUNTS | WATCH_COUNTS:
        value = getattr(s, name.lower())
        if value <= 0:
            problems.append(f"PLAB_{name}={value} must be a positive integer")
    if s.edge_watch_conns > MAX_EDGE_WATCH_CONNS:
        problems.append(
            f"PLAB_EDGE_WATCH_CONNS={s.edge_watch_conns} must be at most {MAX_EDGE_WATCH_CONNS}"
        )
    workers = s.edge_workers
    if workers != "auto" and not (workers.isascii() and workers.isdigit() and int(workers) > 0):
        problems.append(f"PLAB_EDGE_WORKERS={workers!r} must be auto or a positive integer")


# --- redis: where it is and how a plane connects --------------------------------
def read_redis(env: EnvReader, plane: str) -> Fields:
    tls = {
        f"redis_tls_{part}_file": optional_path(env.get(f"REDIS_TLS_{part.upper()}_FILE", ""))
        for part in ("ca", "cert", "key")
    }
    return tls | {
        "redis_url": env.get("REDIS_URL", "redis://127.0.0.1:6390/0"),
        "redis_username": env.get("REDIS_USERNAME", "") or None,
        "redis_password": read_secret(env.environ, "redis_password"),
    }


def check_redis(s: Settings, problems: list[str], warnings: list[str]) -> None:
    """rediss:// needs the CA (the server is verified, never trusted blindly);
    a client certificate comes with its key; every file named must be readable;
    certificate files with a plain redis:// URL are a mistake, not a silent downgrade."""
    problem = url_problem(s.redis_url)
    if problem:
        problems.append(f"PLAB_REDIS_URL={redacted(s.redis_url)!r} {problem}")
    files = {
        "PLAB_REDIS_TLS_CA_FILE": s.redis_tls_ca_file,
        "PLAB_REDIS_TLS_CERT_FILE": s.redis_tls_cert_file,
        "PLAB_REDIS_TLS_KEY_FILE": s.redis_tls_key_file,
    }
    if s.redis_url.startswith("rediss://") and s.redis_tls_ca_file is None:
        problems.append(
            "PLAB_REDIS_URL is rediss:// but PLAB_REDIS_TLS_CA_FILE is not set "
            "(the CA that signed redis's certificate)"
        )
    if (s.redis_tls_cert_file is None) != (s.redis_tls_key_file is None):
        problems.append("PLAB_REDIS_TLS_CERT_FILE and PLAB_REDIS_TLS_KEY_FILE go together")
    if any(files.values()) and s.redis_url.startswith(("redis://", "unix://")):
        problems.append(
            "PLAB_REDIS_TLS_*_FILE is set but PLAB_REDIS_URL is not rediss:// "
            "(use rediss://host:port/db for TLS)"
        )
    for variable, path in files.items():
        if path is not None and not (path.is_file() and os.access(path, os.R_OK)):
            problems.append(f"{variable}={path} is not a readable file")


# --- redis's memory: redis.conf's maxmemory (make run; the planes check it too) ---
def read_redis_memory(env: EnvReader, plane: str) -> Fields:
    try:
        return {"redis_maxmemory": redis_maxmemory(env.environ)}
    except ConfigError as exc:
        env.problems.extend(exc.problems)
        return {}


def check_redis_memory(s: Settings, problems: list[str], warnings: list[str]) -> None:
    """Checked as it is read (``redis_maxmemory``): redis's own size syntax."""


# --- files: the state dir and what may live elsewhere (backups, TLS, htpasswd) ---
def read_files(env: EnvReader, plane: str) -> Fields:
    return {
        "state_dir": Path(env.get("STATE_DIR", "var")),
        "htpasswd_path": optional_path(env.get("HTPASSWD", "")),
        "tls_cert": optional_path(env.get("TLS_CERT", "")),
        "backup_dir_override": optional_path(env.get("BACKUP_DIR", "")),
        "trusted_proxy": env.get("TRUSTED_PROXY", "127.0.0.1") or None,
    }


def check_files(s: Settings, problems: list[str], warnings: list[str]) -> None:
    """Paths are checked where they are used (a missing backup dir is created)."""


# --- templates: the edge's nginx template (the images install it outside the package)
DEFAULT_NGINX_TEMPLATE = Path(__file__).parent.parent.parent / "nginx" / "nginx.conf.template"


def read_templates(env: EnvReader, plane: str) -> Fields:
    return {"nginx_template": Path(env.get("NGINX_TEMPLATE", str(DEFAULT_NGINX_TEMPLATE)))}


def check_templates(s: Settings, problems: list[str], warnings: list[str]) -> None:
    """A template that is missing is reported where it is rendered, by name."""
