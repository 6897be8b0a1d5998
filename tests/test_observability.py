"""JSON request logs (never a secret or value), Prometheus metrics, probes."""

from __future__ import annotations

import json
import time

import pytest
import redis

from tests.layout_kit import counters


def wait_for_line(path, needle: str, timeout: float = 5.0) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for line in path.read_text(errors="replace").splitlines():
            if needle in line:
                return json.loads(line)
        time.sleep(0.1)
    raise AssertionError(f"{needle} not logged in {path}")


def test_one_json_line_per_request_without_secrets_or_values(stack, make_user, key):
    writer = make_user("writer", ["*"])
    secret_value = "value-that-must-not-be-logged"
    response = writer.post(f"/write/{key}/{secret_value}", headers={"X-Request-ID": f"log-{key}"})
    assert response.status_code == 201
    lines = []
    for log in stack.log_dir.glob("ap*.log"):
        lines += [json.loads(line) for line in log.read_text().splitlines() if f"log-{key}" in line]
    assert len(lines) == 1
    entry = lines[0]
    assert entry["request_id"] == f"log-{key}"
    assert entry["user"] == writer.name
    assert entry["route"] == "/write/<tail:_rest>"
    assert entry["status"] == 201
    assert entry["latency_ms"] >= 0
    everything = "".join(p.read_text(errors="replace") for p in stack.log_dir.iterdir())
    assert secret_value not in everything
    assert writer.password not in everything


def test_edge_access_log_is_json_and_names_routes_not_paths(stack, admin, key):
    admin.post(f"/write/{key}/edge-secret-value", headers={"X-Request-ID": f"edge-{key}"})
    entry = wait_for_line(stack.log_dir / "edge-access.log", f"edge-{key}")
    assert entry["route"] == "/write"
    assert entry["status"] == 201
    assert "edge-secret-value" not in (stack.log_dir / "edge-access.log").read_text()


def test_metrics_count_requests_per_route(stack, admin, key):
    port = stack.config.ap_ports[0]
    before = admin.direct("GET", port, "/metrics").text
    for _ in range(3):
        admin.direct("GET", port, f"/read/{key}")
    after = admin.direct("GET", port, "/metrics")
    assert after.status_code == 200
    assert after.headers["Content-Type"].startswith("text/plain")

    def count(text: str) -> float:
        for line in text.splitlines():
            if (
                line.startswith("plab_http_requests_total{")
                and 'route="/read/<tail:_rest>"' in line
                and 'status="404"' in line
            ):
                return float(line.rsplit(" ", 1)[1])
        return 0.0

    assert count(after.text) - count(before) == 3
    assert "plab_http_request_duration_seconds_bucket" in after.text


def test_health_and_ready_on_each_plane(stack, anonymous):
    for port in [*stack.config.ap_ports, stack.config.cp_port]:
        health = anonymous.direct("GET", port, "/health")
        assert health.status_code == 200 and health.json() == {"status": "ok"}
        ready = anonymous.direct("GET", port, "/ready")
        assert ready.status_code == 200 and ready.json() == {"status": "ready"}


def test_apps_send_no_server_header(stack, anonymous):
    response = anonymous.direct("GET", stack.config.ap_ports[0], "/health")
    assert "Server" not in response.headers
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    assert "X-Request-ID" in response.headers


def test_framework_errors_are_json(stack, admin):
    port = stack.config.ap_ports[0]
    for method, path, status in (
        ("GET", "/nope", 404),
        ("DELETE", "/read/x", 405),
        ("POST", "/v1/kv", 405),
    ):
        response = admin.direct(method, port, path)
        assert response.status_code == status
        assert response.json()["error"]["code"] in ("not_found", "method_not_allowed")
        assert "<html" not in response.text.lower()


def test_apps_send_security_headers_on_answers_and_errors(stack, admin):
    port = stack.config.ap_ports[0]
    for response in (
        admin.direct("GET", port, "/health"),
        admin.direct("GET", port, "/nope"),
        admin.direct("GET", port, "/read/a.b"),
        admin.direct("GET", port, "/health", headers={"X-Forwarded-Proto": "https"}),
    ):
        headers = response.headers
        assert headers["X-Frame-Options"] == "DENY"
        assert headers["Referrer-Policy"] == "no-referrer"
        assert "default-src 'none'" in headers["Content-Security-Policy"]
        assert headers["Cache-Control"] == "no-store"
    # The edge (a trusted proxy) says the client used HTTPS: HSTS is sent.
    assert "Strict-Transport-Security" in response.headers


