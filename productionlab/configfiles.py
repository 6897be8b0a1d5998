"""Config files are templates rendered from settings: the edge's nginx.conf
and redis.conf. Nothing is a hand-edited copy per environment."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path

from jinja2 import Environment, FileSystemLoader, StrictUndefined

from productionlab import contract
from productionlab.contract import ERROR_CODES
from productionlab.secretgen import REDIS_TLS_CA, REDIS_TLS_SERVER
from productionlab.settings import TEMPLATES, Settings, parse_cidrs

PACKAGE_TEMPLATES = Path(__file__).parent / "templates"
# PLAB_NGINX_TEMPLATE: the images install the template outside the package.
NGINX_TEMPLATE = Settings.from_env(concerns=(TEMPLATES,)).nginx_template

# The planes' counting endpoint for requests that failed the edge's Basic check
# (productionlab.auth.EDGE_FAILURE_PATH; kept here so rendering imports no Flask).
EDGE_FAILURE_PATH = "/_plab/edge-auth-failure"

# The edge's own answers: the contract's codes, with the edge's messages.
EDGE_MESSAGES = {
    400: "the request is malformed or the key is invalid",
    401: "authentication required",
    403: "forbidden",
    404: "no such route",
    405: "method not allowed",
    408: "the request took too long",
    413: "the body is too large",
    414: "the URI is too long",
    429: "too many requests",
    431: "the request headers are too large",
    500: "internal error",
    503: "the service is unavailable; retry later",
}
EDGE_ERRORS = tuple(
    (status, ERROR_CODES[status], message) for status, message in EDGE_MESSAGES.items()
)


def _environment(directory: Path) -> Environment:
    return Environment(  # noqa: S701 - renders config files, not HTML  # nosec B701
        loader=FileSystemLoader(str(directory)),
        undefined=StrictUndefined,
        keep_trailing_newline=True,
        trim_blocks=False,
    )


@dataclass
class EdgeConfig:
    ap_servers: list[str]
    cp_server: str
    tls_cert: str
    tls_key: str
    htpasswd: str
    https_listen: str = "127.0.0.1:8443"
    http_listen: str = "127.0.0.1:8080"
    public_https_port: int = 8443
    pid_path: str = "/tmp/nginx.pid"  # noqa: S108 - every caller overrides it  # nosec B108
    temp_dir: str = "/tmp/nginx"  # noqa: S108 - every caller overrides it  # nosec B108
    error_log: str = "stderr"
    access_log: str = "/dev/stdout"
    user: str | None = None
    worker_processes: str = "auto"
    edge_rate: int = 50
    edge_burst: int = 100
    admin_rate: int = 5
    admin_burst: int = 10
    console_rate: int = 5  # the operator console's edge limit, per client address
    console_burst: int = 40  # a page loads its stylesheet and script too
    max_body: str = "1m"
    body_buffer: str = "1m"
    conn_limit: int = 256
    # The watch routes (issue 13), per user: requests/s, burst, watches held open.
    watch_rate: int = 10
    watch_burst: int = 50
    watch_conns: int = 32
    # Longer than the longest watch (contract MAX_WATCH_WAIT, 300 s) plus its answer.
    watch_read_timeout: int = 330
    # Load balancers whose X-Forwarded-For the edge trusts (CIDR list; empty: off).
    trusted_proxies: list[str] = field(default_factory=list)
    extra: dict = field(default_factory=dict)

    def render(self, template: Path = NGINX_TEMPLATE) -> str:
        suffix = "" if self.public_https_port == 443 else f":{self.public_https_port}"
        proxies = list(parse_cidrs(" ".join(self.trusted_proxies)))  # ValueError when bad
        values = {
            **self.__dict__,
            **self.extra,
            "trusted_proxies": proxies,
            "https_port_suffix": suffix,
            "errors": EDGE_ERRORS,
            "edge_failure_path": EDGE_FAILURE_PATH,
            "key": contract.KEY_CLASS,
            "user_name": contract.USER_NAME_CLASS,
            "request_id": contract.REQUEST_ID_CLASS,
        }
        return _environment(template.parent).get_template(template.name).render(**values)


@dataclass
class RedisUser:
    name: str
    password: str
    extra: str = ""
    # A user that is not a plane's: its whole permission list after ``-@all`` (no
    # keys, no channels unless named here), e.g. the ha profile's replication user.
    rules: str = ""

    @property
    def password_sha256(self) -> str:
        return hashlib.sha256(self.password.encode()).hexdigest()


def plane_redis_users(secrets_dir: Path) -> list[RedisUser]:
    """The planes' redis users (``plab-ap``, ``plab-cp``), with the passwords
    generated under ``secrets_dir``."""
    return [
        RedisUser(f"plab-{plane}", (secrets_dir / f"redis_{plane}_password").read_text().strip())
        for plane in ("ap", "cp")
    ]


@dataclass
class RedisTLS:
    """Paths (as redis sees them) of redis's server certificate, key and client CA."""

    cert: str
    key: str
    ca: str

    @classmethod
    def in_directory(cls, directory: Path) -> RedisTLS:
        """The files ``secretgen.ensure_redis_tls`` names, in ``directory``."""
        cert, key = REDIS_TLS_SERVER
        return cls(
            cert=str(directory / cert), key=str(directory / key), ca=str(directory / REDIS_TLS_CA)
        )


@dataclass
class RedisReplication:
    """A data node of a replicated topology (compose's ``ha`` profile): how it
    authenticates to its primary and when it refuses writes."""

    user: str
    password: str
    min_replicas: int = 1
    max_lag: int = 10


