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
from pathlib import Path
from unittest import mock

import pytest
import requests
from conftest import Client
from faultkit import record

from productionlab import users as users_module
from productionlab.users import UserStore

PACKAGE = Path(__file__).resolve().parent.parent / "productionlab"
PER_PAIR = 10  # settings.login_failures_per_minute default (DESIGN.md)
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
    # Failures are audited (10), the refused attempts never reached the hash.
    assert audit_failures(stack, victim.name) == PER_PAIR
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
    """Default edge limits. The edge checks Basic credentials against its htpasswd;
    a refusal goes on to the app (rate-limited by the edge's admin zone), whose guard
    counts it, so at most 10 wrong guesses a minute per address and user get a 401."""
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
    assert audit_failures(stack, "admin") <= PER_PAIR
    # The right password from the same address is refused for the window too.
    password = stack.admin_password_file.read_text().strip()
    assert session.get(f"{stack.url}/read/some-key", auth=("admin", password)).status_code == 429


def test_password_checks_always_run_argon2(stack):
    """Known user + wrong password, unknown user, malformed name, oversized password:
    each costs exactly one argon2 verification (timing does not tell them apart),
    and the stored hash is argon2id."""
    store = UserStore(stack.redis_client("cp"), b"unused", cache_secret=b"s" * 32, cache_seconds=0)
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


@pytest.mark.parametrize("module", ["users.py", "auth.py", "tokens.py", "limits.py"])
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
    source = (PACKAGE / "tokens.py").read_text()
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