def metric(text: str, name: str, plane: str) -> float:
    for line in text.splitlines():
        if line.startswith(f'{name}{{plane="{plane}"}}'):
            return float(line.split()[-1])
    raise AssertionError(f"{name} for {plane} not in the metrics")


def test_redis_memory_gauges(stack, admin):
    body = admin.direct("GET", stack.config.ap_ports[0], "/metrics").text
    maximum = metric(body, "plab_redis_maxmemory_bytes", "ap")
    assert maximum == 256 * 1024**2  # the local stack's default bound
    used = metric(body, "plab_redis_used_memory_bytes", "ap")
    assert 0 < used < maximum
    assert 0 < metric(body, "plab_redis_memory_ratio", "ap") < 0.8


def test_a_full_redis_refuses_writes_with_503_keeps_reads_and_fails_ready(stack_factory):
    """noeviction at maxmemory: writes 503 + Retry-After (never 500) and change
    nothing, reads and deletes work, /ready is 503 on every plane; once memory is
    freed all is back. Filled for real, on a redis started with a small maxmemory."""
    from tests.conftest import SMALL_STACK, admin_of, create_user

    full = stack_factory(**SMALL_STACK, extra_env={"PLAB_REDIS_MAXMEMORY": "12mb"})
    admin = admin_of(full)
    writer = create_user(admin, "writer", ["full-"])
    assert writer.put("/v1/kv/full-kept", data=b"kept").status_code == 201
    assert writer.put("/v1/kv/full-doomed", data=b"doomed").status_code == 201
    client = full.redis_client("cp")
    # Fill past the bound by half a megabyte (an allow-oom script may cross it, as
    # one large write landing just under it does), so the refusal does not hinge
    # on the size of the next command's query buffer.
    overfill = client.register_script(
        "#!lua flags=allow-oom\nreturn redis.call('SET', KEYS[1], ARGV[1])"
    )
    filler = b"f" * (256 * 1024)
    for i in range(400):
        memory = client.info("memory")
        counted = memory["used_memory"] - memory.get("mem_not_counted_for_evict", 0)
        if counted > memory["maxmemory"] + 512 * 1024:
            break
        overfill(keys=[f"{{plab}}:test-filler:{i}"], args=[filler])
    else:
        raise AssertionError("redis never got full: maxmemory is not set")
    with pytest.raises(redis.exceptions.OutOfMemoryError):
        client.set("{plab}:test-filler:probe", b"1")
    ports = [full.config.cp_port, *full.config.ap_ports]
    try:
        versions = counters(client)  # every shard's
        for response in (
            writer.put("/v1/kv/full-new", data=b"v"),
            writer.post("/write/full-new/v"),
            writer.put("/v1/kv/full-kept", data=b"changed"),
            admin.put("/ops/v1/kv/full-new", data=b"v"),
        ):
            assert response.status_code == 503, response.text
            assert response.headers["Retry-After"].isdigit()
            assert response.json()["error"]["code"] == "unavailable"
        assert counters(client) == versions
        read = writer.get("/v1/kv/full-kept")
        assert read.status_code == 200 and read.content == b"kept"
        assert writer.get("/read/full-kept").json()["value"] == "kept"
        assert admin.get("/ops/v1/kv/full-kept").content == b"kept"  # operators read too
        # a watch is a read too (the prefix watch's counter fast-forward is allowed)
        for watch in ("/v1/watch?prefix=full-&wait=0", "/v1/watch/full-kept?wait=0"):
            watched = writer.get(watch)
            assert watched.status_code == 200, watched.text
        # the admin API stays usable to free memory: its route limit fails open
        listed = admin.get("/admin/users")
        assert listed.status_code == 200, listed.text
        assert writer.delete("/v1/kv/full-doomed").status_code == 204
        for port in ports:
            ready = admin.direct("GET", port, "/ready")
            assert ready.status_code == 503 and ready.headers["Retry-After"].isdigit()
            assert admin.direct("GET", port, "/health").status_code == 200
        deadline = time.monotonic() + 60  # the gauge is cached for a few seconds
        while True:
            body = admin.direct("GET", full.config.ap_ports[0], "/metrics").text
            if metric(body, "plab_redis_memory_ratio", "ap") >= 0.8:
                break
            assert time.monotonic() < deadline, "the memory ratio never reached 0.8"
            time.sleep(0.5)
    finally:
        for i in range(400):
            client.delete(f"{{plab}}:test-filler:{i}")
    for port in ports:
        assert admin.direct("GET", port, "/ready").status_code == 200
    assert writer.put("/v1/kv/full-new", data=b"v").status_code == 201
    client.close()
