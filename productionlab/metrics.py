"""Prometheus metrics, one registry per app (tests build many apps)."""

from __future__ import annotations

import time

from flask import Flask, Response, g, request
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST


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
        self.plane = plane

    def render(self) -> Response:
        return Response(generate_latest(self.registry), mimetype=CONTENT_TYPE_LATEST)


def init_app(app: Flask, plane: str) -> Metrics:
    metrics = Metrics(plane)
    app.extensions["plab_metrics"] = metrics
    # Label children are looked up once per (method, route, status) and kept:
    # ``labels()`` validates and locks on every call.
    counters: dict[tuple[str, str, int], Counter] = {}
    histograms: dict[str, Histogram] = {}

    @app.after_request
    def observe(response: Response) -> Response:
        route = request.url_rule.rule if request.url_rule else "unmatched"
        status = response.status_code
        index = (request.method, route, status)
        counter = counters.get(index)
        if counter is None:
            counter = counters.setdefault(
                index, metrics.requests.labels(plane, request.method, route, str(status))
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

    return metrics