@dataclass
class RedisClusterNode:
    """A master of compose's ``cluster`` profile: cluster mode on, its bus over
    TLS, its cluster state in ``nodes.conf`` beside the AOF (redis rewrites that
    file, so it lives in the data volume)."""

    node_timeout_ms: int = 5000
    # no: a master that is down makes only its own slots unavailable (503), not
    # every slot; the others keep answering (docs/RELIABILITY.md §10).
    require_full_coverage: bool = False


def render_redis_conf(
    *,
    port: int,
    data_dir: str,
    users: list[RedisUser],
    appendfsync: str = "everysec",
    bind: str | None = "127.0.0.1",
    logfile: str = "",
    pidfile: str | None = None,
    maxmemory: str = "0",
    tls: RedisTLS | None = None,
    replication: RedisReplication | None = None,
    cluster: RedisClusterNode | None = None,
) -> str:
    """redis.conf; with ``tls`` the plain port is closed (``port 0``) and redis
    listens on ``port`` with TLS only, requiring a client certificate; with
    ``replication`` the node replicates over TLS (``tls`` is then required); with
    ``cluster`` it is a Redis Cluster master whose bus is TLS too."""
    if replication is not None and tls is None:
        raise ValueError("a replicated redis.conf needs TLS (tls-replication)")
    if cluster is not None and tls is None:
        raise ValueError("a cluster node's redis.conf needs TLS (tls-cluster)")
    template = _environment(PACKAGE_TEMPLATES).get_template("redis.conf.j2")
    return template.render(
        port=port,
        data_dir=data_dir,
        users=users,
        appendfsync=appendfsync,
        bind=bind,
        logfile=logfile,
        pidfile=pidfile,
        maxmemory=maxmemory,
        tls=tls,
        replication=replication,
        cluster=cluster,
    )


# What each kind of sentinel user may run on a sentinel (verified with ACL LOG on
# redis 7.0 while redis-py discovered, and while three sentinels failed over; the
# sentinel's own command table has no keys, so no key pattern is given).
# A plane: what redis-py's Sentinel client sends to find the primary and the
# replicas (SENTINEL MASTERS and SLAVES; REPLICAS and GET-MASTER-ADDR-BY-NAME are
# the same reads under other names), and PING. It cannot fail over, reconfigure
# or remove a master.
SENTINEL_PLANE_RULES = (
    "+ping +sentinel|masters +sentinel|master +sentinel|slaves +sentinel|replicas"
    " +sentinel|get-master-addr-by-name"
)
# The sentinels with each other (``sentinel sentinel-user``): hello messages on
# their one channel, the down-vote during a failover, PING and their link name.
SENTINEL_PEER_RULES = (
    "&__sentinel__:hello +ping +publish +client|setname +sentinel|is-master-down-by-addr"
)
# The operator (docs/COMPOSE.md "Sentinel access and upgrades"): every SENTINEL
# subcommand (FAILOVER, SET, RESET, CONFIG, ...), INFO, ROLE and the ACL log; no
# SHUTDOWN, no ACL changes.
SENTINEL_ADMIN_RULES = "+ping +info +role +sentinel +acl|log +acl|whoami +client|list"
SENTINEL_HEALTH_RULES = "+ping"


@dataclass
class SentinelUsers:
    """A sentinel's ACL: no anonymous access (``user default off``), each plane
    may discover (``SENTINEL_PLANE_RULES``), ``peer`` is what the sentinels use
    with each other (``sentinel sentinel-user``/``sentinel-pass``), ``admin`` the
    operator's, ``health_name`` the healthcheck's (PING, no password). Passwords as
    SHA-256, like redis.conf, except ``sentinel-pass``, which a sentinel must send.

    ``lines()`` is what the start step (docker/redis-sentinel/start.sh) replaces
    in a sentinel's own copy of its config on every start."""

    planes: list[RedisUser]
    peer: RedisUser
    admin: RedisUser
    health_name: str = "plab-health"

    def lines(self) -> list[str]:
        def user(acl: RedisUser, rules: str) -> str:
            return f"user {acl.name} on #{acl.password_sha256} resetchannels -@all {rules}"

        return [
            "user default off resetpass resetchannels -@all",
            *(user(plane, SENTINEL_PLANE_RULES) for plane in self.planes),
            user(self.peer, SENTINEL_PEER_RULES),
            user(self.admin, SENTINEL_ADMIN_RULES),
            f"user {self.health_name} on nopass resetchannels -@all {SENTINEL_HEALTH_RULES}",
            f"sentinel sentinel-user {self.peer.name}",
            f"sentinel sentinel-pass {self.peer.password}",
        ]


@dataclass
class SentinelConfig:
    """One sentinel's config: the service it monitors (initially at ``primary``),
    the data nodes' ACL user it authenticates as, when it fails over, and who
    may talk to it (``users``)."""

    service: str
    primary: str
    primary_port: int
    user: RedisUser
    tls: RedisTLS
    users: SentinelUsers
    port: int = 26379
    quorum: int = 2
    down_after_ms: int = 5000
    failover_timeout_ms: int = 60000
    data_dir: str = "/data"
    bind: str = "0.0.0.0"  # noqa: S104 - in-container; the network is internal  # nosec B104

    def render(self) -> str:
        template = _environment(PACKAGE_TEMPLATES).get_template("sentinel.conf.j2")
        return template.render(**{**self.__dict__, "acl": self.users.lines()})
