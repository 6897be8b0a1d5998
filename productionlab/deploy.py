"""The Docker compose deployment's two preparation steps.

``secrets`` (run on the host by ``make secrets``) creates every secret, the
token key's public half (``token_public_key``, and ``token_public_key.previous``
during a rotation's overlap, else empty), the TLS certificate and redis.conf
under one directory; compose gives each container only the files it uses.
``edge-config`` (run in the ``edge-config`` init container) renders the edge's
nginx.conf from the one template in ``nginx/`` with the paths and names of the
compose topology and the ``PLAB_*`` limits of its environment.

``secrets --topology ha`` prepares compose's ``ha`` profile (a primary, two
replicas, three sentinels; docs/COMPOSE.md "High availability"): redis.conf for
replicated data nodes, sentinel.conf, and ``ha.env``, the variables that point
the planes at the sentinels (``docker compose --env-file secrets/ha.env up -d``).

``secrets --topology cluster`` prepares compose's ``cluster`` profile (three Redis
Cluster masters, docs/COMPOSE.md "Redis Cluster"): redis.conf for cluster nodes
and ``cluster.env``, which points the planes at the three masters
(``docker compose --env-file secrets/cluster.env up -d``).

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
    RedisClusterNode,
    RedisReplication,
    RedisTLS,
    RedisUser,
    SentinelConfig,
    SentinelUsers,
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
    DURABILITY_MODES,
    ConfigError,
    Settings,
    nginx_size,
    redis_maxmemory,
    secret_problem,
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

# Compose's ha profile: the service names of the replicas and sentinels (the server
# certificate names them all), the Sentinel service name the planes ask for, and
# the two redis users that are not a plane's, each allowed only what it sends
# (redis's Sentinel documentation lists these commands).
TOPOLOGIES = ("single", "ha", "cluster")
HA_REPLICAS = ("redis-replica-1", "redis-replica-2")
HA_SENTINELS = ("sentinel-1", "sentinel-2", "sentinel-3")
# Fixed addresses on the backend network (its default subnet, high so Docker's
# dynamic ones never take them): redis, and the sentinels, resolve a name with
# a blocking lookup, and a stopped container's name can take seconds to fail
# (Docker's DNS forwards it), which stalled sentinels and replicas for as long
# as the primary was dead. By address nothing is looked up; the server
# certificate names the addresses, so the planes still check the server.
# ha.env hands them to docker-compose.yml (PLAB_<SERVICE>_ADDRESS).
HA_ADDRESSES = {
    REDIS_SERVICE: "198.18.241.240",
    "redis-replica-1": "198.18.241.241",
    "redis-replica-2": "198.18.241.242",
    "sentinel-1": "198.18.241.243",
    "sentinel-2": "198.18.241.244",
    "sentinel-3": "198.18.241.245",
}
SENTINEL_PORT = 26379
SENTINEL_SERVICE = "plab"
HA_ENV = "ha.env"
REPLICATION_PASSWORD = "redis_replica_password"  # noqa: S105 - a file name  # nosec B105
SENTINEL_PASSWORD = "redis_sentinel_password"  # noqa: S105 - a file name  # nosec B105
HA_PASSWORDS = (REPLICATION_PASSWORD, SENTINEL_PASSWORD)
# The sentinels' own ACL (configfiles.SentinelUsers): the planes' users may only
# discover; plab-sentinel (redis_sentinel_password, the sentinels' identity towards
# the data nodes already) is also what they use with each other; the operator's
# plab-sentinel-admin, with its own password, may run every SENTINEL subcommand.
SENTINEL_ADMIN_PASSWORD = "redis_sentinel_admin_password"  # noqa: S105 - a file name  # nosec B105
SENTINEL_ADMIN_USER = "plab-sentinel-admin"
REPLICATION_RULES = "+psync +replconf +ping"
SENTINEL_RULES = (
    "&__sentinel__:hello +multi +exec +slaveof +replicaof +ping +info +role +publish"
    " +subscribe +config|rewrite +client|setname +client|kill +script|kill"
)
MIN_REPLICAS_TO_WRITE = 1
MIN_REPLICAS_MAX_LAG = 10  # seconds; docs/RELIABILITY.md §9 uses the same
# Compose's cluster profile: three masters, each with a fixed backend address (the
# same reason as the ha nodes': nodes and clients know each other by address; a
# node announces it with --cluster-announce-ip), after the ha profile's. A
# one-shot service joins them (docker/redis-cluster/join.sh) as the ACL user
# plab-cluster, which may only run CLUSTER, INFO and PING; the healthcheck's user
# may also read CLUSTER INFO (healthy means cluster_state:ok), NODES and SLOTS
# there (which master owns which slots; docs/COMPOSE.md), and change nothing.
CLUSTER_NODES = ("redis-cluster-1", "redis-cluster-2", "redis-cluster-3")
CLUSTER_INIT = "redis-cluster-init"
CLUSTER_ADDRESSES = {
    "redis-cluster-1": "198.18.241.246",
    "redis-cluster-2": "198.18.241.247",
    "redis-cluster-3": "198.18.241.248",
}
CLUSTER_ENV = "cluster.env"
CLUSTER_CONF = "redis-cluster.conf"
CLUSTER_PASSWORD = "redis_cluster_password"  # noqa: S105 - a file name  # nosec B105
CLUSTER_USER = "plab-cluster"
CLUSTER_RULES = "+cluster +info +ping"
CLUSTER_HEALTH_USER = RedisUser(
    "plab-health", "unused", extra="-@all +ping +cluster|info +cluster|nodes +cluster|slots nopass"
)
# The planes' durability modes beyond everysec count replica or fsync acknowledgements
# on the connection that wrote, which a cluster client does not keep (settings refuse
# them with a redis+cluster:// URL); appendfsync everysec on every master.
CLUSTER_DURABILITY = ("everysec",)
CLUSTER_URL = "redis+cluster://" + ",".join(
    f"{address}:{REDIS_PORT}" for address in CLUSTER_ADDRESSES.values()
)
SENTINEL_URL = (
    "redis+sentinel://"
    + ",".join(f"{HA_ADDRESSES[name]}:{SENTINEL_PORT}" for name in HA_SENTINELS)
    + f"/{SENTINEL_SERVICE}/0"
)


def address_variable(service: str) -> str:
    """The compose variable that holds a service's fixed address (PLAB_REDIS_REPLICA_1_ADDRESS)."""
    return "PLAB_" + service.upper().replace("-", "_") + "_ADDRESS"


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


