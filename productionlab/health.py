"""Probes: ``/health`` (the process runs) and ``/ready`` (redis answers,
accepts writes and AOF writes are healthy). ``/metrics`` lives in metrics.py.

``/ready`` stays binary: memory filling up is a warning for metrics and
``check-prod`` (from 80 %), not a reason to take a plane out of rotation;
only redis refusing writes (``noeviction`` past ``maxmemory``) makes it 503.
"""

from __future__ import annotations

import logging

from flask import Blueprint, Response, jsonify
from redis.cluster import RedisCluster

from productionlab.errors import REDIS_RETRY_AFTER, StoreUnavailable
from productionlab.metrics import RedisMemory
from productionlab.services import services
from productionlab.store.connection import REDIS_FAULTS

log = logging.getLogger("productionlab.health")


def ready_problem() -> str | None:
    """Why this plane is not ready (redis, AOF, or redis refusing writes at
    maxmemory), or None: ``/ready`` and the console."""
    wired = services()
    try:
        client = wired.redis
        if isinstance(client, RedisCluster):
            # A cluster client's PING goes to one node, whichever holds the data:
            # every master must answer (no replicas, each holds slots).
            client.ping(target_nodes=RedisCluster.PRIMARIES)
            state = client.cluster_info().get("cluster_state")
            if state != "ok":
                return f"the redis cluster is not ok (cluster_state {state})"
        else:
            client.ping()
        problem = wired.durability.problem(fresh=True)
        if not problem and wired.layout is not None:
            try:
                wired.layout.require()
            except StoreUnavailable as exc:
                problem = exc.message
        if not problem and RedisMemory.read(client).refuses_writes:
            problem = "redis is at maxmemory and refuses writes"
        return problem
    except REDIS_FAULTS as exc:
        log.warning("not ready: redis %s", type(exc).__name__)
        return "the store does not answer"


def health_blueprint() -> Blueprint:
    bp = Blueprint("health", __name__)

    @bp.get("/health")
    def health() -> Response:
        return jsonify({"status": "ok"})

    @bp.get("/ready")
    def ready() -> Response:
        problem = ready_problem()
        if problem:
            log.warning("not ready: %s", problem)
            response = jsonify({"status": "unavailable"})
            response.status_code = 503
            response.headers["Retry-After"] = str(REDIS_RETRY_AFTER)
            return response
        return jsonify({"status": "ready"})

    return bp
