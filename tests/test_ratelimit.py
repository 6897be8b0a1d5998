"""Rate limits: per address at the edge, per user in the apps. A limited
request gets 429 with Retry-After and JSON, and nothing is written."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest
import redis

from productionlab.errors import RateLimited
from productionlab.ratelimit import limit_spent
from tests.conftest import admin_of, create_user
from tests.layout_kit import counters


@pytest.fixture(scope="module")
def edge_limited_stack():
    from tests.conftest import running_stack

    yield from running_stack(ap_workers=1, edge_rate=5, edge_burst=10)


@pytest.fixture(scope="module")
def default_limits_stack():
    """Per-user limit 20/minute in the apps; the edge generous so only the apps limit."""
    from tests.conftest import running_stack

    yield from running_stack(
        ap_workers=1,
        user_rate="20/minute",
        edge_rate=1000,
        edge_burst=1000,
        admin_rate=1000,
        admin_burst=1000,
    )


def version_counter(stack) -> int:
    """Every shard's version counter summed: one more per write."""
    client = stack.redis_client()
    value = sum(counters(client))
    client.close()
    return value


def test_edge_limits_bursts_per_address(edge_limited_stack):
    """Edge limit configured at 5 r/s, burst 10 here: 100 concurrent requests see 429s.

    The defaults (50 r/s, burst 100) are pinned by tests/test_configfiles.py."""
    stack = edge_limited_stack
    admin = admin_of(stack)
    session = admin.session()

    def read(_: int):
        return session.get(stack.url + "/read/limited-key", timeout=10)

    with ThreadPoolExecutor(16) as pool:
        responses = list(pool.map(read, range(100)))
    limited = [r for r in responses if r.status_code == 429]
    assert limited, "no request was limited"
    assert all(r.status_code in (404, 429) for r in responses)
    sample = limited[0]
    assert sample.headers["Retry-After"].isdigit()
    assert sample.json()["error"]["code"] == "rate_limited"


def test_edge_limited_writes_write_nothing(edge_limited_stack):
    stack = edge_limited_stack
    admin = admin_of(stack)
    before = version_counter(stack)
    session = admin.session()

    def write(index: int):
        return session.post(f"{stack.url}/write/edge-lim-{index}/v", timeout=10)

    with ThreadPoolExecutor(16) as pool:
        statuses = [r.status_code for r in pool.map(write, range(60))]
    assert 429 in statuses
    assert set(statuses) <= {201, 429}
    assert version_counter(stack) == before + statuses.count(201)


def test_per_user_limit_in_the_app_writes_nothing(default_limits_stack):
    stack = default_limits_stack
    user = create_user(admin_of(stack), "writer", ["*"])
    before = version_counter(stack)
    statuses = [user.post(f"/write/lim-{user.name}-{i}/v").status_code for i in range(25)]
    assert statuses.count(201) == 20
    assert statuses[20:] == [429] * 5
    limited = user.post(f"/write/lim-{user.name}-x/v")
    assert limited.status_code == 429
    assert int(limited.headers["Retry-After"]) >= 1
    assert limited.json()["error"]["code"] == "rate_limited"
    assert version_counter(stack) == before + 20
    assert admin_of(stack).get(f"/read/lim-{user.name}-x").status_code == 404


def test_one_users_limit_does_not_touch_another(default_limits_stack):
    stack = default_limits_stack
    admin = admin_of(stack)
    first, second = create_user(admin, "reader", ["*"]), create_user(admin, "reader", ["*"])
    for _ in range(21):
        first.get("/read/anything")
    assert first.get("/read/anything").status_code == 429
    assert second.get("/read/anything").status_code == 404


def test_brute_force_guard_in_the_app(default_limits_stack):
    """10 failed logins a minute per (address, user), then 429 — even with the right password."""
    from tests.conftest import Client

    stack = default_limits_stack
    admin = admin_of(stack)
    victim = create_user(admin, "reader", ["*"])
    port = stack.config.ap_ports[0]
    wrong = Client(stack, victim.name, "guess")
    statuses = [wrong.direct("GET", port, "/read/x").status_code for _ in range(10)]
    assert statuses == [401] * 10
    blocked = wrong.direct("GET", port, "/read/x")
    assert blocked.status_code == 429
    assert int(blocked.headers["Retry-After"]) >= 1
    # The right password from the same address is refused too while blocked
    # (unless already verified and cached: a cache hit proves the password).
    fresh = Client(stack, victim.name, victim.password).direct("GET", port, "/read/x")
    assert fresh.status_code == 429
    # Audited in aggregate (per address and window), never one entry per failure,
    # and never with the password tried.
    client = stack.redis_client()
    entries = client.lrange("{plab}:audit", -30, -1)
    window = client.hgetall("{plab}:authfail:window")
    client.close()
    assert not [e for e in entries if b'auth.failure"' in e]
    assert (
        sum(int(v) for k, v in window.items() if k.startswith(b"a:"))
        + sum(int(e.split(b'"count:')[1].split(b'"')[0]) for e in entries if b"auth.failures" in e)
        >= 10
    )
    assert b"guess" not in b"".join([*entries, *window, *window.values()])


def test_brute_force_through_the_edge_is_cut_off_by_the_app(default_limits_stack):
    """The edge refuses bad credentials itself and reports each refusal to the
    plane's counting endpoint: the 11th failure in a minute is a 429."""
    from tests.conftest import Client

    stack = default_limits_stack
    victim = create_user(admin_of(stack), "reader", ["*"])
    guesser = Client(stack, victim.name, "not-it")
    statuses = [guesser.get("/read/x").status_code for _ in range(10)]
    assert statuses == [401] * 10
    cut_off = guesser.get("/read/x")
    assert cut_off.status_code == 429
    assert "failed logins" in cut_off.json()["error"]["message"]
    assert int(cut_off.headers["Retry-After"]) >= 1
    assert Client(stack, victim.name, victim.password).get("/read/x").status_code == 429
    other = create_user(admin_of(stack), "reader", ["*"])
    assert Client(stack, other.name, "not-it").get("/read/x").status_code == 401
    assert other.get("/read/x").status_code == 404