def ha_users(directory: Path) -> tuple[RedisUser, RedisUser]:
    """The replication and sentinel users, with their passwords from ``directory``."""
    replica, sentinel = ((directory / name).read_text().strip() for name in HA_PASSWORDS)
    return (
        RedisUser("plab-replica", replica, rules=REPLICATION_RULES),
        RedisUser("plab-sentinel", sentinel, rules=SENTINEL_RULES),
    )


def cluster_user(directory: Path) -> RedisUser:
    """The user that joins the cluster's masters, with its password from ``directory``."""
    secret = (directory / CLUSTER_PASSWORD).read_text().strip()
    return RedisUser(CLUSTER_USER, secret, rules=CLUSTER_RULES)


def redis_conf(
    directory: Path,
    durability: str = "everysec",
    maxmemory: str = "384mb",
    topology: str = "single",
) -> str:
    """redis.conf for the ``redis`` service (and, in the ha topology, the replicas;
    ``cluster`` for the cluster profile's masters): one ACL user per plane,
    passwords as SHA-256."""
    planes = plane_redis_users(directory)
    users = [*planes, HEALTH_USER]
    replication = None
    cluster = None
    if topology == "cluster":
        users = [*planes, CLUSTER_HEALTH_USER, cluster_user(directory)]
        cluster = RedisClusterNode()
    if topology == "ha":
        replica_user, sentinel_user = ha_users(directory)
        users += [replica_user, sentinel_user]
        replication = RedisReplication(
            user=replica_user.name,
            password=replica_user.password,
            min_replicas=MIN_REPLICAS_TO_WRITE,
            max_lag=MIN_REPLICAS_MAX_LAG,
        )
    return render_redis_conf(
        port=REDIS_PORT,
        data_dir=REDIS_DATA,
        bind="0.0.0.0",  # noqa: S104 - in-container; the network is internal  # nosec B104
        appendfsync="always" if durability == "strict" else "everysec",
        maxmemory=maxmemory,
        tls=REDIS_TLS,
        users=users,
        replication=replication,
        cluster=cluster,
    )


