"""Probes and metrics: ``/health`` (the process runs), ``/ready`` (redis answers
and AOF writes are healthy) and ``/metrics`` (Prometheus text; the edge does
not route it)."""

from __future__ import annotations

import logging

import redis
from flask import Blueprint, Response, current_app, jsonify

from productionlab.errors import REDIS_RETRY_AFTER

log = logging.getLogger("productionlab.health")


def health_blueprint() -> Blueprint:
    bp = Blueprint("health", __name__)

    @bp.get("/health")
    def health() -> Response:
        return jsonify({"status": "ok"})

    @bp.get("/ready")
    def ready() -> Response:
        durability = current_app.extensions["plab_durability"]
        try:
            current_app.extensions["plab_redis"].ping()
            problem = durability.problem(fresh=True)
        except redis.RedisError as exc:
            log.warning("not ready: redis %s", type(exc).__name__)
            problem = "the store does not answer"
        if problem:
            log.warning("not ready: %s", problem)
            response = jsonify({"status": "unavailable"})
            response.status_code = 503
            response.headers["Retry-After"] = str(REDIS_RETRY_AFTER)
            return response
        return jsonify({"status": "ready"})

    @bp.get("/metrics")
    def metrics() -> Response:
        return current_app.extensions["plab_metrics"].render()

    return bp
