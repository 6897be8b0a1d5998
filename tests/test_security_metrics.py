"""Security events move their Prometheus series on a live stack, read straight
from the planes' /metrics (as tests/test_observability.py does): failed logins
by reason, throttled requests by limiter, refresh-token reuse, the audit
verification result and its age, backup age, and redis memory headroom
(plab_redis_memory_ratio, from metrics.py)."""

from __future__ import annotations

import time

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import admin_of, create_user
from tests.http_client import new_session


def scrape(stack, port: int) -> dict[tuple[str, tuple], float]:
    with new_session() as session:
        text = session.get(f"http://{stack.config.bind}:{port}/metrics", timeout=15).text
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(stack, name: str, planes=("ap", "cp"), **labels: str) -> float:
    """The sum of a series over the given planes' processes (0 when absent)."""
    ports = []
    if "ap" in planes:
        ports += list(stack.config.ap_ports)
    if "cp" in planes:
        ports.append(stack.config.cp_port)
    total = 0.0
    for port in ports:
        for (sample, sample_labels), number in scrape(stack, port).items():
            if sample == name and all(dict(sample_labels).get(k) == v for k, v in labels.items()):
                total += number
    return total


@pytest.fixture(scope="module")
def watched():
    from tests.conftest import RAISED_LIMITS, running_stack

    yield from running_stack(
        ap_workers=1, **RAISED_LIMITS, extra_env={"PLAB_AUTH_ADDRESS_RATE": "12/minute"}
    )


def test_failed_logins_are_counted_by_reason(watched):
    admin = admin_of(watched)
    user = create_user(admin, "reader", ["m-"])
    before = value(watched, "plab_auth_failures_total")
    user.password = "wrong-" + (user.password or "")
    response = user.get("/v1/kv/m-x")
    assert response.status_code == 401
    deadline = time.monotonic() + 30
    while value(watched, "plab_auth_failures_total") == before and time.monotonic() < deadline:
        time.sleep(0.2)
    after = {
        reason: value(watched, "plab_auth_failures_total", reason=reason)
        for reason in ("bad_credentials", "edge_basic")
    }
    assert sum(after.values()) >= before + 1


def test_the_user_limit_is_counted_as_throttling(stack_factory):
    limited = stack_factory(ap_workers=1, edge_rate=5000, edge_burst=5000, user_rate="8/minute")
    admin = admin_of(limited)
    user = create_user(admin, "writer", ["t-"])
    before = value(limited, "plab_throttled_total", limiter="user_limit")
    statuses = [user.put(f"/v1/kv/t-{i}", data=b"x").status_code for i in range(12)]
    assert 429 in statuses, statuses
    assert value(limited, "plab_throttled_total", limiter="user_limit") == before + statuses.count(
        429
    )


def test_the_login_guard_is_counted_as_throttling(watched):
    admin = admin_of(watched)
    # login guard: 10 failures a minute per (address, user), then 429 even for the right one
    victim = create_user(admin, "reader", ["g-"])
    password = victim.password
    before = value(watched, "plab_throttled_total", limiter="login_guard")
    victim.password = "wrong"
    for _ in range(12):
        victim.get("/v1/kv/g-x")
    victim.password = password
    assert victim.get("/v1/kv/g-x").status_code == 429
    assert value(watched, "plab_throttled_total", limiter="login_guard") >= before + 1


def test_refresh_token_reuse_and_flask_limiter_are_counted(watched):
    admin = admin_of(watched)
    user = create_user(admin, "reader", ["r-"])
    before = value(watched, "plab_token_reuse_detected_total")
    issued = user.post("/auth/token")
    assert issued.status_code == 200, issued.text
    refresh = issued.json()["refresh_token"]
    anonymous = type(user)(watched)
    first = anonymous.post("/auth/refresh", json={"refresh_token": refresh})
    assert first.status_code == 200, first.text
    again = anonymous.post("/auth/refresh", json={"refresh_token": refresh})
    assert again.status_code == 401
    assert value(watched, "plab_token_reuse_detected_total") == before + 1
    # Flask-Limiter on /auth: 12 a minute per address
    before = value(watched, "plab_throttled_total", limiter="flask_limiter")
    statuses = [user.post("/auth/token").status_code for _ in range(16)]
    assert 429 in statuses, statuses
    assert value(watched, "plab_throttled_total", limiter="flask_limiter") >= before + 1


def test_audit_verification_and_backup_age_are_gauges_on_the_control_plane(watched):
    admin = admin_of(watched)
    started = time.time()
    verified = admin.post("/admin/audit/verify")
    assert verified.status_code == 200, verified.text
    assert value(watched, "plab_audit_verify_ok", planes=("cp",)) == 1
    last_good = value(watched, "plab_audit_last_good_verify_timestamp_seconds", planes=("cp",))
    assert started - 1 <= last_good <= time.time() + 1
    before = value(watched, "plab_backup_files", planes=("cp",))
    made = admin.post("/admin/backups")
    assert made.status_code in (200, 201), made.text
    assert value(watched, "plab_backup_files", planes=("cp",)) == before + 1
    newest = value(watched, "plab_backup_last_success_timestamp_seconds", planes=("cp",))
    assert started - 1 <= newest <= time.time() + 1


def test_a_failed_audit_verification_sets_the_gauge_to_0(watched):
    from productionlab.securitymetrics import record_audit_verification

    client = watched.redis_client("cp")
    record_audit_verification(client, True, now=1000.0)
    record_audit_verification(client, False, now=2000.0)
    assert value(watched, "plab_audit_verify_ok", planes=("cp",)) == 0
    # the last good one stays what it was: its age grows until a good verification
    assert value(watched, "plab_audit_last_good_verify_timestamp_seconds", planes=("cp",)) == 1000
    assert admin_of(watched).post("/admin/audit/verify").status_code == 200
    assert value(watched, "plab_audit_verify_ok", planes=("cp",)) == 1


def test_redis_memory_headroom_is_reported(watched):
    """metrics.py's gauge, which PlabRedisMemoryHigh reads: the stack's redis runs
    with a maxmemory, so the ratio is known, above 0 and below the alert's 0.8."""
    ratio = value(watched, "plab_redis_memory_ratio", planes=("cp",))
    maximum = value(watched, "plab_redis_maxmemory_bytes", planes=("cp",))
    assert maximum > 0
    assert 0 < ratio < 0.8
