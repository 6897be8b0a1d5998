"""The edge: TLS only, redirects, key grammar before Python, JSON errors,
security headers, request ids, and what it refuses to expose."""

from __future__ import annotations

import socket
import ssl
import time
from dataclasses import dataclass

import pytest
import requests

from tests.conftest import Client
from tests.layout_kit import audit_log_of, indexed_keys

BAD_KEYS = [
    "a.b",  # dot
    "a%2Fb",  # encoded slash
    "a%00b",  # NUL
    "a%0D%0Ab",  # CRLF
    "%C3%A9t%C3%A9",  # non-ASCII
    "k" * 257,  # too long
    "a%20b",  # space
    "a..b",
]
# Dot segments are resolved before routing: the request is for another path
# entirely, which the edge answers 400 or 404, and no key is touched.
DOT_SEGMENTS = ["..", "%2E%2E", ".", "%2e"]


@pytest.mark.parametrize("bad", BAD_KEYS)
@pytest.mark.parametrize("route", ["/read/{k}", "/v1/kv/{k}", "/v1/watch/{k}"])
def test_edge_rejects_bad_keys_with_json_400(admin, route, bad):
    response = admin.get(route.format(k=bad))
    assert response.status_code == 400
    assert response.headers["Content-Type"].startswith("application/json")
    assert response.json()["error"]["code"] in ("bad_request", "invalid_key")


@pytest.mark.parametrize("bad", BAD_KEYS)
def test_bad_keys_on_write_are_400_and_store_nothing(admin, stack, bad):
    client = stack.redis_client()
    before = indexed_keys(client)
    response = admin.post(f"/write/{bad}/value")
    assert response.status_code == 400
    assert response.json()["error"]["code"] in ("bad_request", "invalid_key")
    assert indexed_keys(client) == before
    client.close()


@pytest.mark.parametrize("bad", DOT_SEGMENTS)
def test_dot_segments_never_address_a_key(admin, stack, bad):
    client = stack.redis_client()
    before = indexed_keys(client)
    for response in (
        admin.get(f"/read/{bad}"),
        admin.post(f"/write/{bad}/v"),
        admin.put(f"/v1/kv/{bad}", data=b"v"),
    ):
        assert response.status_code in (400, 404)
        assert response.json()["error"]["code"] in ("bad_request", "not_found", "invalid_key")
    assert indexed_keys(client) == before
    client.close()


def test_bad_keys_never_reach_python(admin, stack):
    """A malformed key is answered by nginx: no upstream is contacted."""
    admin.get("/read/a.b", headers={"X-Request-ID": "edge-only-check"})
    log = (stack.log_dir / "edge-access.log").read_text()
    stack_lines = [line for line in log.splitlines() if "edge-only-check" in line]
    # The access log is buffered for up to a second: wait for our line.
    import time

    deadline = time.monotonic() + 5
    while not stack_lines and time.monotonic() < deadline:
        time.sleep(0.2)
        log = (stack.log_dir / "edge-access.log").read_text()
        stack_lines = [line for line in log.splitlines() if "edge-only-check" in line]
    assert stack_lines, "request not in the edge access log"
    assert '"upstream":""' in stack_lines[-1]
    assert '"status":400' in stack_lines[-1]


@pytest.mark.parametrize("bad", ["a.b", "a%2Fb", "k" * 257, "%C3%A9"])
def test_apps_check_keys_again(admin, stack, bad):
    """Defence in depth: straight to an app process, the same keys get 400."""
    port = stack.config.ap_ports[0]
    for method, path in (
        ("GET", f"/read/{bad}"),
        ("POST", f"/write/{bad}/v"),
        ("PUT", f"/v1/kv/{bad}"),
    ):
        response = admin.direct(method, port, path)
        assert response.status_code == 400, (method, path)
        assert response.json()["error"]["code"] == "invalid_key", (method, path, response.json())


