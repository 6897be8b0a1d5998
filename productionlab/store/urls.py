"""What a ``PLAB_REDIS_URL`` names, parsed once for both the settings check (a
malformed URL is a configuration error at start, with the variable's name) and
:func:`productionlab.store.connection.connect`. Only the standard library and
redis-py's own URL parser, so settings can import it."""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import urlparse

from redis.connection import parse_url

SCHEMES = ("redis://", "rediss://", "unix://", "redis+sentinel://", "redis+cluster://")


@dataclass(frozen=True)
class SentinelTarget:
    hosts: list[tuple[str, int]]
    service: str
    db: int


def _hosts(netloc: str, scheme: str, default_port: int) -> list[tuple[str, int]]:
    """The ``host[:port]`` list of a URL's network location (credentials dropped);
    IPv6 hosts in brackets. A part without a host, or a bad port: ValueError."""
    hosts = []
    for part in netloc.rsplit("@", 1)[-1].split(","):
        node = urlparse(f"//{part}")
        if not node.hostname:
            raise ValueError(f"{scheme} URL names no host in {part!r}")
        hosts.append((node.hostname, node.port or default_port))  # a bad port: ValueError
    return hosts


def cluster_seeds(url: str) -> list[tuple[str, int]]:
    """The nodes a ``redis+cluster://host:port[,host:port...]`` URL names (port
    6379 when left out): the client asks the first that answers for the slot map,
    so one node down at start-up does not keep the planes from the others."""
    netloc = url.removeprefix("redis+cluster://").split("/", 1)[0]
    return _hosts(netloc, "redis+cluster://", 6379)


def sentinel_target(url: str) -> SentinelTarget:
    """``redis+sentinel://host[:port][,host[:port]...]/service[/db]`` (port 26379)."""
    parsed = urlparse(url)
    hosts = _hosts(parsed.netloc, "redis+sentinel://", 26379)
    path = [p for p in parsed.path.split("/") if p]
    if not path:
        raise ValueError("redis+sentinel:// URL needs a service name: /mymaster[/db]")
    if len(path) > 2 or (len(path) == 2 and not (path[1].isascii() and path[1].isdigit())):
        raise ValueError("redis+sentinel:// URL's path is /service[/db], db a number")
    return SentinelTarget(hosts, path[0], int(path[1]) if len(path) == 2 else 0)


def url_problem(url: str) -> str | None:
    """Why this URL cannot be used, or None."""
    if not url.startswith(SCHEMES):
        return "has an unknown scheme"
    try:
        if url.startswith("redis+cluster://"):
            cluster_seeds(url)
        elif url.startswith("redis+sentinel://"):
            sentinel_target(url)
        else:
            parse_url(url)  # redis-py's own parser: a bad port raises
            if url.startswith(("redis://", "rediss://")):
                path = urlparse(url).path.strip("/")
                if path and not path.isdigit():  # redis-py would quietly use db 0
                    raise ValueError(f"the database {path!r} is not a number")
    except ValueError as exc:
        return f"is malformed: {exc}"
    return None


def redacted(url: str) -> str:
    """The URL with any password in it replaced, for messages and logs."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        return url
    netloc, slash, path = rest.partition("/")
    userinfo, at, hosts = netloc.rpartition("@")
    if not at:
        return url
    user, colon, _ = userinfo.partition(":")
    return f"{scheme}://{user}{':***' if colon else ''}@{hosts}{slash}{path}"