def sentinel_users(directory: Path) -> SentinelUsers:
    """Who may talk to the ha profile's sentinels, with the passwords from ``directory``:
    the planes' redis users, plab-sentinel (peer), plab-sentinel-admin, plab-health."""
    admin = (directory / SENTINEL_ADMIN_PASSWORD).read_text().strip()
    return SentinelUsers(
        planes=plane_redis_users(directory),
        peer=ha_users(directory)[1],
        admin=RedisUser(SENTINEL_ADMIN_USER, admin),
        health_name=HEALTH_USER.name,
    )


def sentinel_conf(directory: Path) -> str:
    """sentinel.conf for the ha profile's sentinels: monitor ``redis`` over TLS, quorum 2,
    with its ACL (:func:`sentinel_users`)."""
    users = sentinel_users(directory)
    return SentinelConfig(
        service=SENTINEL_SERVICE,
        primary=HA_ADDRESSES[REDIS_SERVICE],
        primary_port=REDIS_PORT,
        user=users.peer,
        tls=REDIS_TLS,
        users=users,
        port=SENTINEL_PORT,
    ).render()


def profile_env(
    topology: str, secrets_dir: Path, url: str, durability: str, addresses: Mapping[str, str]
) -> str:
    """The variables of a compose profile: the profile, the planes' redis URL and
    durability, and the fixed address of each of its services."""
    return (
        f"# Written by `python -m productionlab.deploy secrets --topology {topology}`; see\n"
        f"# docs/COMPOSE.md. Use: docker compose --env-file secrets/{topology}.env up -d\n"
        f"COMPOSE_PROFILES={topology}\n"
        f"PLAB_SECRETS_DIR={secrets_dir.resolve()}\n"
        f"PLAB_REDIS_URL={url}\n"
        f"PLAB_DURABILITY={durability}\n"
        + "".join(f"{address_variable(n)}={a}\n" for n, a in addresses.items())
    )


def ha_env(secrets_dir: Path, durability: str) -> str:
    """The variables of the ha profile: the planes on the sentinels."""
    return profile_env("ha", secrets_dir, SENTINEL_URL, durability, HA_ADDRESSES)


def cluster_env(secrets_dir: Path) -> str:
    """The variables of the cluster profile: the planes on the masters."""
    return profile_env("cluster", secrets_dir, CLUSTER_URL, "everysec", CLUSTER_ADDRESSES)


def check_topology(topology: str, durability: str) -> None:
    """ConfigError when the durability cannot be kept by the topology."""
    if topology not in TOPOLOGIES:
        raise ConfigError([f"topology {topology!r} is not one of {', '.join(TOPOLOGIES)}"])
    if topology == "cluster" and durability not in CLUSTER_DURABILITY:
        raise ConfigError(
            [
                f"durability {durability!r} is not supported with --topology cluster: "
                "the planes refuse PLAB_DURABILITY=strict|replicated with a redis+cluster:// "
                "URL (WAIT and the fsync check count what their own connection wrote, and "
                "a cluster client keeps none to the key's master); use everysec, or "
                "--topology ha for replicated"
            ]
        )
    if durability == "replicated" and topology != "ha":
        raise ConfigError(
            [
                "durability 'replicated' needs replicas: use --topology ha "
                "(the single-redis topology has none, so every write would answer 503)"
            ]
        )


def _write_if_changed(path: Path, body: str) -> None:
    if not path.exists() or path.read_text() != body:
        write_atomic(path, body, mode=0o444)