def test_http_redirects_to_https_with_json(stack):
    response = requests.get(
        f"http://{stack.config.bind}:{stack.config.http_port}/read/x",
        allow_redirects=False,
        timeout=5,
    )
    assert response.status_code == 301
    assert (
        response.headers["Location"]
        == f"https://{stack.config.bind}:{stack.config.https_port}/read/x"
    )
    assert response.json()["error"]["code"] == "https_required"


def test_tls_versions_below_1_2_refused(stack):
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    context.minimum_version = ssl.TLSVersion.TLSv1
    context.maximum_version = ssl.TLSVersion.TLSv1_1
    with socket.create_connection((stack.config.bind, stack.config.https_port), timeout=5) as raw:
        with pytest.raises(ssl.SSLError):
            context.wrap_socket(raw)


def test_tls_1_2_and_1_3_accepted(stack):
    for version in (ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3):
        context = ssl.create_default_context(cafile=str(stack.tls_cert))
        context.minimum_version = context.maximum_version = version
        with socket.create_connection(
            (stack.config.bind, stack.config.https_port), timeout=5
        ) as raw:
            with context.wrap_socket(raw, server_hostname="localhost") as tls:
                assert tls.version() == {"TLSv1_2": "TLSv1.2", "TLSv1_3": "TLSv1.3"}[version.name]


def test_security_headers_on_every_answer(admin, anonymous, key):
    for response in (
        admin.get("/health"),
        admin.post(f"/write/{key}/v"),
        admin.get(f"/read/{key}"),
        anonymous.get(f"/read/{key}"),
        admin.get("/read/a.b"),
        admin.get("/nope"),
    ):
        headers = response.headers
        assert headers["Strict-Transport-Security"].startswith("max-age=")
        assert headers["X-Content-Type-Options"] == "nosniff"
        assert headers["X-Frame-Options"] == "DENY"
        assert headers["Referrer-Policy"] == "no-referrer"
        assert "default-src 'none'" in headers["Content-Security-Policy"]
        assert headers["Server"] == "nginx", "no version, no framework name"
        assert (
            len(
                headers.get_all("X-Content-Type-Options")
                if hasattr(headers, "get_all")
                else [headers["X-Content-Type-Options"]]
            )
            == 1
        )


def test_request_id_is_generated_or_passed_through(admin, key):
    generated = admin.get("/health").headers["X-Request-ID"]
    assert len(generated) >= 16
    mine = admin.get(f"/read/{key}", headers={"X-Request-ID": "trace-123"})
    assert mine.headers["X-Request-ID"] == "trace-123"
    assert mine.json()["request_id"] == "trace-123"
    hostile = admin.get("/health", headers={"X-Request-ID": "bad id\twith junk"})
    assert hostile.headers["X-Request-ID"] != "bad id\twith junk"


def test_health_answered_by_edge_without_internals(anonymous):
    response = anonymous.get("/health")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


def test_ready_through_edge(anonymous):
    response = anonymous.get("/ready")
    assert response.status_code == 200
    assert response.json() == {"status": "ready"}


@pytest.mark.parametrize(
    "path", ["/metrics", "/ops/metrics", "/admin/../metrics", "/nope", "/ops/health"]
)
def test_edge_does_not_expose_internal_routes(admin, path):
    response = admin.get(path)
    assert response.status_code in (400, 404)
    assert "plab_http_requests_total" not in response.text
    assert response.json()["error"]["code"] in ("bad_request", "not_found")


def test_unknown_methods_are_405_json(admin, key):
    response = admin.request("TRACE", f"/read/{key}")
    assert response.status_code == 405
    assert response.json()["error"]["code"] == "method_not_allowed"


def test_body_over_limit_is_413_json_at_the_edge(admin, key, stack):
    response = admin.put(f"/v1/kv/{key}", data=b"z" * (stack.max_body_bytes() + 1024))
    assert response.status_code == 413
    assert response.json()["error"]["code"] == "payload_too_large"
    assert admin.get(f"/v1/kv/{key}").status_code == 404


def test_app_enforces_the_same_body_limit(admin, key, stack):
    port = stack.config.ap_ports[0]
    response = admin.direct("PUT", port, f"/v1/kv/{key}", data=b"z" * (stack.max_body_bytes() + 1))
    assert response.status_code == 413
    assert response.json()["error"]["code"] == "payload_too_large"


