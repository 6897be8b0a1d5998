"""The only place that knows the form of ``PLAB_REDIS_URL``.

``redis://`` / ``rediss://`` / ``unix://`` give a plain client,
``redis+sentinel://host:port[,host:port]/service[/db]`` a Sentinel-managed
master and ``redis+cluster://host:port`` a cluster client. Retries and
timeouts are connection options, never loops in callers.
"""

from __future__ import annotations

from urllib.parse import unquote, urlparse

import redis
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from redis.retry import Retry

from productionlab.settings import Settings

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


def connect(settings: Settings, pool_size: int | None = None) -> redis.Redis:
    """A client for the configured topology with a pool sized to the server's threads."""
    size = pool_size or settings.redis_pool_size
    url = settings.redis_url
    options = _common_options(settings)
    if url.startswith("redis+sentinel://"):
        parsed = urlparse(url)
        hosts = []
        for part in parsed.netloc.rsplit("@", 1)[-1].split(","):
            host, _, port = part.partition(":")
            hosts.append((host, int(port or 26379)))
        path = [p for p in parsed.path.split("/") if p]
        if not path:
            raise ValueError("redis+sentinel:// URL needs a service name: /mymaster[/db]")
        service, db = path[0], int(path[1]) if len(path) > 1 else 0
        sentinel = redis.Sentinel(
            hosts,
            sentinel_kwargs={"socket_timeout": SOCKET_TIMEOUT},
            socket_timeout=SOCKET_TIMEOUT,
        )
        return sentinel.master_for(
            service,
            db=db,
            max_connections=size,
            **{k: v for k, v in options.items() if k != "socket_timeout"},
        )
    if url.startswith("redis+cluster://"):
        from redis.cluster import RedisCluster

        parsed = urlparse(url)
        return RedisCluster(
            host=parsed.hostname,
            port=parsed.port or 6379,
            max_connections=size,
            **options,
        )
    parsed = urlparse(url)
    if parsed.password and not options["password"]:
        options["password"] = unquote(parsed.password)
    if parsed.username and not options["username"]:
        options["username"] = unquote(parsed.username)
    pool = redis.BlockingConnectionPool.from_url(
        url, max_connections=size, timeout=POOL_WAIT, **options
    )
    return redis.Redis(connection_pool=pool)
