"""Prometheus metrics: one registry per plane's services (wiring.py builds it;
tests build many), the per-request counters every app records, and the
``/metrics`` route that serves them (Prometheus text; the edge does not route it)."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import redis
from flask import Blueprint, Flask, Response, g, request
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from productionlab.services import services
from productionlab.store.connection import REDIS_FAULTS, info_of_every_master

log = logging.getLogger("productionlab.metrics")

MEMORY_CACHE_SECONDS = 5.0
MEMORY_WARNING_RATIO = 0.8  # check-prod warns, and the documented alert fires, from here


@dataclass(frozen=True)
class RedisMemory:
    """Redis's own view of its memory bound (``INFO memory``)."""

    used: int
    maximum: int
    not_counted: int  # AOF and replication buffers: redis leaves them out of the bound

    @classmethod
    def read(cls, client: redis.Redis) -> RedisMemory:
        """One redis's memory; on a cluster the fullest master's (a cluster client's
        INFO goes to one node, not necessarily the one that refuses writes)."""
        masters = [cls.of(info) for info in info_of_every_master(client, "memory").values()]
        return max(masters, key=lambda m: (m.refuses_writes, m.ratio))

    @classmethod
    def of(cls, info: dict) -> RedisMemory:
        return cls(
            used=int(info.get("used_memory", 0)),
            maximum=int(info.get("maxmemory", 0)),
            not_counted=int(info.get("mem_not_counted_for_evict", 0)),
        )

    @property
    def ratio(self) -> float:
        """Counted memory over ``maxmemory``; 0 when there is no bound."""
        if self.maximum <= 0:
            return 0.0
        return max(0, self.used - self.not_counted) / self.maximum

    @property
    def refuses_writes(self) -> bool:
        """What ``noeviction`` does past the bound: redis answers OOM to every write
        command (its own test: counted memory above ``maxmemory``)."""
        return self.maximum > 0 and self.used - self.not_counted > self.maximum


class RedisMemoryCollector:
    """Gauges of redis memory, read on scrape and cached for a few seconds, so a
    burst of scrapes (several Prometheis, a curl loop) costs one ``INFO`` at most
    per :data:`MEMORY_CACHE_SECONDS`, and requests never cost one."""

    def __init__(self, client: Callable[[], redis.Redis | None], plane: str):
        self._client = client
        self._plane = plane
        self._lock = threading.Lock()
        self._cached: RedisMemory | None = None
        self._read_at = float("-inf")

    def current(self) -> RedisMemory | None:
        with self._lock:
            if time.monotonic() - self._read_at >= MEMORY_CACHE_SECONDS:
                client = self._client()
                if client is not None:
                    try:
                        self._cached = RedisMemory.read(client)
                    except REDIS_FAULTS as exc:
                        log.warning("redis memory unknown: %s", type(exc).__name__)
                        self._cached = None
                self._read_at = time.monotonic()
            return self._cached

    def _families(self, memory: RedisMemory | None) -> list[GaugeMetricFamily]:
        families = [
            GaugeMetricFamily(
                "plab_redis_used_memory_bytes", "Redis used_memory", labels=["plane"]
            ),
            GaugeMetricFamily(
                "plab_redis_maxmemory_bytes", "Redis maxmemory (0: unbounded)", labels=["plane"]
            ),
            GaugeMetricFamily(
                "plab_redis_memory_ratio",
                "Redis memory counted against maxmemory over maxmemory (alert from 0.8; "
                "at 1 redis refuses writes)",
                labels=["plane"],
            ),
        ]
        if memory is not None:
            values = (memory.used, memory.maximum, memory.ratio)
            for family, value in zip(families, values, strict=True):
                family.add_metric([self._plane], value)
        return families

    def describe(self) -> Iterator[GaugeMetricFamily]:
        return iter(self._families(None))  # registration must not ask redis

    def collect(self) -> Iterator[GaugeMetricFamily]:
        return iter(self._families(self.current()))


class Metrics:
    def __init__(self, plane: str):
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "plab_http_requests_total",
            "HTTP requests answered",
            ["plane", "method", "route", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "plab_http_request_duration_seconds",
            "Time to answer a request",
            ["plane", "route"],
            registry=self.registry,
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
        )
        self.redis_errors = Counter(
            "plab_redis_unavailable_total",
            "Requests answered 503 because redis failed",
            ["plane"],
            registry=self.registry,
        )
        self.watches_held = Gauge(
            "plab_watches_held",
            "Watches this process holds now (at most PLAB_WATCH_MAX_PER_PROCESS)",
            ["plane"],
            registry=self.registry,
        )
        self.plane = plane
        self.redis_memory: RedisMemoryCollector | None = None

    def render(self) -> Response:
        return Response(generate_latest(self.registry), mimetype=CONTENT_TYPE_LATEST)


def init_app(app: Flask, metrics: Metrics) -> None:
    """Count every answer of ``app`` in ``metrics`` (built by wiring.py)."""
    plane = metrics.plane
    # Label children are looked up once per (method, route, status) and kept:
    # ``labels()`` validates and locks on every call.
    counters: dict[tuple[str, str, int], Counter] = {}
    histograms: dict[str, Histogram] = {}

    @app.after_request
    def observe(response: Response) -> Response:
        asked = request._get_current_object()  # one context-local lookup, not four
        rule = asked.url_rule
        route = rule.rule if rule else "unmatched"
        status = response.status_code
        index = (asked.method, route, status)
        counter = counters.get(index)
        if counter is None:
            counter = counters.setdefault(
                index, metrics.requests.labels(plane, asked.method, route, str(status))
            )
        counter.inc()
        started = g.get("started")
        if started is not None:
            histogram = histograms.get(route)
            if histogram is None:
                histogram = histograms.setdefault(route, metrics.latency.labels(plane, route))
            histogram.observe(time.perf_counter() - started)
        if status == 503:
            metrics.redis_errors.labels(plane).inc()
        return response


def metrics_blueprint() -> Blueprint:
    """``/metrics``: Prometheus text (the edge does not route it)."""
    bp = Blueprint("metrics", __name__)

    @bp.get("/metrics")
    def metrics() -> Response:
        return services().metrics.render()

    return bp
