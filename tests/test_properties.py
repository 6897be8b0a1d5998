"""Property tests (hypothesis) against the real stack: key validation, value
encoding round trips, and the compare-and-set state machine checked step by
step against a model."""

from __future__ import annotations

import base64
import os
import re
import secrets
from urllib.parse import quote

import pytest
import requests
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import Bundle, RuleBasedStateMachine, initialize, invariant, rule

from productionlab.kv import validate_key
from tests.conftest import SMALL_STACK, start_stack, stop_stack
from tests.http_client import new_session
from tests.layout_kit import one_shard

EXAMPLES = int(os.environ.get("PLAB_PROPERTY_EXAMPLES", "150"))
COMMON = settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
KEY_ALPHABET = "ABCxyz019_-"
valid_keys = st.from_regex(r"\A[A-Za-z0-9_-]{1,64}\Z")
# Mostly near-misses: valid characters with one hostile character or length edge.
near_keys = st.one_of(
    st.text(min_size=0, max_size=300),
    st.builds(
        lambda a, bad, b: a + bad + b,
        st.text(KEY_ALPHABET, max_size=10),
        st.sampled_from([*"./\\%?#:;@&=+$, \t\r\n\x00\x7féü€", "..", "%2F", "\u2028"]),
        st.text(KEY_ALPHABET, max_size=10),
    ),
    st.text(KEY_ALPHABET, min_size=255, max_size=258),
)


class Direct:
    """One app-plane process, as admin, without the edge (fast, no TLS)."""

    def __init__(self, stack):
        self.base = f"http://{stack.config.bind}:{stack.config.ap_ports[0]}"
        password = stack.admin_password_file.read_text().strip()
        self.session = new_session(auth=("admin", password))

    def request(self, method: str, path: str, **kwargs) -> requests.Response:
        kwargs.setdefault("timeout", 15)
        return self.session.request(method, self.base + path, **kwargs)


@pytest.fixture(scope="module")
def property_stack():
    """A stack of this module's own: the state machines send thousands of operations
    as admin, and each transaction operation is charged to the per-user limit, so the
    limit is raised here (tests/test_ratelimit.py proves it) and no other test's window
    is spent."""
    stack = start_stack(**SMALL_STACK, user_rate="1000000/minute")
    yield stack
    stop_stack(stack)


@pytest.fixture(scope="module")
def direct(property_stack):
    return Direct(property_stack)


@COMMON
@given(key=st.one_of(valid_keys, near_keys))
@example(key="abc\n")  # "$" matches before a trailing newline: found by this test
@example(key="\nabc")
@example(key="k" * 257)
@example(key="..")  # found by this test: the client, not the server, resolved it
def test_key_validation_matches_the_contract_everywhere(direct, key):
    valid = re.fullmatch(r"[A-Za-z0-9_-]{1,256}", key) is not None
    try:
        validate_key(key)
        core_ok = True
    except Exception:
        core_ok = False
    assert core_ok == valid
    # Dots percent-encoded: the HTTP client would resolve "/read/.." to "/" before
    # sending (RFC 3986 dot segments), and a dot is never valid in a key anyway.
    response = direct.request("GET", "/read/" + quote(key, safe="").replace(".", "%2E"))
    if valid:
        assert response.status_code in (200, 404), response.text
    else:
        assert response.status_code == 400, (key, response.status_code, response.text)
        assert response.json()["error"]["code"] in ("invalid_key", "bad_request")


@COMMON
@given(value=st.binary(min_size=0, max_size=4096))
def test_raw_values_round_trip_byte_for_byte(direct, value):
    key = f"prop-raw-{secrets.token_hex(6)}"
    put = direct.request("PUT", f"/v1/kv/{key}", data=value)
    assert put.status_code == 201, put.text
    got = direct.request("GET", f"/v1/kv/{key}")
    assert got.status_code == 200 and got.content == value
    assert got.headers["ETag"] == f'"{put.json()["version"]}"'
    read = direct.request("GET", f"/read/{key}").json()
    try:
        assert read["value"] == value.decode("utf-8") and "encoding" not in read
    except UnicodeDecodeError:
        assert read["encoding"] == "base64" and base64.b64decode(read["value"]) == value


printable = st.text(
    st.characters(blacklist_categories=("Cs", "Cc")), min_size=1, max_size=300
).filter(lambda t: len(t.encode()) <= 4096)


