"""The Docker compose deployment's two preparation steps.

``secrets`` (run on the host by ``make secrets``) creates every secret, the
token key's public half (``token_public_key``, and ``token_public_key.previous``
during a rotation's overlap, else empty), the TLS certificate and redis.conf
under one directory; compose gives each container only the files it uses.
``edge-config`` (run in the ``edge-config`` init container) renders the edge's
nginx.conf from the one template in ``nginx/`` with the paths and names of the
compose topology and the ``PLAB_*`` limits of its environment.

Run as ``python -m productionlab.deploy COMMAND``; ``register`` adds the same
commands to the ``productionlab`` CLI.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Mapping
from pathlib import Path

from productionlab.configfiles import (
    EdgeConfig,
    RedisTLS,
    RedisUser,
    plane_redis_users,
    render_redis_conf,
)
from productionlab.files import write_atomic
from productionlab.secretgen import (
    ALL_SECRETS,
    REDIS_TLS_CA_KEY,
    TOKEN_PUBLIC_KEY,
    ensure_redis_tls,
    ensure_secrets,
    ensure_tls,
)
from productionlab.settings import (
    COMPOSE_EDGE_CONCERNS,
    ConfigError,
    Settings,
    nginx_size,
    redis_maxmemory,
)

# Paths and names inside the containers: docker-compose.yml uses the same ones.
APP_PORT = 8000
EDGE_HTTPS_PORT = 8443
EDGE_HTTP_PORT = 8080
# nginx.conf lives in a volume only edge-config writes; the htpasswd in another
# that only the control plane writes: the control plane cannot rewrite the edge.
EDGE_DIR = Path("/var/lib/productionlab/edge")
EDGE_CONF = EDGE_DIR / "nginx.conf"
HTPASSWD_DIR = Path("/var/lib/productionlab/htpasswd")
HTPASSWD = HTPASSWD_DIR / "htpasswd"
SECRETS_MOUNT = Path("/run/secrets")
REDIS_PORT = 6379
REDIS_DATA = "/data"
# The healthcheck's redis user may run PING and nothing else; it needs no password.
HEALTH_USER = RedisUser("plab-health", "unused", extra="-@all +ping nopass")
# Redis speaks TLS only in compose; its certificate names the service and loopback
# (the healthcheck connects from inside the container); one client cert per plane
# and one for the healthcheck.
REDIS_SERVICE = "redis"
REDIS_TLS_CLIENTS = ("ap", "cp", "health")
REDIS_TLS = RedisTLS.in_directory(SECRETS_MOUNT)


def edge_config(environ: Mapping[str, str] | None = None) -> EdgeConfig:
    """The edge of the compose topology: upstreams by service name, secrets by mount,
    limits from the validated Settings (ConfigError, naming the variable, when bad)."""
    settings = Settings.from_env(environ, concerns=COMPOSE_EDGE_CONCERNS)
    max_body = nginx_size(settings.max_body)
    return EdgeConfig(
        ap_servers=[f"{settings.ap_host}:{APP_PORT}"],
        cp_server=f"{settings.cp_host}:{APP_PORT}",
        tls_cert=str(SECRETS_MOUNT / "tls_crt"),
        tls_key=str(SECRETS_MOUNT / "tls_key"),
        htpasswd=str(HTPASSWD),
        https_listen=f"0.0.0.0:{EDGE_HTTPS_PORT}",
        http_listen=f"0.0.0.0:{EDGE_HTTP_PORT}",
        public_https_port=settings.https_port,
        pid_path="/tmp/nginx/nginx.pid",  # noqa: S108 - the edge's private tmpfs  # nosec B108
        temp_dir="/tmp/nginx",  # noqa: S108 - the edge's private tmpfs  # nosec B108
        error_log="stderr",
        access_log="/dev/stdout",
        user=None,  # nginx runs as its container's non-root user
        worker_processes=settings.edge_workers,
        edge_rate=settings.edge_rate,
        edge_burst=settings.edge_burst,
        admin_rate=settings.admin_rate,
        admin_burst=settings.admin_burst,
        watch_rate=settings.edge_watch_rate,
        watch_burst=settings.edge_watch_burst,
        watch_conns=settings.edge_watch_conns,
        max_body=max_body,
        body_buffer=max_body,
        trusted_proxies=list(settings.edge_trusted_proxies),
    )


def write_edge_config(path: Path = EDGE_CONF, environ: Mapping[str, str] | None = None) -> Path:
    write_atomic(path, edge_config(environ).render(), mode=0o644)
    return path


def redis_conf(directory: Path, durability: str = "everysec", maxmemory: str = "384mb") -> str:
    """redis.conf for the ``redis`` service: one ACL user per plane, passwords as SHA-256."""
    return render_redis_conf(
        port=REDIS_PORT,
        data_dir=REDIS_DATA,
        bind="0.0.0.0",  # noqa: S104 - in-container; the network is internal  # nosec B104
        appendfsync="always" if durability == "strict" else "everysec",
        maxmemory=maxmemory,
        tls=REDIS_TLS,
        users=[*plane_redis_users(directory), HEALTH_USER],
    )


def prepare_secrets(
    directory: Path,
    hostnames: tuple[str, ...] = ("localhost",),
    addresses: tuple[str, ...] = ("127.0.0.1", "::1"),
    durability: str = "everysec",
    maxmemory: str = "384mb",
) -> list[Path]:
    """Create what is missing; keep what exists; (re)render redis.conf from the passwords.

    Compose bind-mounts file secrets with their host owner and mode, and the
    containers run as their own non-root users, so the files are made readable
    (0444) while the directory stays private to its owner (0700): no other user
    of the host can reach them, and each container sees only the ones it is given.
    """
    paths = list(ensure_secrets(directory, ALL_SECRETS).values())
    # the public key's previous half: compose mounts it too (empty outside a rotation)
    paths.append(directory / f"{TOKEN_PUBLIC_KEY}.previous")
    paths += ensure_tls(directory, hostnames=hostnames, addresses=addresses)
    redis_tls = ensure_redis_tls(
        directory,
        hostnames=tuple(dict.fromkeys(["localhost", REDIS_SERVICE])),
        addresses=("127.0.0.1", "::1"),
        clients=REDIS_TLS_CLIENTS,
    )
    # The redis CA's key signs client certificates: it stays 0600, given to no container.
    paths += [path for name, path in redis_tls.items() if name != REDIS_TLS_CA_KEY]
    conf_path = directory / "redis.conf"
    body = redis_conf(directory, durability=durability, maxmemory=maxmemory)
    if not conf_path.exists() or conf_path.read_text() != body:
        write_atomic(conf_path, body, mode=0o444)
    paths.append(conf_path)
    os.chmod(directory, 0o700)
    for path in paths:
        os.chmod(path, 0o444)
    return paths


def cmd_secrets(args: argparse.Namespace) -> int:
    hostnames = tuple(dict.fromkeys(["localhost", *(args.hostname or [])]))
    addresses = tuple(dict.fromkeys(["127.0.0.1", "::1", *(args.address or [])]))
    maxmemory = redis_maxmemory({"PLAB_REDIS_MAXMEMORY": args.redis_maxmemory})
    for path in prepare_secrets(Path(args.dir), hostnames, addresses, args.durability, maxmemory):
        print(path)
    return 0


def cmd_edge_config(args: argparse.Namespace) -> int:
    try:
        path = write_edge_config(Path(args.out))
    except ConfigError as exc:
        print(f"edge-config: {exc.one_line}", file=sys.stderr)
        return 2
    print(f"edge-config: wrote {path}", file=sys.stderr)
    return 0


def register(commands: argparse._SubParsersAction, secrets_name: str = "compose-secrets") -> None:
    """Add ``compose-secrets`` and ``edge-config`` to a CLI (see ``cli.EXTRA_COMMANDS``)."""
    prepare = commands.add_parser(
        secrets_name, help="secrets, TLS certificate and redis.conf for docker compose"
    )
    prepare.add_argument("--dir", default="secrets")
    prepare.add_argument("--hostname", action="append", help="a DNS name for the certificate")
    prepare.add_argument("--address", action="append", help="an IP address for the certificate")
    prepare.add_argument("--durability", choices=["everysec", "strict"], default="everysec")
    prepare.add_argument(
        "--redis-maxmemory",
        default=os.environ.get("PLAB_REDIS_MAXMEMORY", "384mb"),
        help="redis maxmemory (default PLAB_REDIS_MAXMEMORY, else 384mb); noeviction stays",
    )
    prepare.set_defaults(handler=cmd_secrets)
    edge = commands.add_parser("edge-config", help="render the compose edge's nginx.conf")
    edge.add_argument("--out", default=str(EDGE_CONF))
    edge.set_defaults(handler=cmd_edge_config)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m productionlab.deploy", description=__doc__)
    register(parser.add_subparsers(dest="command", required=True, metavar="COMMAND"), "secrets")
    args = parser.parse_args(argv)
    return int(args.handler(args) or 0)


if __name__ == "__main__":
    raise SystemExit(main())
