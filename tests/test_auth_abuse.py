"""Authentication abuse: brute force is cut off by 429 per (address, user) and
per address; password checks run the slow hash on every path and never
compare secrets with ``==``; a disabled user's cached verification on the app
plane stops working at once.

The edge checks Basic credentials itself (htpasswd) and hands refusals to the
app, whose guard counts them. The guard's per-address limits are tested
straight against an app-plane port, with the client address given by
X-Forwarded-For from the trusted hop (the edge overwrites that header).
"""

from __future__ import annotations

import ast
import concurrent.futures
import json
import secrets
import time
from pathlib import Path
from unittest import mock

import pytest
import requests
from conftest import Client, admin_of
from faultkit import record

from productionlab import users as users_module
from productionlab.audit import Actor
from productionlab.users import UserStore

PACKAGE = Path(__file__).resolve().parent.parent / "productionlab"
PER_PAIR = 10  # settings.login_failures_per_minute default
PER_ADDRESS = 100  # settings.address_failures_per_minute default


def fresh_address() -> str:
    """A client address of our own (the benchmark range), so tests never share counters."""
    return f"198.18.{secrets.randbelow(250) + 1}.{secrets.randbelow(250) + 1}"


def attempt(stack, port: int, name: str, password: str, address: str, key: str):
    return requests.post(
        f"http://{stack.config.bind}:{port}/write/{key}/brute",
        auth=(name, password),
        headers={"X-Forwarded-For": address},
        timeout=30,
    )


def audit_failures(stack, name: str) -> int:
    client = stack.redis_client()
    try:
        entries = [json.loads(e) for e in client.lrange("{plab}:audit", -2000, -1)]
    finally:
        client.close()
    return sum(1 for e in entries if e["action"] == "auth.failure" and e["target"] == name)


def failures_counted(stack, address: str) -> int:
    """Failures from ``address`` in the aggregate: closed windows' audit entries
    plus the open window's count (a window may close while a test runs)."""
    client = stack.redis_client()
    try:
        entries = [json.loads(e) for e in client.lrange("{plab}:audit", -5000, -1)]
        open_count = int(client.hget("{plab}:authfail:window", f"a:{address}") or 0)
    finally:
        client.close()
    closed = sum(
        int(e["outcome"].removeprefix("count:"))
        for e in entries
        if e["action"] == "auth.failures" and e["target"] == address
    )
    return closed + open_count


def test_brute_force_against_one_user_is_cut_off_after_10_failures(stack, make_user, key):
    victim = make_user("writer", ["k-"])
    address = fresh_address()
    ap1, ap2 = stack.config.ap_ports[0], stack.config.ap_ports[-1]
    statuses = []
    for n in range(PER_PAIR):
        response = attempt(stack, ap1, victim.name, f"guess-{n}", address, key)
        statuses.append(response.status_code)
        assert response.status_code == 401, response.text
        assert response.headers["WWW-Authenticate"].startswith("Basic")
    blocked = attempt(stack, ap1, victim.name, "guess-next", address, key)
    assert blocked.status_code == 429
    assert blocked.json()["error"]["code"] == "rate_limited"
    assert 1 <= int(blocked.headers["Retry-After"]) <= 60
    # The counters live in redis: every app process enforces them.
    assert attempt(stack, ap2, victim.name, "guess-other", address, key).status_code == 429
    # Even the right password is refused from this address for the window...
    assert attempt(stack, ap1, victim.name, victim.password, address, key).status_code == 429
    # ...but the user is not locked out everywhere: another address gets in.
    other = attempt(stack, ap1, victim.name, victim.password, fresh_address(), key)
    assert other.status_code == 201
    # Failures are audited in aggregate (one entry per address and window with its
    # count), never one entry each; the refused attempts never reached the hash.
    assert audit_failures(stack, victim.name) == 0
    assert failures_counted(stack, address) == PER_PAIR
    # Nothing was written by any refused attempt: only the last write exists.
    assert Client.get(victim, f"/read/{key}").json()["version"] == other.json()["version"]
    record(
        "auth-brute-force-pair",
        {"failures_before_429": PER_PAIR, "statuses": [*statuses, 429, 429, 429, 201]},
    )


def test_one_address_is_cut_off_after_100_failures_across_users(stack, key):
    address = fresh_address()
    port = stack.config.ap_ports[0]

    def fail(n: int) -> int:
        return attempt(stack, port, f"nobody-{n % 20}", f"guess-{n}", address, key).status_code

    with concurrent.futures.ThreadPoolExecutor(max_workers=4) as pool:
        first = list(pool.map(fail, range(PER_ADDRESS)))
    assert first.count(401) + first.count(429) == PER_ADDRESS
    # 20 names x 5 failures each: no pair reached 10, so every one was a 401.
    assert first.count(401) == PER_ADDRESS, first
    fresh_name = attempt(stack, port, "someone-new", "guess", address, key)
    assert fresh_name.status_code == 429
    assert "address" in fresh_name.json()["error"]["message"]
    assert attempt(stack, port, "someone-new", "guess", fresh_address(), key).status_code == 401
    record("auth-brute-force-address", {"failures_before_429": PER_ADDRESS})