@COMMON
@given(text=printable)
@example(text=".")
@example(text="..")
def test_path_values_round_trip_after_url_decoding(direct, text):
    key = f"prop-path-{secrets.token_hex(6)}"
    # Dots percent-encoded too: a bare "." or ".." segment is a dot segment the
    # HTTP client removes (RFC 3986), so that value would never reach the server.
    write = direct.request("POST", f"/write/{key}/" + quote(text, safe="").replace(".", "%2E"))
    assert write.status_code == 201, (text, write.text)
    assert direct.request("GET", f"/read/{key}").json()["value"] == text


@COMMON
@given(
    prefix=st.text(min_size=0, max_size=5).filter(lambda t: "\n" not in t),
    control=st.sampled_from([chr(c) for c in [*range(32), 127]]),
    suffix=st.text(max_size=5),
)
def test_path_values_with_control_characters_are_400_and_change_nothing(
    direct, prefix, control, suffix
):
    key = f"prop-ctl-{secrets.token_hex(6)}"
    assert direct.request("POST", f"/write/{key}/before").status_code == 201
    bad = direct.request("POST", f"/write/{key}/" + quote(prefix + control + suffix, safe=""))
    assert bad.status_code == 400
    assert direct.request("GET", f"/read/{key}").json()["value"] == "before"


class ModelledStore(RuleBasedStateMachine):
    """A state machine that keeps a dict model of a few keys: after every step each
    key reads back as the model says (value, version as ETag) or is absent."""

    direct: Direct  # set by the test
    key_prefix = ""  # set by each machine

    def __init__(self) -> None:
        super().__init__()
        run = secrets.token_hex(4)
        # One shard, so the transaction machine runs on a Redis Cluster too (a
        # cluster refuses a transaction across shards: test_txn covers that).
        self.keys = one_shard(f"{self.key_prefix}-{run}-", 3)
        self.model: dict[str, tuple[bytes, int]] = {}
        # The contract: each key's versions grow, and no version is ever given twice;
        # versions of different keys follow no order (each shard counts on its own).
        self.highest: dict[str, int] = {}
        self.given: set[int] = set()

    def _grew(self, key: str, version: int) -> None:
        assert version > self.highest.get(key, 0), "a key's versions only grow"
        assert version not in self.given, "a version is never given twice"
        self.highest[key] = version
        self.given.add(version)

    @invariant()
    def store_matches_model(self):
        for key in self.keys:
            response = self.direct.request("GET", f"/v1/kv/{key}")
            if key in self.model:
                value, version = self.model[key]
                assert response.status_code == 200
                assert response.content == value
                assert response.headers["ETag"] == f'"{version}"'
            else:
                assert response.status_code == 404


def run_machine(machine: type[RuleBasedStateMachine], examples_variable: str, steps: int) -> None:
    machine.TestCase.settings = settings(
        max_examples=int(os.environ.get(examples_variable, "40")),
        stateful_step_count=steps,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow],
    )
    machine.TestCase().runTest()


class CompareAndSet(ModelledStore):
    """The store against a dict: unconditional and conditional puts and deletes,
    with current, stale and made-up versions, on a few keys."""

    key_prefix = "cas"
    versions = Bundle("versions")

    def _check_version(self, key: str, response: requests.Response) -> int:
        version = int(response.json()["version"])
        self._grew(key, version)
        assert response.headers["ETag"] == f'"{version}"'
        return version

    @initialize(target=versions)
    def seed(self):
        return 0

    @rule(target=versions, index=st.integers(0, 2), value=st.binary(max_size=64))
    def put(self, index, value):
        key = self.keys[index]
        response = self.direct.request("PUT", f"/v1/kv/{key}", data=value)
        assert response.status_code == (200 if key in self.model else 201)
        version = self._check_version(key, response)
        self.model[key] = (value, version)
        return version

    @rule(target=versions, index=st.integers(0, 2), value=st.binary(max_size=64))
    def put_if_absent(self, index, value):
        key = self.keys[index]
        response = self.direct.request(
            "PUT", f"/v1/kv/{key}", data=value, headers={"If-None-Match": "*"}
        )
        if key in self.model:
            assert response.status_code == 412
            assert response.headers["ETag"] == f'"{self.model[key][1]}"'
            return self.model[key][1]
        assert response.status_code == 201
        version = self._check_version(key, response)
        self.model[key] = (value, version)
        return version

    @rule(
        target=versions,
        index=st.integers(0, 2),
        value=st.binary(max_size=64),
        seen=versions,
        use_current=st.booleans(),
    )
    def put_if_match(self, index, value, seen, use_current):
        key = self.keys[index]
        current = self.model.get(key)
        expected = current[1] if (use_current and current) else seen
        response = self.direct.request(
            "PUT", f"/v1/kv/{key}", data=value, headers={"If-Match": f'"{expected}"'}
        )
        if current is not None and current[1] == expected:
            assert response.status_code == 200
            version = self._check_version(key, response)
            self.model[key] = (value, version)
            return version
        assert response.status_code == 412
        return expected

    @rule(index=st.integers(0, 2), seen=versions, use_current=st.booleans())
    def delete_if_match(self, index, seen, use_current):
        key = self.keys[index]
        current = self.model.get(key)
        expected = current[1] if (use_current and current) else seen
        response = self.direct.request(
            "DELETE", f"/v1/kv/{key}", headers={"If-Match": f'"{expected}"'}
        )
        if current is None:
            assert response.status_code == 404
        elif current[1] == expected:
            assert response.status_code == 204
            del self.model[key]
        else:
            assert response.status_code == 412

    @rule(index=st.integers(0, 2))
    def delete(self, index):
        key = self.keys[index]
        response = self.direct.request("DELETE", f"/v1/kv/{key}")
        assert response.status_code == (204 if key in self.model else 404)
        self.model.pop(key, None)

    @rule(index=st.integers(0, 2))
    def conditional_get(self, index):
        key = self.keys[index]
        current = self.model.get(key)
        if current is None:
            return
        response = self.direct.request(
            "GET", f"/v1/kv/{key}", headers={"If-None-Match": f'"{current[1]}"'}
        )
        assert response.status_code == 304


