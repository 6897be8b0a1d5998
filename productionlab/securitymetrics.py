"""Security and recovery events as Prometheus metrics (monitoring/alerts.yml
alerts on them).

Cheap on the hot path: the counters live in the process (one increment of a
cached label child, no redis, no lock beyond prometheus_client's own); what
needs redis or the disk is a gauge computed when /metrics is scraped.

Counters, on both planes:

- ``plab_auth_failures_total{reason}``: failed logins (Basic or token) by the
  reason the login guard is told;
- ``plab_throttled_total{limiter}``: every 429 the app answers (what the edge
  passes back to clients), by the limiter that refused: ``user_limit`` (the
  per-user window), ``login_guard`` (brute-force guard), ``flask_limiter``
  (per-route limits on /auth and /admin), ``other``. The edge's own
  ``limit_req`` 429s never reach an app: they are in the edge's access log;
- ``plab_token_reuse_detected_total``: a spent refresh token presented again.

Gauges, on the control plane, computed on scrape:

- ``plab_audit_verify_ok`` (1/0, absent until the first verification) and
  ``plab_audit_last_good_verify_timestamp_seconds``: the last
  ``audit verify`` (CLI or admin API) records its result in redis
  (:data:`AUDIT_VERIFY_KEY`), so every control-plane process reports it;
- ``plab_backup_last_success_timestamp_seconds`` and ``plab_backup_files``:
  the newest complete backup file in the backup directory.

Redis memory headroom is ``plab_redis_memory_ratio`` (metrics.py).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from pathlib import Path

import redis
from flask import Flask, Response, g, has_app_context, has_request_context
from prometheus_client import CollectorRegistry, Counter
from prometheus_client.core import GaugeMetricFamily

from productionlab.services import services
from productionlab.settings import Settings
from productionlab.store.connection import REDIS_FAULTS

log = logging.getLogger("productionlab.metrics")

AUDIT_VERIFY_KEY = "{plab}:metrics:audit-verify"
LIMITERS = ("user_limit", "login_guard", "flask_limiter", "other")


class SecurityMetrics:
    def __init__(self, registry: CollectorRegistry, plane: str):
        self.plane = plane
        self.auth_failures = Counter(
            "plab_auth_failures_total",
            "Failed logins (Basic or token), by reason",
            ["plane", "reason"],
            registry=registry,
        )
        self.throttled = Counter(
            "plab_throttled_total",
            "Requests the app answered 429, by the limiter that refused them",
            ["plane", "limiter"],
            registry=registry,
        )
        self.token_reuse = Counter(
            "plab_token_reuse_detected_total",
            "Spent refresh tokens presented again (the family is revoked)",
            ["plane"],
            registry=registry,
        )
        # Every series exists from the start at 0, so rate() and increase() see
        # the first event (a counter born at 1 hides it).
        self._throttled = {name: self.throttled.labels(plane, name) for name in LIMITERS}
        self._failures: dict[str, Counter] = {}
        self._reuse = self.token_reuse.labels(plane)

    def auth_failed(self, reason: str) -> None:
        child = self._failures.get(reason)
        if child is None:
            child = self._failures.setdefault(reason, self.auth_failures.labels(self.plane, reason))
        child.inc()

    def refused(self, limiter: str) -> None:
        self._throttled.get(limiter, self._throttled["other"]).inc()

    def reuse_detected(self) -> None:
        self._reuse.inc()


def _current() -> SecurityMetrics | None:
    if not has_app_context():
        return None  # the CLI: no process metrics to move
    return services().security_metrics


def auth_failed(reason: str) -> None:
    metrics = _current()
    if metrics is not None:
        metrics.auth_failed(reason)


def throttled(limiter: str) -> None:
    """Say which limiter refuses this request (counted when its 429 is sent)."""
    if has_request_context():
        g.plab_limiter = limiter


def token_reuse_detected() -> None:
    metrics = _current()
    if metrics is not None:
        metrics.reuse_detected()


def record_audit_verification(client: redis.Redis, ok: bool, now: float | None = None) -> None:
    """Keep the result of an audit verification for the control plane's gauges."""
    now = time.time() if now is None else now
    fields = {"ok": int(ok), "at": f"{now:.3f}"}
    if ok:
        fields["last_good"] = f"{now:.3f}"
    try:
        client.hset(AUDIT_VERIFY_KEY, mapping=fields)
    except REDIS_FAULTS as exc:  # the verification itself stands; only its gauge is late
        log.warning("could not record the audit verification: %s", type(exc).__name__)


def newest_backup(directory: Path) -> tuple[int, float | None]:
    """How many backup files there are, and the newest one's mtime."""
    from productionlab.backup_format import SUFFIX

    try:
        stats = [p.stat().st_mtime for p in directory.glob(f"*{SUFFIX}") if p.is_file()]
    except OSError:
        return 0, None
    return len(stats), (max(stats) if stats else None)


class RecoveryCollector:
    """Gauges of the audit verification and the backups, computed on scrape."""

    def __init__(self, client: redis.Redis, settings: Settings):
        self._client = client
        self._settings = settings

    def _families(self, live: bool) -> list[GaugeMetricFamily]:
        plane = self._settings.plane
        ok = GaugeMetricFamily(
            "plab_audit_verify_ok",
            "Result of the last audit verification (1 good)",
            labels=["plane"],
        )
        good = GaugeMetricFamily(
            "plab_audit_last_good_verify_timestamp_seconds",
            "When the audit log last verified good (unix time)",
            labels=["plane"],
        )
        files = GaugeMetricFamily("plab_backup_files", "Backup files present", labels=["plane"])
        newest = GaugeMetricFamily(
            "plab_backup_last_success_timestamp_seconds",
            "When the newest backup file was written (unix time)",
            labels=["plane"],
        )
        if live:
            try:
                state = self._client.hgetall(AUDIT_VERIFY_KEY)
            except REDIS_FAULTS as exc:
                log.warning("audit verification state unknown: %s", type(exc).__name__)
                state = {}
            state = {
                (k.decode() if isinstance(k, bytes) else k): (
                    v.decode() if isinstance(v, bytes) else v
                )
                for k, v in state.items()
            }
            if "ok" in state:
                ok.add_metric([plane], float(state["ok"]))
            if "last_good" in state:
                good.add_metric([plane], float(state["last_good"]))
            count, mtime = newest_backup(self._settings.backup_dir)
            files.add_metric([plane], count)
            if mtime is not None:
                newest.add_metric([plane], mtime)
        return [ok, good, files, newest]

    def describe(self) -> Iterator[GaugeMetricFamily]:
        return iter(self._families(False))  # registration must not ask redis

    def collect(self) -> Iterator[GaugeMetricFamily]:
        return iter(self._families(True))


def init_app(app: Flask, metrics: SecurityMetrics) -> None:
    """Count the 429s of ``app`` by limiter in ``metrics`` (built by wiring.py)."""

    @app.after_request
    def count_refusals(response: Response) -> Response:
        if response.status_code == 429:
            metrics.refused(g.get("plab_limiter", "other"))
        return response

    return metrics