def prepare_secrets(
    directory: Path,
    hostnames: tuple[str, ...] = ("localhost",),
    addresses: tuple[str, ...] = ("127.0.0.1", "::1"),
    durability: str = "everysec",
    maxmemory: str = "384mb",
    topology: str = "single",
) -> list[Path]:
    """Create what is missing; keep what exists; (re)render redis.conf from the passwords.

    ``topology`` ``ha`` renders redis.conf for replicated data nodes and writes
    ``ha.env``; ``cluster`` writes ``cluster.env``. sentinel.conf, redis-cluster.conf
    (the cluster's masters) and the replication, sentinel, sentinel admin and cluster
    passwords are made in every topology, so every file compose names exists
    (redis.conf has a user only for those its topology uses).

    Compose bind-mounts file secrets with their host owner and mode, and the
    containers run as their own non-root users, so the files are made readable
    (0444) while the directory stays private to its owner (0700): no other user
    of the host can reach them, and each container sees only the ones it is given.
    """
    check_topology(topology, durability)
    own = (*HA_PASSWORDS, SENTINEL_ADMIN_PASSWORD, CLUSTER_PASSWORD)
    paths = list(ensure_secrets(directory, (*ALL_SECRETS, *own)).values())
    problems = [
        problem
        for name in own
        if (problem := secret_problem(name, (directory / name).read_text().strip()))
    ]
    if problems:
        raise ConfigError([f"{directory}: {problem}" for problem in problems])
    # the public key's previous half: compose mounts it too (empty outside a rotation)
    paths.append(directory / f"{TOKEN_PUBLIC_KEY}.previous")
    paths += ensure_tls(directory, hostnames=hostnames, addresses=addresses)
    ha, cluster = topology == "ha", topology == "cluster"
    redis_hosts = ["localhost", REDIS_SERVICE, *((*HA_REPLICAS, *HA_SENTINELS) if ha else ())]
    redis_addresses = ["127.0.0.1", "::1", *(HA_ADDRESSES.values() if ha else ())]
    if cluster:
        redis_hosts += CLUSTER_NODES
        redis_addresses += CLUSTER_ADDRESSES.values()
    redis_tls = ensure_redis_tls(
        directory,
        hostnames=tuple(dict.fromkeys(redis_hosts)),
        addresses=tuple(redis_addresses),
        clients=REDIS_TLS_CLIENTS,
        peer=ha or cluster,
    )
    # The redis CA's key signs client certificates: it stays 0600, given to no container.
    paths += [path for name, path in redis_tls.items() if name != REDIS_TLS_CA_KEY]
    # The cluster profile's masters have their own file: the profile-less ``redis``
    # service still starts there (compose cannot leave it out), as the single
    # topology's redis, idle, and must not become a lone cluster node.
    conf_path = directory / "redis.conf"
    single_or_ha = "ha" if ha else "single"
    _write_if_changed(conf_path, redis_conf(directory, durability, maxmemory, single_or_ha))
    paths.append(conf_path)
    cluster_conf_path = directory / CLUSTER_CONF
    _write_if_changed(cluster_conf_path, redis_conf(directory, "everysec", maxmemory, "cluster"))
    paths.append(cluster_conf_path)
    sentinel_path = directory / "sentinel.conf"
    _write_if_changed(sentinel_path, sentinel_conf(directory))
    paths.append(sentinel_path)
    if ha:
        env_path = directory / HA_ENV
        _write_if_changed(env_path, ha_env(directory, durability))
        paths.append(env_path)
    if cluster:
        env_path = directory / CLUSTER_ENV
        _write_if_changed(env_path, cluster_env(directory))
        paths.append(env_path)
    os.chmod(directory, 0o700)
    for path in paths:
        os.chmod(path, 0o444)
    return paths


def cmd_secrets(args: argparse.Namespace) -> int:
    hostnames = tuple(dict.fromkeys(["localhost", *(args.hostname or [])]))
    addresses = tuple(dict.fromkeys(["127.0.0.1", "::1", *(args.address or [])]))
    maxmemory = redis_maxmemory({"PLAB_REDIS_MAXMEMORY": args.redis_maxmemory})
    durability = args.durability or ("replicated" if args.topology == "ha" else "everysec")
    try:
        paths = prepare_secrets(
            Path(args.dir), hostnames, addresses, durability, maxmemory, args.topology
        )
    except ConfigError as exc:
        print(f"secrets: {exc.one_line}", file=sys.stderr)
        return 2
    for path in paths:
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
    prepare.add_argument(
        "--topology",
        choices=TOPOLOGIES,
        default="single",
        help="single: one redis (the default); ha: compose's ha profile (also writes ha.env); "
        "cluster: compose's cluster profile (also writes cluster.env)",
    )
    prepare.add_argument(
        "--durability",
        choices=DURABILITY_MODES,
        default=None,
        help="everysec (single's and cluster's default; cluster's only one), strict, "
        "or replicated (ha only; ha's default)",
    )
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