def test_compare_and_set_state_machine(direct):
    CompareAndSet.direct = direct
    run_machine(CompareAndSet, "PLAB_CAS_EXAMPLES", steps=25)


txn_ops = st.lists(
    st.tuples(
        st.sampled_from(["get", "put", "delete", "version_equals", "exists", "absent"]),
        st.integers(0, 2),
        st.binary(max_size=16),
        st.booleans(),
    ),
    min_size=1,
    max_size=8,
)


class Transactions(ModelledStore):
    """POST /v1/txn against a dict: random transactions of gets, puts, deletes and
    conditions (current, stale and made-up versions), duplicate keys included.
    The model applies the operations in order on a copy and keeps the copy only
    if every condition held; otherwise the store must answer 409 with the index
    of the first failing condition and change nothing."""

    key_prefix = "txn"

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[int] = [10**12]  # a made-up version no key will reach

    @rule(ops=txn_ops)
    def transaction(self, ops):
        body, expected_failure = [], None
        state = dict(self.model)
        for index, (kind, k, value, use_current) in enumerate(ops):
            key = self.keys[k]
            op: dict = {"op": kind, "key": key}
            current = state.get(key)
            if kind == "put":
                op |= {"value": base64.b64encode(value).decode(), "encoding": "base64"}
                state[key] = (value, None)  # version known only from the answer
            elif kind == "delete":
                state.pop(key, None)
            elif kind == "version_equals":
                pending = current is not None and current[1] is None
                if use_current and current is not None and not pending:
                    op["version"] = current[1]
                else:
                    op["version"] = self.seen[len(body) % len(self.seen)]
                holds = current is not None and current[1] == op["version"]
                if pending:
                    holds = False  # a version put earlier in this transaction is never guessed
                if not holds and expected_failure is None:
                    expected_failure = index
            elif kind == "exists" and current is None and expected_failure is None:
                expected_failure = index
            elif kind == "absent" and current is not None and expected_failure is None:
                expected_failure = index
            body.append(op)
        response = self.direct.request("POST", "/v1/txn", json={"ops": body})
        if expected_failure is not None:
            assert response.status_code == 409, response.text
            assert response.json()["failed_index"] == expected_failure
            return
        assert response.status_code == 200, response.text
        results = response.json()["results"]
        model = self.model
        for op, result in zip(body, results, strict=True):
            key, current = op["key"], model.get(op["key"])
            if op["op"] == "get":
                if current is None:
                    assert result["outcome"] == "absent"
                else:
                    assert result["outcome"] == "found"
                    got = result["value"].encode()
                    if result.get("encoding") == "base64":
                        got = base64.b64decode(result["value"])
                    assert (got, result["version"]) == current
            elif op["op"] == "put":
                assert result["outcome"] == ("updated" if current else "created")
                self._grew(key, result["version"])
                self.seen.append(result["version"])
                model[key] = (base64.b64decode(op["value"]), result["version"])
            elif op["op"] == "delete":
                if current is None:
                    assert result["outcome"] == "absent"
                else:
                    assert (result["outcome"], result["version"]) == ("deleted", current[1])
                    del model[key]
            else:
                assert result["outcome"] == "held"


def test_transaction_state_machine(direct):
    Transactions.direct = direct
    run_machine(Transactions, "PLAB_TXN_EXAMPLES", steps=20)