def test_huge_headers_get_json_431(admin):
    response = admin.get("/health", headers={"X-Big": "a" * 9000})
    assert response.status_code in (400, 431)
    assert response.json()["error"]["code"] in ("headers_too_large", "bad_request")


def test_forwarded_headers_are_trusted_only_from_the_edge(admin, stack, key):
    """A client cannot spoof its address: the edge overwrites X-Forwarded-For,
    and the apps ignore it from anyone but the edge's address."""
    admin.post(f"/write/{key}/v", headers={"X-Forwarded-For": "203.0.113.9"})
    client = stack.redis_client()
    entries = [e for e in client.lrange(audit_log_of(key), -50, -1) if key.encode() in e]
    client.close()
    assert entries and b"203.0.113.9" not in entries[-1]
    assert b'"client":"127.0.0.1"' in entries[-1]


# --- issue 9: the edge's Basic check is a gate --------------------------------
def _plane_log_lines(stack, request_id: str) -> list[dict]:
    import json

    lines = []
    for path in stack.log_dir.glob("*.log"):
        if path.name.startswith("edge"):
            continue
        for line in path.read_text(errors="replace").splitlines():
            if request_id in line and line.startswith("{"):
                try:
                    lines.append(json.loads(line))
                except ValueError:
                    continue
    return lines


@pytest.mark.parametrize(
    "authorization",
    ["Basic {wrong}", "Token {right}", "Digest {right}", "Basicx {right}", "Bearer", "junk"],
)
def test_a_request_failing_the_edge_check_never_reaches_a_handler(
    stack, admin, make_user, key, authorization
):
    """The edge answers it (401 JSON + challenge); the plane sees only the bodiless
    report to its counting endpoint, never the method, path or body."""
    import base64
    import secrets
    import time

    writer = make_user("writer", ["k-"])
    right = base64.b64encode(f"{writer.name}:{writer.password}".encode()).decode()
    wrong = base64.b64encode(f"{writer.name}:not-it".encode()).decode()
    request_id = f"gate-{secrets.token_hex(8)}"
    headers = {
        "Authorization": authorization.format(right=right, wrong=wrong),
        "X-Request-ID": request_id,
    }
    response = Client(stack).put(f"/v1/kv/{key}", data=b"sneaky", headers=headers)
    assert response.status_code == 401, response.text
    assert response.json()["error"]["code"] == "unauthorized"
    assert response.headers["WWW-Authenticate"].startswith("Basic")
    assert admin.get(f"/v1/kv/{key}").status_code == 404
    deadline = time.monotonic() + 30
    while not (seen := _plane_log_lines(stack, request_id)) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert seen, "the plane never heard of the failure"
    assert {line.get("route") for line in seen} == {"/_plab/edge-auth-failure"}, seen
    assert {line.get("method") for line in seen} == {"POST"}


def test_named_auth_failure_locations_hold_no_dead_limit_req(stack):
    """nginx applies limit_req once per request: a zone in the failure locations
    would never act, so there is none; the plane's guard is the throttle."""
    conf = (stack.state / "nginx" / "nginx.conf").read_text()
    for upstream in ("plab_ap", "plab_cp"):
        start = conf.index(f"location @plab_auth_failed_{upstream}")
        block = conf[start : conf.index("}", start)]
        assert "limit_req" not in block
        assert "rewrite" in block
        start = conf.index(f"location = /_plab_auth_failed/{upstream}")
        block = conf[start : conf.index("\n        }", start)]
        assert "limit_req" not in block
        assert "proxy_pass_request_body off" in block
        assert "proxy_pass_request_headers off" in block


# --- issue 9: behind a load balancer the edge sees the client -------------------
def _guess(stack, address: str, n: int):
    session = requests.Session()
    session.trust_env = False
    session.verify = str(stack.tls_cert)
    with session:
        return session.get(
            f"{stack.url}/read/some-key",
            auth=("admin", f"wrong-{n}"),
            headers={"X-Forwarded-For": address},
            timeout=30,
        )


