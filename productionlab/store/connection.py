"""The only place that knows the form of ``PLAB_REDIS_URL``.

``redis://`` / ``rediss://`` / ``unix://`` give a plain client,
``redis+sentinel://host:port[,host:port]/service[/db]`` a Sentinel-managed
master and ``redis+cluster://host:port[,host:port]`` a cluster client. Retries and
timeouts are connection options, never loops in callers. Single-node and
Sentinel clients are ``PinnableRedis`` (store/pinning.py), so a write and the
``WAIT`` after it can share one connection.

TLS (redis's own, SECURITY.md "Redis over TLS"): ``rediss://`` verifies the
server's certificate against ``PLAB_REDIS_TLS_CA_FILE`` (hostname included) and
presents the plane's client certificate; for Sentinel and cluster URLs the same
options apply when the CA is set.
"""

from __future__ import annotations

import logging
import ssl
import threading
from typing import Any
from urllib.parse import unquote, urlparse

import redis
from redis.backoff import ExponentialBackoff
from redis.cluster import ClusterNode, RedisCluster
from redis.commands.policies import (
    BasePolicyResolver,
    CommandPolicies,
    PolicyResolver,
    RequestPolicy,
    ResponsePolicy,
    StaticPolicyResolver,
)
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisClusterException
from redis.exceptions import TimeoutError as RedisTimeoutError
from redis.retry import Retry

from productionlab.settings import Settings
from productionlab.store import urls
from productionlab.store.pinning import PinnableRedis, SentinelConnection, SentinelSSLConnection

# What a redis call raises when the store fails, whatever the topology: redis-py's
# cluster client raises RedisClusterException, which is not a RedisError, when no
# node answers (or none could be found at start-up). Catch this, not RedisError,
# where a redis failure is survived (logged, retried, postponed).
REDIS_FAULTS: tuple[type[Exception], ...] = (redis.RedisError, RedisClusterException)

log = logging.getLogger("productionlab.store")


def info_of_every_master(client: redis.Redis, section: str) -> dict[str, dict]:
    """``INFO <section>`` of the redis (under the name ``""``), or of every master
    of a cluster by node name: a cluster client's INFO reaches one node only, and
    any master may be the full one or the one whose AOF is off."""
    if isinstance(client, RedisCluster):
        return client.info(section, target_nodes=RedisCluster.PRIMARIES)
    return {"": client.info(section)}


def config_of_every_master(client: redis.Redis, name: str) -> dict[str, str | None]:
    """``CONFIG GET <name>`` of the redis (under ``""``) or of every cluster master by
    node name, keyed as :func:`info_of_every_master` keys its answers."""
    if isinstance(client, RedisCluster):
        answers = client.config_get(name, target_nodes=RedisCluster.PRIMARIES)
        return {node: answer.get(name) for node, answer in answers.items()}
    return {"": client.config_get(name).get(name)}


SOCKET_TIMEOUT = 2.0
CONNECT_TIMEOUT = 1.0
POOL_WAIT = 2.0


def _common_options(settings: Settings) -> dict:
    return {
        "username": settings.redis_username,
        "password": settings.redis_password,
        "socket_timeout": SOCKET_TIMEOUT,
        "socket_connect_timeout": CONNECT_TIMEOUT,
        "health_check_interval": 15,
        "retry": Retry(ExponentialBackoff(cap=0.2, base=0.02), 2),
        "retry_on_error": [RedisConnectionError, RedisTimeoutError],
    }


def tls_options(settings: Settings) -> dict:
    """redis-py's SSL options for the configured certificates (empty: plain TCP)."""
    if not settings.redis_tls:
        return {}
    options: dict = {
        "ssl_ca_certs": str(settings.redis_tls_ca_file),
        "ssl_cert_reqs": "required",
        "ssl_check_hostname": True,
        "ssl_min_version": ssl.TLSVersion.TLSv1_2,
    }
    if settings.redis_tls_cert_file is not None:
        options["ssl_certfile"] = str(settings.redis_tls_cert_file)
        options["ssl_keyfile"] = str(settings.redis_tls_key_file)
    return options


class ClusterNotFound(RedisClusterException, AttributeError):
    """No cluster node answered when a ``StartingRedisCluster`` was first used.

    A ``RedisClusterException`` (a 503, a retried bootstrap), and an
    ``AttributeError`` too, so a probe of an attribute the client may lack
    (``getattr(client, "connection_pool", None)``, ``hasattr(client, "pin")``)
    answers "no" instead of failing while the cluster is away."""


class ScriptRouting(BasePolicyResolver):
    """EVAL and EVALSHA are routed by their KEYS, then redis-py's static policies.

    redis-py 8.1's cluster pipeline has no policy for EVALSHA and asks a node
    ``COMMAND GETKEYS`` for every script it holds, to learn that the script has
    keys: one more round trip per pipelined script (a limited read, a listing, a
    batch). A script sent alone is routed by its KEYS without asking; with this
    policy a pipelined one is too (test_cluster pins it)."""

    def __init__(self, fallback: PolicyResolver | None = None) -> None:
        keyed = CommandPolicies(
            request_policy=RequestPolicy.DEFAULT_KEYED,
            response_policy=ResponsePolicy.DEFAULT_KEYED,
        )
        super().__init__(
            {"core": {"eval": keyed, "evalsha": keyed}}, fallback or StaticPolicyResolver()
        )

    def with_fallback(self, fallback: PolicyResolver) -> PolicyResolver:
        return ScriptRouting(fallback)