def test_missing_credentials_are_not_counted_as_failures(default_limits_stack):
    from tests.conftest import Client

    stack = default_limits_stack
    anonymous = Client(stack)
    assert [anonymous.get("/read/x").status_code for _ in range(12)] == [401] * 12


# --- issue 9: Flask-Limiter on the control plane's /admin and /auth routes ------
@pytest.fixture(scope="module")
def route_limited_stack():
    from tests.conftest import running_stack

    yield from running_stack(
        ap_workers=1,
        admin_rate=1000,
        admin_burst=1000,
        extra_env={
            "PLAB_ADMIN_ROUTE_RATE": "8/minute",
            "PLAB_AUTH_ADDRESS_RATE": "6/minute",
            "PLAB_AUTH_USER_RATE": "3/minute",
        },
    )


def _address() -> str:
    import secrets

    return f"198.18.{secrets.randbelow(250) + 1}.{secrets.randbelow(250) + 1}"


def _direct(stack, method: str, path: str, address: str, **kwargs):
    import requests

    kwargs.setdefault("timeout", 30)
    return requests.request(
        method,
        f"http://{stack.config.bind}:{stack.config.cp_port}{path}",
        headers={"X-Forwarded-For": address, **kwargs.pop("headers", {})},
        **kwargs,
    )


def _assert_route_429(response) -> None:
    assert response.status_code == 429, response.text
    assert response.json()["error"]["code"] == "rate_limited"
    assert response.json()["request_id"]
    assert 1 <= int(response.headers["Retry-After"]) <= 60


def test_admin_routes_are_limited_per_address(route_limited_stack):
    stack = route_limited_stack
    password = stack.admin_password_file.read_text().strip()
    one, other = _address(), _address()
    statuses = [
        _direct(stack, "GET", "/admin/users", one, auth=("admin", password)).status_code
        for _ in range(8)
    ]
    assert statuses == [200] * 8
    _assert_route_429(_direct(stack, "GET", "/admin/users", one, auth=("admin", password)))
    # unauthenticated requests from that address are limited too (checked before auth)
    _assert_route_429(_direct(stack, "GET", "/admin/stats", one))
    assert _direct(stack, "GET", "/admin/users", other, auth=("admin", password)).status_code == 200


def test_token_routes_are_limited_per_user_and_per_address(route_limited_stack):
    stack = route_limited_stack
    admin = admin_of(stack)
    first, second = create_user(admin, "reader", ["*"]), create_user(admin, "reader", ["*"])
    a, b = _address(), _address()
    issued = [
        _direct(stack, "POST", "/auth/token", a, auth=(first.name, first.password))
        for _ in range(3)
    ]
    assert [r.status_code for r in issued] == [200] * 3
    # Per user: the 4th token for `first` is refused, from any address.
    _assert_route_429(_direct(stack, "POST", "/auth/token", b, auth=(first.name, first.password)))
    # ...and so is a refresh of first's tokens (same user budget).
    refresh = issued[0].json()["refresh_token"]
    _assert_route_429(_direct(stack, "POST", "/auth/refresh", b, json={"refresh_token": refresh}))
    # Wrong passwords do not spend a user's budget (only successes are deducted)...
    assert _direct(stack, "POST", "/auth/token", b, auth=(second.name, "wrong")).status_code == 401
    # ...but every attempt spends the address's: a has used 3, b has used 3 (6/minute).
    assert _direct(stack, "POST", "/auth/token", a, auth=(second.name, second.password)).ok
    assert _direct(stack, "POST", "/auth/token", a, auth=(second.name, second.password)).ok
    assert _direct(stack, "POST", "/auth/token", a, auth=(second.name, second.password)).ok
    _assert_route_429(_direct(stack, "POST", "/auth/token", a, auth=(second.name, "x")))
    _assert_route_429(_direct(stack, "POST", "/auth/token", b, auth=(second.name, "x")))


def test_route_limit_keys_live_under_the_project_prefix(route_limited_stack):
    """The redis ACLs allow only ``{plab}:*``: Flask-Limiter's counters are there, by
    exact name (the planes' redis users may not list keys), and nowhere else."""
    stack = route_limited_stack
    password = stack.admin_password_file.read_text().strip()
    address = _address()
    for _ in range(2):
        assert _direct(stack, "GET", "/admin/users", address, auth=("admin", password)).ok
    client = stack.redis_client()
    try:
        assert client.get(f"{{plab}}:routelimit:LIMITER/{address}/admin/8/1/minute") == b"2"
        # Flask-Limiter's default prefix would be outside the ACL: the planes' user
        # could not have written there at all.
        with pytest.raises(redis.exceptions.NoPermissionError):
            client.get(f"LIMITS:LIMITER/{address}/admin/8/1/minute")
    finally:
        client.close()


@pytest.mark.parametrize("wait", [0, 1, 7])
def test_a_spent_window_is_always_a_429_with_a_retry_after(wait):
    """A script's "limit spent" status raises whatever wait it answered: a wait of 0
    (the window closing as it answered) still refuses, with Retry-After 1."""
    with pytest.raises(RateLimited) as refused:
        limit_spent(wait)
    assert refused.value.code == 429
    assert refused.value.headers["Retry-After"] == str(max(wait, 1))