def test_brute_force_through_the_edge_is_cut_off_after_10_failures(stack_factory):
    """Default edge limits. The edge checks Basic credentials against its htpasswd
    and answers a refusal itself, after reporting it to the plane's counting
    endpoint, whose guard makes the 11th guess in a minute a 429."""
    stack = stack_factory()
    session = requests.Session()
    session.trust_env = False
    session.verify = str(stack.tls_cert)
    statuses = []
    for n in range(40):
        response = session.get(
            f"{stack.url}/read/some-key", auth=("admin", f"wrong-{n}"), timeout=15
        )
        statuses.append(response.status_code)
        if response.status_code == 429:
            assert response.headers["Retry-After"].isdigit()
            assert response.json()["error"]["code"] == "rate_limited"
    counts = {str(s): statuses.count(s) for s in sorted(set(statuses))}
    record("auth-brute-force-edge", {"attempts": len(statuses), "statuses": counts})
    assert set(statuses) <= {401, 429}, counts
    assert statuses.count(401) <= PER_PAIR, counts
    assert statuses[-10:] == [429] * 10, counts
    assert audit_failures(stack, "admin") == 0
    assert failures_counted(stack, "127.0.0.1") == statuses.count(401)
    # The right password from the same address is refused for the window too.
    password = stack.admin_password_file.read_text().strip()
    assert session.get(f"{stack.url}/read/some-key", auth=("admin", password)).status_code == 429


def test_password_checks_always_run_argon2(stack):
    """Known user + wrong password, unknown user, malformed name, oversized password:
    each costs exactly one argon2 verification (timing does not tell them apart),
    and the stored hash is argon2id."""
    store = UserStore(stack.redis_client("cp"), cache_secret=b"s" * 32, cache_seconds=0)
    known = store.get("admin")
    assert known.password_hash.startswith("$argon2id$")
    real = users_module.HASHER

    class Spy:
        """Counts argon2 verifications; the real hasher does the work."""

        def __init__(self) -> None:
            self.call_count = 0

        def verify(self, *args, **kwargs):
            self.call_count += 1
            return real.verify(*args, **kwargs)

        def __getattr__(self, name: str):
            return getattr(real, name)

    cases = {
        "known-wrong": ("admin", "wrong"),
        "unknown": ("no-such-user", "wrong"),
        "malformed-name": ("Bad Name!", "wrong"),
        "oversized": ("admin", "p" * 5000),
    }
    for label, (name, password) in cases.items():
        spy = Spy()
        with mock.patch.object(users_module, "HASHER", spy):
            assert store.verify(name, password) is None, label
        assert spy.call_count == 1, label
    right = stack.admin_password_file.read_text().strip()
    spy = Spy()
    with mock.patch.object(users_module, "HASHER", spy):
        assert store.verify("admin", right) is not None
    assert spy.call_count == 1


# Comparisons that involve no attacker input, each with the reason.
REVIEWED = {
    "previous != settings.token_key": "two configured signing keys, no request data",
}
SECRET_WORDS = ("password", "passwd", "secret", "token", "mac", "digest", "signature", "hash")


def _names(node: ast.AST) -> list[str]:
    found = []
    for sub in ast.walk(node):
        if isinstance(sub, ast.Name):
            found.append(sub.id.lower())
        elif isinstance(sub, ast.Attribute):
            found.append(sub.attr.lower())
    return found


@pytest.mark.parametrize(
    "module",
    [
        "users.py",
        "credential_cache.py",
        "htpasswd.py",
        "auth.py",
        "tokens.py",
        "token_keys.py",
        "token_routes.py",
        "ratelimit.py",
        "loginguard.py",
        "routelimits.py",
    ],
)
def test_secrets_are_never_compared_with_equality(module):
    """Every comparison of a secret-looking value goes through hmac.compare_digest
    (or argon2's verify); ``==``/``!=``/``in`` on them would leak timing."""
    tree = ast.parse((PACKAGE / module).read_text())
    offenders = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Compare):
            continue
        if not any(isinstance(op, (ast.Eq, ast.NotEq, ast.In, ast.NotIn)) for op in node.ops):
            continue
        operands = [node.left, *node.comparators]
        if any(isinstance(o, ast.Constant) and o.value is None for o in operands):
            continue
        words = [n for o in operands for n in _names(o)]
        if ast.unparse(node) in REVIEWED:
            continue
        if any(w in name for name in words for w in SECRET_WORDS):
            offenders.append((module, node.lineno, ast.unparse(node)))
    assert offenders == []