SCRIPT_ROUTING = ScriptRouting()


class StartingRedisCluster(RedisCluster):
    """A cluster client that can be made while no cluster node answers.

    redis-py's ``RedisCluster`` asks a node for the slot map when it is made
    and raises ``RedisClusterException`` if none answers, so a plane started
    before its cluster (a compose start, a cluster restart) would exit at
    start-up, where over one redis it starts, answers 503 and its bootstrap
    retries. This client tries once when made; until a node answers, the first
    use of any of ``RedisCluster``'s own state (every command, pipeline and
    pub/sub goes through it) tries again and raises ``RedisClusterException``
    (a 503, a retried bootstrap) while none does. Once discovered it is a plain
    ``RedisCluster``: ``__getattr__`` is only consulted for missing attributes.
    """

    def __init__(self, **options: Any) -> None:
        state = self.__dict__
        state["_plab_options"] = options
        state["_plab_discovered"] = False
        state["_plab_discovering"] = None  # the thread inside RedisCluster.__init__
        state["_plab_lock"] = threading.Lock()
        try:
            self._plab_discover()
        except RedisClusterException as exc:
            log.warning("no redis cluster node answers yet (%s); will retry on use", exc)

    def _plab_discover(self) -> None:
        state = self.__dict__
        with state["_plab_lock"]:
            if state["_plab_discovered"]:
                return
            state["_plab_discovering"] = threading.get_ident()
            try:
                super().__init__(**state["_plab_options"])
            finally:
                state["_plab_discovering"] = None
            state["_plab_discovered"] = True

    def pipeline(self, transaction: Any = None, shard_hint: Any = None) -> Any:
        pipe = super().pipeline(transaction, shard_hint)
        # RedisCluster.pipeline() does not hand its policy resolver on (redis-py 8.1).
        pipe._policy_resolver = SCRIPT_ROUTING
        return pipe

    def __getattr__(self, name: str) -> Any:
        state = self.__dict__
        if (
            name.startswith("_plab_")
            or state.get("_plab_discovered", True)
            or state.get("_plab_discovering") == threading.get_ident()
        ):
            raise AttributeError(name)
        try:
            self._plab_discover()
        except RedisClusterException as exc:
            raise ClusterNotFound(str(exc)) from exc
        return getattr(self, name)

    def close(self) -> None:
        if self.__dict__.get("_plab_discovered"):
            super().close()


def cluster_seeds(url: str) -> list[ClusterNode]:
    """The seed nodes of a ``redis+cluster://`` URL (:func:`urls.cluster_seeds`)."""
    return [ClusterNode(host, port) for host, port in urls.cluster_seeds(url)]


def connect(settings: Settings, pool_size: int | None = None) -> redis.Redis:
    """A client for the configured topology with a pool sized to the server's threads."""
    size = pool_size or settings.redis_pool_size
    url = settings.redis_url
    options = _common_options(settings)
    tls = tls_options(settings)
    if url.startswith("redis+sentinel://"):
        target = urls.sentinel_target(url)
        sentinel_tls = {"ssl": True, **tls} if tls else {}
        # The sentinels take no anonymous client (SECURITY.md "Sentinel users"): the
        # plane logs in with its own redis user, which may only discover there.
        # No CLIENT SETINFO (driver_info None): that user may not run it.
        sentinel_auth = {
            "username": settings.redis_username,
            "password": settings.redis_password,
            "driver_info": None,
        }
        sentinel = redis.Sentinel(
            target.hosts,
            sentinel_kwargs={"socket_timeout": SOCKET_TIMEOUT, **sentinel_auth, **sentinel_tls},
            socket_timeout=SOCKET_TIMEOUT,
            **sentinel_tls,
        )
        return sentinel.master_for(
            target.service,
            redis_class=PinnableRedis,
            connection_class=SentinelSSLConnection if tls else SentinelConnection,
            db=target.db,
            max_connections=size,
            **{k: v for k, v in options.items() if k != "socket_timeout"},
        )
    if url.startswith("redis+cluster://"):
        return StartingRedisCluster(
            startup_nodes=cluster_seeds(url),
            policy_resolver=SCRIPT_ROUTING,
            max_connections=size,
            **({"ssl": True, **tls} if tls else {}),
            **options,
        )
    parsed = urlparse(url)
    if parsed.password and not options["password"]:
        options["password"] = unquote(parsed.password)
    if parsed.username and not options["username"]:
        options["username"] = unquote(parsed.username)
    if url.startswith("rediss://"):
        options.update(tls)
    pool = redis.BlockingConnectionPool.from_url(
        url, max_connections=size, timeout=POOL_WAIT, **options
    )
    return PinnableRedis(connection_pool=pool)