@pytest.mark.parametrize("trusted", ["127.0.0.0/8", ""])
def test_trusted_proxy_ranges_make_address_limits_see_the_client(stack_factory, trusted):
    """With 127.0.0.0/8 trusted, requests from 127.0.0.1 are limited per X-Forwarded-For
    address; with no ranges (the default) X-Forwarded-For is ignored."""
    stack = stack_factory(ap_workers=1, edge_trusted_proxies=trusted)
    first, second = "198.18.7.1", "198.18.7.2"
    statuses = [_guess(stack, first, n).status_code for n in range(10)]
    assert statuses == [401] * 10
    assert _guess(stack, first, 10).status_code == 429
    other = _guess(stack, second, 11)
    if trusted:
        assert other.status_code == 401  # a different client: its own counters
        admin = Client(stack, "admin", stack.admin_password_file.read_text().strip())
        wrote = admin.post("/write/k-proxied/v", headers={"X-Forwarded-For": "198.18.7.3"})
        assert wrote.status_code == 201
        client = stack.redis_client()
        log = audit_log_of("k-proxied")  # a KV change is recorded in its shard's chain
        entries = [e for e in client.lrange(log, -20, -1) if b"k-proxied" in e]
        client.close()
        assert b'"client":"198.18.7.3"' in entries[-1]
    else:
        assert other.status_code == 429  # X-Forwarded-For ignored: all from 127.0.0.1


@pytest.mark.parametrize("path", ["/_plab/edge-auth-failure", "/_plab_auth_failed/plab_ap"])
def test_the_counting_hook_is_not_reachable_through_the_edge(anonymous, path):
    response = anonymous.post(
        path, headers={"X-Plab-Auth-Scheme": "basic", "X-Plab-Auth-User": "admin"}
    )
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "not_found"


# --- watches (issue 13): long timeouts and their own per-user limits at the edge ---
def test_a_watch_outlives_the_edges_ordinary_read_timeout(admin, key):
    """Every other route's upstream read times out after 15 s (a 503 here); a watch
    waits up to 300 s, so its location reads longer: a 20 s watch answers 200."""
    version = admin.post(f"/write/{key}/v").json()["version"]
    response = admin.get(f"/v1/watch/{key}?index={version}&wait=20", timeout=120)
    assert response.status_code == 200, response.text
    assert response.json()["changed"] is False
    assert response.json()["index"] == version
    assert response.headers["X-Plab-Index"] == str(version)
    # The control plane's operator route is proxied too.
    ops = admin.get(f"/ops/v1/watch/{key}?index=0&wait=0", timeout=60)
    assert ops.status_code == 200, ops.text
    assert ops.json()["index"] == version
    listed = admin.get(f"/v1/watch?prefix={key}&index=0&wait=0", timeout=60)
    assert listed.status_code == 200, listed.text
    assert listed.json()["keys"] == [{"key": key, "version": version}]


@dataclass
class BearerClient(Client):
    """A client of the edge that signs in with a bearer token."""

    token: str = ""

    def request(self, method: str, path: str, **kwargs) -> requests.Response:
        kwargs.setdefault("headers", {})["Authorization"] = f"Bearer {self.token}"
        return super().request(method, path, **kwargs)