def test_token_signatures_are_checked_by_ed25519_verify():
    """Tokens are Ed25519-signed: the library's verify checks the signature (no
    comparison of ours that could leak timing)."""
    source = (PACKAGE / "token_keys.py").read_text()
    assert "Ed25519PublicKey.from_public_bytes(self.public).verify(" in source
    assert "hmac.new" not in source


def test_disabled_user_cached_verification_stops_at_once(stack, admin, make_user, key):
    """A user verified (and cached) by every app process is refused by each of them
    on the very next request after the admin disables it."""
    figures = {"rounds": 0, "refused_at_once": 0}
    for _ in range(3):
        user = make_user("writer", ["k-"])
        for port in stack.config.ap_ports:  # warm each process's cache
            for _ in range(2):
                assert user.direct("POST", port, f"/write/{key}/warm").status_code in (200, 201)
        assert admin.post(f"/admin/users/{user.name}/disable").status_code == 200
        for port in stack.config.ap_ports:
            response = user.direct("POST", port, f"/write/{key}/after-disable")
            figures["rounds"] += 1
            assert response.status_code == 401, response.text
            figures["refused_at_once"] += 1
        assert user.post(f"/write/{key}/via-edge").status_code == 401
    assert admin.get(f"/read/{key}").json()["value"] == "warm"
    record("auth-disable-cache", figures)


# --- issue 9: junk never locks out passwords; failures audited in aggregate -----
PER_ADDRESS_TOKENS = 100  # settings.token_failures_per_minute default


def bearer(stack, port: int, token: str, address: str, key: str) -> requests.Response:
    return requests.post(
        f"http://{stack.config.bind}:{port}/write/{key}/junk",
        headers={"Authorization": f"Bearer {token}", "X-Forwarded-For": address},
        timeout=30,
    )


def audit_length(stack) -> int:
    client = stack.redis_client()
    try:
        return client.llen("{plab}:audit")
    finally:
        client.close()


def test_junk_tokens_never_lock_out_the_right_password(stack, make_user, key):
    """300 junk Bearer tokens from one address: throttled on their own (429 past the
    token limit) and never counted by the Basic guard, so the right password from
    that address still works; and they add no audit entry one by one."""
    user = make_user("writer", ["k-"])
    address = fresh_address()
    port = stack.config.ap_ports[0]
    before = audit_length(stack)
    statuses = [bearer(stack, port, f"junk-{n}", address, key).status_code for n in range(300)]
    assert set(statuses) <= {401, 429}, statuses
    assert statuses[:PER_ADDRESS_TOKENS] == [401] * PER_ADDRESS_TOKENS
    assert statuses[PER_ADDRESS_TOKENS:] == [429] * (300 - PER_ADDRESS_TOKENS)
    throttled = bearer(stack, port, "junk-last", address, key)
    assert throttled.status_code == 429
    assert throttled.json()["error"]["code"] == "rate_limited"
    assert int(throttled.headers["Retry-After"]) >= 1
    # The right Basic password from the very same address works (no cache: first use).
    good = attempt(stack, port, user.name, user.password, address, key)
    assert good.status_code == 201, good.text
    # A handful of audit entries at most (a window may close meanwhile: <= 101 each),
    # and the 301 failures are all in the aggregate for that address.
    grown = audit_length(stack) - before
    assert failures_counted(stack, address) == 301
    record("auth-junk-tokens", {"tokens": 301, "audit_entries_added": grown})
    assert grown <= 2 * 101


def test_wrong_passwords_from_one_address_never_block_another(stack, make_user, key):
    user = make_user("writer", ["k-"])
    noisy, quiet = fresh_address(), fresh_address()
    port = stack.config.ap_ports[0]
    for n in range(PER_PAIR + 5):
        attempt(stack, port, user.name, f"guess-{n}", noisy, key)
    assert attempt(stack, port, user.name, user.password, noisy, key).status_code == 429
    assert attempt(stack, port, user.name, user.password, quiet, key).status_code == 201


@pytest.fixture(scope="module")
def capped_stack():
    """Aggregation cap of 20 addresses a window (default window, 60 s)."""
    from conftest import start_stack, stop_stack

    stack = start_stack(ap_workers=1, extra_env={"PLAB_AUTH_AUDIT_ADDRESSES": "20"})
    yield stack
    stop_stack(stack)


def _guard(stack):
    from productionlab.loginguard import LoginGuard

    return LoginGuard(stack.redis_client("cp"), 10, 100, audit_addresses=20)


def _failure_entries(stack) -> list[dict]:
    client = stack.redis_client()
    try:
        return [
            e
            for e in (json.loads(x) for x in client.lrange("{plab}:audit", 0, -1))
            if e["action"] == "auth.failures"
        ]
    finally:
        client.close()


