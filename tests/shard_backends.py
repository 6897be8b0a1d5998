"""The redis backends the shard-layout tests run on, as fixtures (a pytest plugin:
a test module names it in ``pytest_plugins``, and imports nothing from it, so
pytest loads it first): a single redis-server (the KV core's one-script
composition, and the cluster's three scripts on it) and a real three-master
Redis Cluster, each started once per test module. Their shared helpers
(``store_for``, ``fresh``, ``actor``) are in ``layout_kit.py``."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import redis

from productionlab.redis_process import RedisProcess
from tests.cluster_kit import RedisClusterKit

BACKENDS = ("single", "single-3-scripts", "cluster")


@pytest.fixture(scope="module")
def single() -> Iterator[redis.Redis]:
    with RedisProcess() as client:
        yield client


@pytest.fixture(scope="module")
def cluster() -> Iterator[RedisClusterKit]:
    kit = RedisClusterKit().start()
    yield kit
    kit.stop()


@pytest.fixture(scope="module")
def cluster_client(cluster) -> Iterator[redis.RedisCluster]:
    client = cluster.client()
    yield client
    client.close()


def make_backend(request, name: str) -> tuple[str, redis.Redis, RedisClusterKit | None]:
    if name == "cluster":
        kit = request.getfixturevalue("cluster")
        return name, request.getfixturevalue("cluster_client"), kit
    return name, request.getfixturevalue("single"), None


@pytest.fixture(params=BACKENDS)
def backend(request) -> tuple[str, redis.Redis, RedisClusterKit | None]:
    return make_backend(request, request.param)


@pytest.fixture(params=["single", "cluster"])
def where(request) -> tuple[str, redis.Redis, RedisClusterKit | None]:
    """A single redis (one script per write), then a real cluster."""
    return make_backend(request, request.param)


@pytest.fixture(params=["single-3-scripts", "cluster"])
def three_scripts(request) -> tuple[str, redis.Redis, RedisClusterKit | None]:
    """The backends where a write is three scripts (holds outlive a script)."""
    return make_backend(request, request.param)