@pytest.mark.parametrize("scheme", ["basic", "bearer"])
def test_open_watches_per_user_are_bounded_at_the_edge(stack_factory, scheme):
    """PLAB_EDGE_WATCH_CONNS=2: a user's (or, with a bearer token, a token's) third
    open watch is the edge's JSON 429 with Retry-After (never proxied); another
    user is not affected; the two held watches are still answered when their keys
    change."""
    from concurrent.futures import ThreadPoolExecutor

    from productionlab.configfiles import EDGE_MESSAGES
    from tests.conftest import RAISED_LIMITS, admin_of, create_user

    stack = stack_factory(ap_workers=1, threads=4, edge_watch_conns=2, **RAISED_LIMITS)
    admin = admin_of(stack)
    watcher = create_user(admin, "writer", ["held-"])
    other = create_user(admin, "writer", ["held-"])
    if scheme == "bearer":
        issued = watcher.post("/auth/token")
        assert issued.status_code == 200, issued.text
        token = issued.json()["access_token"]
        watcher = BearerClient(stack, token=token)
    keys = [f"held-{i}" for i in range(3)]
    versions = [watcher.post(f"/write/{k}/v").json()["version"] for k in keys]

    def hold(key: str, version: int):
        # Refused only while this test's own short probe held a slot: tried again.
        while True:
            answer = watcher.get(f"/v1/watch/{key}?index={version}&wait=120", timeout=180)
            if answer.status_code != 429:
                return answer
            time.sleep(0.2)

    pool = ThreadPoolExecutor(max_workers=2)
    held = [pool.submit(hold, k, v) for k, v in zip(keys[:2], versions[:2], strict=True)]
    try:
        # The two watches are in flight for up to 120 s; once the edge holds both,
        # the third is refused (the probe is the only other request this user
        # sends, so a refused probe means both held watches are at the edge). A
        # short watch (wait=0) answers at once when admitted.
        third = None
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            third = watcher.get(f"/v1/watch/{keys[2]}?index=0&wait=0")
            if third.status_code == 429:
                break
            assert third.status_code == 200, third.text
            time.sleep(0.2)
        assert third is not None and third.status_code == 429, "no third watch was refused"
        assert third.headers["Content-Type"].startswith("application/json")
        assert third.headers["Retry-After"] == "1"
        error = third.json()["error"]
        assert error == {"code": "rate_limited", "message": EDGE_MESSAGES[429]}
        assert not any(future.done() for future in held)
        # Per user: someone else still watches.
        elsewhere = other.get(f"/v1/watch/{keys[2]}?index=0&wait=0")
        assert elsewhere.status_code == 200, elsewhere.text
        # The ordinary routes are not counted against the watch bound.
        assert watcher.get(f"/read/{keys[2]}").status_code == 200
    finally:
        for k in keys[:2]:
            admin.post(f"/write/{k}/changed")
        answers = [future.result(timeout=180) for future in held]
        pool.shutdown()
    for answer in answers:
        assert answer.status_code == 200, answer.text
        assert answer.json()["changed"] is True and answer.json()["value"] == "changed"
    # The slots are free again.
    again = watcher.get(f"/v1/watch/{keys[2]}?index=0&wait=0")
    assert again.status_code == 200, again.text


def test_the_watch_rate_counts_per_credential_and_spares_the_data_routes(stack_factory):
    """The watch routes' own zone (PLAB_EDGE_WATCH_RATE/_BURST): requests with a
    wrong password under a user's name never spend that user's watch rate; the
    user's own requests do, up to the edge's JSON 429; the data routes' zone is
    another one."""
    from tests.conftest import RAISED_LIMITS, admin_of, create_user

    stack = stack_factory(
        ap_workers=1, threads=4, edge_watch_rate=1, edge_watch_burst=3, **RAISED_LIMITS
    )
    admin = admin_of(stack)
    user = create_user(admin, "writer", ["rate-"])
    assert user.post("/write/rate-k/v").status_code in (200, 201)  # verified once
    impostor = Client(stack, user.name, "not-the-password")
    refused = []
    for _ in range(60):  # until the impostor's own bucket is spent
        refused.append(impostor.get("/v1/watch/rate-k?wait=0").status_code)
        if refused[-1] == 429:
            break
    assert set(refused) <= {401, 429} and refused[-1] == 429, refused
    first = user.get("/v1/watch/rate-k?wait=0")
    assert first.status_code == 200, first.text
    statuses = []
    for _ in range(60):
        answer = user.get("/v1/watch/rate-k?wait=0")
        statuses.append(answer.status_code)
        if answer.status_code == 429:
            assert answer.json()["error"]["message"] == "too many requests"
            assert answer.headers["Retry-After"] == "1"
            break
    assert statuses[-1] == 429, statuses
    assert user.get("/read/rate-k").status_code == 200