def test_failures_from_many_addresses_are_capped_per_window(capped_stack):
    """300 junk tokens from 300 addresses plus 300 from one, straight to the plane
    (X-Forwarded-For from the trusted hop): at most 21 entries per window (20
    addresses, one "other"), every failure counted, and the chain still verifies."""
    stack = capped_stack
    port = stack.config.ap_ports[0]
    before = audit_length(stack)
    many = [fresh_address() for _ in range(300)]
    one = fresh_address()
    with concurrent.futures.ThreadPoolExecutor(max_workers=4) as pool:
        statuses = list(pool.map(lambda a: bearer(stack, port, "junk", a, "k-x").status_code, many))
    statuses += [bearer(stack, port, "junk", one, "k-x").status_code for _ in range(300)]
    assert set(statuses) <= {401, 429}
    # Close the open window as if it had ended (the next failure or a control-plane
    # read does this once it has).
    closed = _guard(stack).close_window(Actor("-"), now=time.time() + 3600)
    assert 1 <= closed <= 21
    entries = _failure_entries(stack)
    grown = audit_length(stack) - before
    # At most two windows were involved (a minute boundary may fall in the run).
    assert grown <= 2 * 21, grown
    assert sum(int(e["outcome"].removeprefix("count:")) for e in entries) == 600
    assert all(e["target"] in (*many, one, "other") for e in entries)
    record("auth-failures-capped", {"failures": 600, "audit_entries_added": grown})
    admin = admin_of(stack)
    assert admin.post("/admin/audit/verify").status_code == 200


def test_control_plane_read_closes_an_ended_window(capped_stack):
    """A window that ended with no failure after it is closed when the control plane
    reads the log: its entry (address, count) shows then."""
    stack = capped_stack
    address = fresh_address()
    guard = _guard(stack)
    guard.close_window(Actor("-"), now=time.time() + 3600)  # nothing open
    past = time.time() - 600
    for _ in range(3):
        guard.failed(address, "someone", "bad_credentials", now=past)
    assert not [e for e in _failure_entries(stack) if e["target"] == address]
    admin = admin_of(stack)
    page = admin.get("/admin/audit", params={"since": 1, "limit": 1000}).json()
    mine = [e for e in page["entries"] if e["action"] == "auth.failures"]
    assert any(e["target"] == address and e["outcome"] == "count:3" for e in mine), mine
    assert admin.post("/admin/audit/verify").status_code == 200


# --- issue 9: a bound on concurrent argon2id verifications ----------------------
def test_concurrent_slow_verifications_are_bounded_with_503(stack_factory):
    """PLAB_VERIFY_CONCURRENCY=1: concurrent cache-missing logins get 401 (one at a
    time verified) or 503 + Retry-After (refused before hashing), never 500."""
    stack = stack_factory(ap_workers=1, extra_env={"PLAB_VERIFY_CONCURRENCY": "1"})
    port = stack.config.ap_ports[0]

    def login(n: int) -> requests.Response:
        return attempt(stack, port, f"nobody-{n}", f"guess-{n}", fresh_address(), "k-bound")

    statuses: list[int] = []
    refused: list[requests.Response] = []
    for _ in range(10):
        with concurrent.futures.ThreadPoolExecutor(max_workers=16) as pool:
            answers = list(pool.map(login, range(32)))
        statuses += [a.status_code for a in answers]
        refused += [a for a in answers if a.status_code == 503]
        if refused:
            break
    assert set(statuses) <= {401, 503}, statuses
    assert refused, "no verification was ever refused"
    for answer in refused:
        assert answer.headers["Retry-After"] == "1"
        assert answer.json()["error"]["code"] == "unavailable"
    record(
        "auth-verify-bound",
        {"requests": len(statuses), "503": statuses.count(503), "401": statuses.count(401)},
    )
    # Refusals are not failed logins: the right password still works afterwards.
    admin = admin_of(stack)
    assert admin.direct("GET", port, "/read/k-none").status_code == 404


def test_cli_audit_verify_closes_an_ended_window(capped_stack):
    """`productionlab audit verify` (and `audit list`) close an ended window too."""
    import subprocess
    import sys

    stack = capped_stack
    address = fresh_address()
    guard = _guard(stack)
    guard.close_window(Actor("-"), now=time.time() + 3600)
    guard.failed(address, "-refresh", "refresh_bad_signature", now=time.time() - 600)
    assert not [e for e in _failure_entries(stack) if e["target"] == address]
    verified = subprocess.run(
        [sys.executable, "-m", "productionlab", "audit", "verify"],
        env=stack.plane_env("cp"),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert verified.returncode == 0, verified.stdout + verified.stderr
    mine = [e for e in _failure_entries(stack) if e["target"] == address]
    assert [e["outcome"] for e in mine] == ["count:1"]
