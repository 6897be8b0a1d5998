"""A corpus of hostile requests over raw sockets, through the edge (TLS) and
straight to an app-plane process (defence in depth): request smuggling
shapes, header injection, huge and slow headers and bodies, invalid UTF-8,
overlong percent-encodings, NUL, absolute-form targets.

Each is answered with a 4xx or a closed connection, never a 5xx; no answer
shows a stack trace or a server version; the store is unchanged.
"""

from __future__ import annotations

import base64
import concurrent.futures
import json
import os
import re
import socket
import ssl
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests

from productionlab.services import services_of
from tests.layout_kit import audit_entries, counters, indexed_keys, item_of, stored_items

STATUS_LINE = re.compile(rb"HTTP/1\.[01] (\d{3})")
CANARY = "hostile-canary"
SMUGGLED = "smuggled"


@dataclass(frozen=True)
class Hostile:
    name: str
    parts: tuple[bytes, ...]  # sent one after another
    pause: float = 0.0  # between parts (slow attacks)
    wait: float = 8.0  # how long to wait for an answer or a close
    direct: bool = False  # also sent straight to the planes (app-level validation)
    read_ok: bool = False  # a read that RFC 9112 lets a server accept leniently: 2xx allowed


def build_corpus(auth: str) -> list[Hostile]:
    a = f"Authorization: Basic {auth}\r\n".encode()
    host = b"Host: localhost\r\n"
    close = b"Connection: close\r\n"

    def request(line: bytes) -> tuple[bytes]:
        """One request: ``line``, then Host, Authorization, Connection: close."""
        return (line + host + a + close + b"\r\n",)

    def raw(line: bytes, rest: bytes) -> tuple[bytes]:
        """One request: ``line``, Host, Authorization, then ``rest`` as it is (more
        headers, the blank line, a body: no Connection: close unless ``rest`` has it)."""
        return (line + host + a + rest,)

    def with_header(line: bytes, header: bytes, body: bytes = b"") -> tuple[bytes]:
        """One request: ``line``, Host, Authorization, ``header``, Connection: close,
        then ``body``."""
        return (line + host + a + header + close + b"\r\n" + body,)

    smuggled = f"POST /write/{SMUGGLED}/x HTTP/1.1\r\n".encode() + host + a + b"\r\n"
    read = f"GET /read/{CANARY} HTTP/1.1\r\n".encode()
    write = f"POST /write/{CANARY}/changed HTTP/1.1\r\n".encode()
    put = f"PUT /v1/kv/{CANARY} HTTP/1.1\r\n".encode()

    def chunked(body: bytes) -> bytes:
        return f"{len(body):x}\r\n".encode() + body + b"\r\n0\r\n\r\n"

    corpus = [
        # --- request smuggling shapes -------------------------------------
        Hostile(
            "cl-te",
            raw(
                write,
                b"Content-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n"
                + b"0\r\n\r\n"
                + smuggled,
            ),
        ),
        Hostile(
            "te-cl",
            raw(
                write,
                b"Transfer-Encoding: chunked\r\nContent-Length: 60\r\n\r\n" + chunked(smuggled),
            ),
        ),
        Hostile(
            "double-cl",
            raw(
                write,
                b"Content-Length: 0\r\nContent-Length: "
                + str(len(smuggled)).encode()
                + b"\r\n\r\n"
                + smuggled,
            ),
            direct=True,
        ),
        Hostile(
            "cl-comma-list",
            raw(write, b"Content-Length: 0, 70\r\n\r\n" + smuggled),
            direct=True,
        ),
        Hostile(
            "cl-plus-sign", with_header(write, b"Content-Length: +4\r\n", b"abcd"), direct=True
        ),
        Hostile("cl-negative", with_header(write, b"Content-Length: -1\r\n"), direct=True),
        Hostile("cl-hex", with_header(write, b"Content-Length: 0x10\r\n", b"a" * 16), direct=True),
    ]
    for te in (
        b"Transfer-Encoding: xchunked",
        b"Transfer-Encoding : chunked",
        b"Transfer-Encoding:\tchunked\x0b",
        b"Transfer-Encoding: chunked, identity",
        b"Transfer-Encoding: identity, chunked",
        b"Transfer-Encoding: chunked\r\nTransfer-Encoding: x",
        b"Transfer-Encoding:\r\n chunked",
        b" Transfer-Encoding: chunked",
        b"Transfer-Encoding: \x00chunked",
        b"Transfer-Encoding: CHUNKED\xff",
    ):
        corpus.append(
            Hostile(
                "te-obfuscated:" + te.decode("latin-1").encode("unicode_escape").decode(),
                raw(write, te + b"\r\nContent-Length: 4\r\n\r\n" + b"0\r\n\r\n" + smuggled),
            )
        )
    corpus += [
        Hostile(
            "chunk-size-overflow",
            with_header(
                put, b"Transfer-Encoding: chunked\r\n", b"FFFFFFFFFFFFFFFFFFFF\r\nabc\r\n0\r\n\r\n"
            ),
        ),
        Hostile(
            "chunk-size-garbage",
            with_header(put, b"Transfer-Encoding: chunked\r\n", b"zz\r\nabc\r\n0\r\n\r\n"),
        ),
        Hostile(
            "get-with-body-smuggle",
            raw(read, b"Content-Length: " + str(len(smuggled)).encode() + b"\r\n\r\n" + smuggled),
            read_ok=True,
        ),
        # --- header injection ----------------------------------------------
        Hostile("bare-lf-in-header", with_header(read, b"X-A: 1\nX-B: 2\r\n"), read_ok=True),
        Hostile("bare-cr-in-header", with_header(write, b"X-A: 1\rX-B: 2\r\n")),
        Hostile("nul-in-header", with_header(write, b"X-A: a\x00b\r\n")),
        Hostile("obs-fold", with_header(write, b"X-A: a\r\n folded\r\n")),
        Hostile("header-no-colon", with_header(read, b"NoColonHere\r\n"), read_ok=True),
        Hostile("space-before-colon", with_header(write, b"Host : evil\r\n")),
        Hostile("duplicate-host", (write + host + b"Host: evil\r\n" + a + close + b"\r\n",)),
        Hostile(
            "crlf-in-path-value",
            request(f"POST /write/{CANARY}/a\r\nX-Injected: 1 HTTP/1.1\r\n".encode()),
        ),
        Hostile(
            "encoded-crlf-value",
            request(f"POST /write/{CANARY}/a%0d%0aSet-Cookie:%20x HTTP/1.1\r\n".encode()),
            direct=True,
        ),
        Hostile(
            "injected-request-id",
            with_header(read, b"X-Request-ID: a\r\n\r\nGET / HTTP/1.1\r\n"),
            read_ok=True,
        ),
        # --- huge headers ----------------------------------------------------
        Hostile("huge-header", with_header(write, b"X-Big: " + b"a" * 70_000 + b"\r\n")),
        Hostile(
            "many-headers",
            with_header(write, b"".join(b"X-H%d: v\r\n" % i for i in range(2000))),
        ),
        Hostile(
            "huge-uri",
            (
                b"POST /write/"
                + CANARY.encode()
                + b"/"
                + b"v" * 100_000
                + b" HTTP/1.1\r\n"
                + host
                + a
                + close
                + b"\r\n",
            ),
            direct=True,
        ),
        Hostile(
            "huge-auth",
            (
                write
                + host
                + b"Authorization: Basic "
                + base64.b64encode(b"u:" + b"p" * 30_000)
                + b"\r\n"
                + close
                + b"\r\n",
            ),
            direct=True,
        ),
        # --- slowloris -------------------------------------------------------
        Hostile(
            "slow-headers",
            tuple([write + host] + [b"X-Slow-%d: x\r\n" % i for i in range(40)]),
            pause=0.5,
            wait=25,
        ),
        Hostile("stalled-headers", raw(write, b"X-Never: ends"), wait=25),
        Hostile(
            "slow-body",
            raw(put, b"Content-Length: 100\r\n\r\n") + (b"z",) * 40,
            pause=0.5,
            wait=25,
        ),
        Hostile("stalled-body", raw(put, b"Content-Length: 100\r\n\r\nzz"), wait=25),
        # --- invalid UTF-8, overlong encodings, NUL ---------------------------
        *(
            Hostile(name, request(line), direct=True)
            for name, line in (
                ("raw-invalid-utf8-key", b"GET /read/\xff\xfe HTTP/1.1\r\n"),
                (
                    "raw-invalid-utf8-value",
                    f"POST /write/{CANARY}/".encode() + b"\xc3\x28 HTTP/1.1\r\n",
                ),
                ("overlong-slash-key", b"GET /read/%C0%AF HTTP/1.1\r\n"),
                ("overlong-slash-value", f"POST /write/{CANARY}/%C0%AF HTTP/1.1\r\n".encode()),
                ("overlong-traversal", b"GET /read/..%c0%af..%c0%afetc HTTP/1.1\r\n"),
                ("overlong-3byte", f"POST /write/{CANARY}/%E0%80%AF HTTP/1.1\r\n".encode()),
                ("surrogate-value", f"POST /write/{CANARY}/%ED%A0%80 HTTP/1.1\r\n".encode()),
                ("encoded-nul-key", b"GET /read/a%00b HTTP/1.1\r\n"),
                ("encoded-nul-value", f"POST /write/{CANARY}/a%00b HTTP/1.1\r\n".encode()),
                ("raw-nul-path", f"POST /write/{CANARY}/a\x00b HTTP/1.1\r\n".encode()),
                ("encoded-slash-in-key", f"POST /write/{CANARY}%2Fx/y HTTP/1.1\r\n".encode()),
                ("bad-percent", f"POST /write/{CANARY}/%zz%4 HTTP/1.1\r\n".encode()),
            )
        ),
        # --- request targets and lines --------------------------------------
        Hostile(
            "absolute-form-other-host",
            request(f"GET http://evil.example/read/{CANARY} HTTP/1.1\r\n".encode()),
            read_ok=True,
        ),
        Hostile(
            "absolute-form-bad-key",
            request(b"GET https://localhost/read/a%2Fb HTTP/1.1\r\n"),
            direct=True,
        ),
        Hostile("authority-form", request(b"CONNECT localhost:443 HTTP/1.1\r\n")),
        Hostile("asterisk-form", request(b"OPTIONS * HTTP/1.1\r\n")),
        Hostile("trace", request(b"TRACE / HTTP/1.1\r\n")),
        Hostile("lowercase-method", request(f"post /write/{CANARY}/lower HTTP/1.1\r\n".encode())),
        Hostile("unknown-method", request(f"FOO /read/{CANARY} HTTP/1.1\r\n".encode())),
        Hostile("http09", (f"GET /read/{CANARY}\r\n".encode(),)),
        Hostile("bad-version", request(f"GET /read/{CANARY} HTTP/9.9\r\n".encode())),
        Hostile("h2-preface", (b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",)),
        Hostile(
            "extra-spaces",
            request(f"GET  /read/{CANARY}  HTTP/1.1\r\n".encode()),
            read_ok=True,
        ),
        Hostile("tab-in-line", request(f"POST\t/write/{CANARY}/tab\tHTTP/1.1\r\n".encode())),
        Hostile(
            "dot-segments",
            request(f"POST /write/../write/{CANARY}/dots HTTP/1.1\r\n".encode()),
            direct=True,
        ),
        Hostile(
            "encoded-dot-segments",
            request(f"POST /read/%2e%2e/write/{CANARY}/dots HTTP/1.1\r\n".encode()),
            direct=True,
        ),
        Hostile("no-host-http11", (write + a + close + b"\r\n",)),
        Hostile("binary-garbage", (os.urandom(512) + b"\r\n\r\n",)),
        Hostile("empty-lines-only", (b"\r\n" * 5000,), wait=25),
        # --- bodies -----------------------------------------------------------
        Hostile(
            "body-over-limit-declared",
            with_header(put, b"Content-Length: 999999999\r\n", b"abc"),
            direct=True,
        ),
        Hostile(
            "expect-continue-over-limit",
            with_header(put, b"Expect: 100-continue\r\nContent-Length: 999999999\r\n"),
        ),
        Hostile(
            "if-match-garbage",
            with_header(put, b'If-Match: "", W/, ,,"\xff"\r\nContent-Length: 1\r\n', b"z"),
            direct=True,
        ),
        Hostile(
            "ttl-overflow",
            with_header(
                f"PUT /v1/kv/{CANARY}?ttl=99999999999999999999999 HTTP/1.1\r\n".encode(),
                b"Content-Length: 1\r\n",
                b"z",
            ),
            direct=True,
        ),
    ]
    corpus += batch_corpus(a + host + close)
    corpus += watch_corpus(a + host + close)
    return corpus


def batch_corpus(headers: bytes) -> list[Hostile]:
    """Transactions and bulk requests (issue 13): past their bounds, duplicate keys
    whose last condition fails, a body over the limit. None may change the store."""

    def post(path: str, body: bytes) -> tuple[bytes, ...]:
        head = f"POST {path} HTTP/1.1\r\n".encode() + headers
        return (
            head
            + b"Content-Type: application/json\r\n"
            + f"Content-Length: {len(body)}\r\n\r\n".encode()
            + body,
        )

    put = {"op": "put", "key": CANARY, "value": "changed"}
    too_many_ops = json.dumps({"ops": [put] * 65}).encode()
    duplicates = json.dumps(
        {"ops": [put, put, {"op": "delete", "key": CANARY}, {"op": "exists", "key": CANARY}]}
    ).encode()
    stale = json.dumps(
        {"ops": [put, {"op": "version_equals", "key": CANARY, "version": 2**62}]}
    ).encode()
    too_many_items = json.dumps({"items": [put] * 1001}).encode()
    oversized = json.dumps({"items": [{**put, "value": "x" * 1200 * 1024}]}).encode()
    return [
        Hostile("txn-65-ops", post("/v1/txn", too_many_ops), direct=True),
        Hostile("txn-duplicate-keys-failing", post("/v1/txn", duplicates), direct=True),
        Hostile("txn-stale-version", post("/v1/txn", stale), direct=True),
        Hostile(
            "txn-oversized-body", post("/v1/txn", oversized.replace(b"items", b"ops")), direct=True
        ),
        Hostile("bulk-1001-items", post("/v1/bulk", too_many_items), direct=True),
        Hostile("bulk-oversized-body", post("/v1/bulk", oversized), direct=True),
        Hostile("bulk-not-json", post("/v1/bulk", b'{"items": [ {"op": "put", '), direct=True),
    ]


def watch_corpus(headers: bytes) -> list[Hostile]:
    """Watches (issue 13): malformed, negative, huge and non-ASCII ``index`` and
    ``wait``, a wait past 300 s, encoded slashes and CR/LF in the key, prefixes
    outside the grammar. Each names a valid ``wait=0`` beside the bad part, so a
    route that wrongly accepted it would answer 200 at once (a finding), not park."""

    def get(target: str) -> tuple[bytes, ...]:
        return (f"GET {target} HTTP/1.1\r\n".encode() + headers + b"\r\n",)

    key = f"/v1/watch/{CANARY}"
    bad_numbers = {
        "malformed": "abc",
        "empty": "",
        "negative": "-1",
        "plus-sign": "%2B1",
        "fraction": "1.5",
        "exponent": "1e3",
        "underscore": "1_0",
        "space": "%201",
        "huge": "9" * 40,
        "past-int64": str(2**64),
        "arabic-indic-digit": "%D9%A3",  # U+0663, which int() reads as 3
        "fullwidth-digit": "%EF%BC%91",  # U+FF11, which int() reads as 1
        "nul": "1%00",
    }
    corpus = []
    for name, bad in bad_numbers.items():
        corpus += [
            Hostile(f"watch-index-{name}", get(f"{key}?index={bad}&wait=0"), direct=True),
            Hostile(f"watch-wait-{name}", get(f"{key}?index=0&wait={bad}"), direct=True),
            Hostile(
                f"watch-prefix-index-{name}", get(f"/v1/watch?index={bad}&wait=0"), direct=True
            ),
        ]
    corpus += [
        Hostile("watch-wait-301", get(f"{key}?wait=301"), direct=True),
        Hostile("watch-prefix-wait-301", get("/v1/watch?wait=301"), direct=True),
        Hostile("watch-wait-86400", get(f"{key}?index=0&wait=86400"), direct=True),
    ]
    for name, bad_key in {
        "encoded-slash": f"{CANARY}%2Fx",
        "encoded-slash-lower": f"{CANARY}%2fx",
        "encoded-crlf": f"{CANARY}%0D%0AX-Injected:%201",
        "encoded-trailing-lf": f"{CANARY}%0A",
        "encoded-nul": f"{CANARY}%00",
        "overlong-slash": f"{CANARY}%C0%AFx",
        "dot-segments": "..%2F..%2Fread",
        "non-ascii": f"{CANARY}%C3%A9",
        "too-long": "k" * 257,
    }.items():
        corpus.append(Hostile(f"watch-key-{name}", get(f"/v1/watch/{bad_key}?wait=0"), direct=True))
    # A raw CR/LF ends the request line early: the edge's parser answers it.
    corpus.append(Hostile("watch-key-raw-crlf", get(f"/v1/watch/{CANARY}\r\nX-Injected: 1?wait=0")))
    for name, bad_prefix in {
        "encoded-slash": "a%2Fb",
        "trailing-lf": "a%0A",
        "crlf": "a%0D%0Ab",
        "star": "%2A",
        "dot-segments": "..%2F",
        "non-ascii": "%C3%A9",
        "invalid-utf8": "%FF",
        "too-long": "p" * 257,
    }.items():
        corpus.append(
            Hostile(
                f"watch-prefix-{name}", get(f"/v1/watch?prefix={bad_prefix}&wait=0"), direct=True
            )
        )
    return corpus


@dataclass
class Outcome:
    name: str
    statuses: list[int]
    closed: bool
    raw: bytes


def exchange(connect, item: Hostile) -> Outcome:
    sock = connect()
    data = b""
    closed = False
    try:
        for index, part in enumerate(item.parts):
            if index and item.pause:
                time.sleep(item.pause)
            try:
                sock.sendall(part)
            except OSError:
                closed = True
                break
        sock.settimeout(1.0)
        deadline = time.monotonic() + item.wait
        while not closed and time.monotonic() < deadline:
            try:
                chunk = sock.recv(65536)
            except TimeoutError:
                continue
            except (OSError, ssl.SSLError):
                closed = True
                break
            if not chunk:
                closed = True
                break
            data += chunk
    finally:
        try:
            sock.close()
        except OSError:
            pass
    return Outcome(item.name, [int(s) for s in STATUS_LINE.findall(data)], closed, data)


def edge_connector(stack):
    context = ssl.create_default_context(cafile=str(stack.tls_cert))

    def connect():
        raw = socket.create_connection((stack.config.bind, stack.config.https_port), timeout=10)
        return context.wrap_socket(raw, server_hostname="localhost")

    return connect


def plane_connector(stack, port: int):
    def connect():
        return socket.create_connection((stack.config.bind, port), timeout=10)

    return connect


def not_a_json_error(raw: bytes) -> str | None:
    """Why ``raw`` (one answer) is not a contract JSON error, or None if it is."""
    head, _, body = raw.partition(b"\r\n\r\n")
    if b"\r\ntransfer-encoding: chunked" in head.lower():
        return "chunked (expected a JSON error with a length)"
    try:
        answer = json.loads(body)
    except ValueError:
        return "not JSON"
    error = answer.get("error") if isinstance(answer, dict) else None
    if not (isinstance(error, dict) and error.get("code") and error.get("message")):
        return "no error.code / error.message"
    if not answer.get("request_id"):
        return "no request_id"
    return None


def store_fingerprint(stack) -> dict:
    client = stack.redis_client()
    try:
        return {
            "version_counters": counters(client),
            "keys": indexed_keys(client),
            "canary": client.hgetall(item_of(CANARY)),
            "smuggled": client.exists(item_of(SMUGGLED)),
        }
    finally:
        client.close()


def run_corpus(connect, corpus: list[Hostile]) -> list[Outcome]:
    with concurrent.futures.ThreadPoolExecutor(max_workers=24) as pool:
        return list(pool.map(lambda item: exchange(connect, item), corpus))


@pytest.fixture(scope="module")
def hostile_stack(request):
    from conftest import start_stack, stop_stack

    stack = start_stack(edge_rate=5000, edge_burst=5000)
    request.addfinalizer(lambda: stop_stack(stack))
    return stack


@pytest.mark.parametrize("target", ["edge", "ap-direct", "cp-direct"])
def test_hostile_corpus_gets_4xx_or_close_and_changes_nothing(hostile_stack, target):
    stack = hostile_stack
    password = stack.admin_password_file.read_text().strip()
    auth = base64.b64encode(f"admin:{password}".encode()).decode()
    setup = requests.put(
        f"{stack.url}/v1/kv/{CANARY}",
        data=b"original",
        auth=("admin", password),
        verify=str(stack.tls_cert),
        timeout=10,
    )
    assert setup.status_code in (200, 201)
    if target == "edge":
        connect = edge_connector(stack)
    elif target == "ap-direct":
        connect = plane_connector(stack, stack.config.ap_ports[0])
    else:
        connect = plane_connector(stack, stack.config.cp_port)
    corpus = build_corpus(auth)
    if target != "edge":  # parser-level shapes are the edge's job; the apps validate meaning
        corpus = [h for h in corpus if h.direct]
    if target == "cp-direct":  # the control plane serves the KV routes under /ops
        corpus = [
            Hostile(
                h.name,
                tuple(
                    p.replace(b" /write/", b" /ops/write/")
                    .replace(b" /read/", b" /ops/read/")
                    .replace(b" /v1/kv/", b" /ops/v1/kv/")
                    .replace(b" /v1/txn ", b" /ops/v1/txn ")
                    .replace(b" /v1/bulk ", b" /ops/v1/bulk ")
                    .replace(b" /v1/watch", b" /ops/v1/watch")
                    for p in h.parts
                ),
                h.pause,
                h.wait,
                h.direct,
                h.read_ok,
            )
            for h in corpus
        ]
    before = store_fingerprint(stack)
    outcomes = run_corpus(connect, corpus)
    after = store_fingerprint(stack)
    by_name = {h.name: h for h in corpus}

    problems = []
    summary: dict[str, int] = {}
    for outcome in outcomes:
        for status in outcome.statuses:
            summary[str(status)] = summary.get(str(status), 0) + 1
        if not outcome.statuses:
            summary["closed-without-answer"] = summary.get("closed-without-answer", 0) + 1
            if not outcome.closed:
                problems.append((outcome.name, "neither answered nor closed"))
        allowed = (200,) if by_name[outcome.name].read_ok else ()
        if any(not (400 <= s < 500 or s in allowed) for s in outcome.statuses):
            problems.append((outcome.name, outcome.statuses, outcome.raw[:300]))
        if outcome.name.startswith("watch-") and outcome.statuses:
            problem = not_a_json_error(outcome.raw)
            if problem:
                problems.append((outcome.name, problem, outcome.raw[:300]))
        for leak in (b"Traceback", b"nginx/", b"Werkzeug", b"waitress", b"<html"):
            if leak.lower() in outcome.raw.lower():
                problems.append((outcome.name, f"leaks {leak!r}", outcome.raw[:300]))
    figures = {"target": target, "inputs": len(corpus), "answers": summary}
    print(f"\nFIGURES hostile-{target}: {json.dumps(figures, sort_keys=True)}")
    directory = os.environ.get("PLAB_FIGURES_DIR")
    if directory:
        Path(directory).mkdir(parents=True, exist_ok=True)
        (Path(directory) / f"hostile-{target}.json").write_text(json.dumps(figures, indent=2))
    # Nothing is desynchronised: ordinary requests after the corpus get their own answers.
    with requests.Session() as session:
        session.trust_env = False
        for _ in range(30):
            ok = session.get(
                f"{stack.url}/read/{CANARY}",
                auth=("admin", password),
                verify=str(stack.tls_cert),
                timeout=10,
            )
            if ok.status_code != 200 or ok.json().get("value") != "original":
                problems.append(("follow-up", ok.status_code, ok.text[:200]))
    assert problems == []
    assert after == before, "the hostile corpus changed the store"
    assert after["canary"][b"v"] == b"original" and after["smuggled"] == 0


@pytest.mark.parametrize(
    "method,path",
    [
        ("GET", "/read/abc%0A"),
        ("GET", "/v1/kv/abc%0A"),
        ("POST", "/write/abc%0A/v"),
        ("GET", "/ops/read/abc%0A"),
        ("GET", "/ops/v1/kv/abc%0A"),
    ],
)
def test_the_edge_itself_refuses_a_key_with_a_trailing_newline(hostile_stack, method, path):
    """PCRE's ``$`` matches before a final newline; the edge's key regexes end in ``\\z``.

    ``bad_request`` is the edge's own answer (the apps would say ``invalid_key``)."""
    stack = hostile_stack
    password = stack.admin_password_file.read_text().strip()
    response = requests.request(
        method, stack.url + path, auth=("admin", password), verify=str(stack.tls_cert), timeout=10
    )
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "bad_request"


# --- watches: grants and bounds (in process, tests/inprocess.py) -----------------


def assert_json_error(response, status: int, code: str) -> dict:
    assert response.status_code == status, response.text
    body = response.json()
    assert body["error"]["code"] == code and body["error"]["message"], body
    assert body["request_id"], body
    return body


def version_counter(planes) -> tuple[int, ...]:
    """Every shard's version counter."""
    client = planes.redis_client()
    try:
        return counters(client)
    finally:
        client.close()


def stored_data(planes) -> tuple[dict, int]:
    """Every KV item (in every shard) and the entries of every audit chain: what no
    watch may change. Not the shard counters: an answered prefix watch raises the
    counters of shards that lag to the highest version given (the Lamport
    fast-forward of docs/design/virtual-shards.md), which gives no version and
    changes no item; every write changes an item or appends an audit entry."""
    client = planes.redis_client()
    try:
        return stored_items(client), audit_entries(client)
    finally:
        client.close()


def watch_in_thread(client, path: str) -> concurrent.futures.Future:
    pool = concurrent.futures.ThreadPoolExecutor(max_workers=1)
    future = pool.submit(client.get, path)
    pool.shutdown(wait=False)
    return future


@pytest.mark.inprocess
def test_a_watch_sees_only_keys_under_its_grants(planes, admin, make_user, key):
    """A key outside the grants is 403 naming nothing, and so is a prefix wholly
    outside them; a prefix answers only granted keys, and a write outside the
    grants neither shows in the answer nor counts as a change. The cp's watches
    need the admin role; no credentials is 401. None of it changes the store."""
    mine, other = f"{key}-mine-a", f"{key}-other"
    mine_version = admin.put(f"/v1/kv/{mine}", data=b"m").json()["version"]
    assert admin.put(f"/v1/kv/{other}", data=b"o").status_code == 201
    reader = make_user("reader", [f"{key}-mine-"])
    before = stored_data(planes)

    # Each 403 may name what was asked for, and nothing else.
    for path, asked in (
        (f"/v1/watch/{other}?wait=0", other),
        (f"/v1/watch/{other}?index=0&wait=0", other),
        (f"/v1/watch/{key}-mine?wait=0", f"{key}-mine"),  # the grant is "<key>-mine-"
        (f"/v1/watch?prefix={key}-oth&wait=0", f"{key}-oth"),
    ):
        refused = json.dumps(assert_json_error(reader.get(path), 403, "forbidden"))
        assert key not in refused.replace(asked, ""), refused
    for path in (f"/ops/v1/watch/{mine}?wait=0", "/ops/v1/watch?wait=0"):
        assert_json_error(reader.get(path), 403, "forbidden")
    for path in (f"/v1/watch/{mine}?wait=0", "/v1/watch?wait=0", f"/ops/v1/watch/{mine}?wait=0"):
        assert_json_error(reader.get(path, auth=None), 401, "unauthorized")

    for path in (f"/v1/watch?prefix={key}-&wait=0", "/v1/watch?wait=0"):
        answer = reader.get(path)
        assert answer.status_code == 200, answer.text
        body = answer.json()
        assert body["keys"] == [{"key": mine, "version": mine_version}], body
        assert body["index"] >= mine_version
        assert answer.headers["X-Plab-Index"] == str(body["index"])
    assert stored_data(planes) == before, "a watch changed the store"

    # Writes outside the grants while the prefix watch is parked: it must end
    # unchanged, with only the granted key, whenever it ends.
    index = reader.get(f"/v1/watch?prefix={key}-&wait=0").json()["index"]
    parked = watch_in_thread(reader, f"/v1/watch?prefix={key}-&index={index}&wait=2")
    writes = 0
    while not parked.done() or writes == 0:
        assert admin.put(f"/v1/kv/{other}", data=b"o%d" % writes).status_code == 200
        writes += 1
        time.sleep(0.05)
    woke = parked.result(timeout=60)
    assert woke.status_code == 200, woke.text
    body = woke.json()
    assert body["changed"] is False, body
    assert body["keys"] == [{"key": mine, "version": mine_version}], body
    assert body["prefix"] == f"{key}-" and body["truncated"] is False


@pytest.mark.inprocess
def test_watches_off_answer_429_with_retry_after_and_change_nothing(planes, planes_with, key):
    off = planes_with(PLAB_WATCH_MAX_PER_PROCESS="0")
    assert off.put(f"/v1/kv/{key}", data=b"v").status_code == 201
    before = version_counter(planes)
    for path in (
        f"/v1/watch/{key}?wait=0",
        f"/v1/watch/{key}",
        f"/v1/watch?prefix={key}&wait=0",
        f"/ops/v1/watch/{key}?wait=0",
        "/ops/v1/watch?wait=0",
    ):
        refused = off.get(path)
        assert_json_error(refused, 429, "rate_limited")
        assert int(refused.headers["Retry-After"]) >= 1
    assert version_counter(planes) == before


@pytest.mark.inprocess
def test_a_watch_past_the_per_process_bound_gets_429_until_one_ends(planes, planes_with, key):
    """With a bound of one watch per process, a second watch while one is parked is
    refused (429 + Retry-After, nothing changed); once the first ends, watches are
    served again."""
    one = planes_with(PLAB_WATCH_MAX_PER_PROCESS="1")
    version = one.put(f"/v1/kv/{key}", data=b"v").json()["version"]
    parked = watch_in_thread(one, f"/v1/watch/{key}?index={version}&wait=120")
    slots = services_of(one.planes.ap).watches.slots
    for _ in range(1200):  # bounded: until the parked watch holds the one slot
        if slots.holding >= 1 or parked.done():
            break
        time.sleep(0.05)
    assert not parked.done(), parked.result().text
    before = version_counter(planes)
    refused = None
    deadline = time.monotonic() + 60
    while refused is None and time.monotonic() < deadline and not parked.done():
        answer = one.get(f"/v1/watch/{key}?index={version}&wait=0")
        if answer.status_code == 429:
            refused = answer
        else:
            assert answer.status_code == 200, answer.text
            time.sleep(0.05)
    assert refused is not None, "the second watch was never refused while the first was parked"
    assert_json_error(refused, 429, "rate_limited")
    assert int(refused.headers["Retry-After"]) >= 1
    prefix_refused = one.get(f"/v1/watch?prefix={key}&wait=0")
    assert_json_error(prefix_refused, 429, "rate_limited")
    assert version_counter(planes) == before, "a refused watch changed the store"

    written = one.put(f"/v1/kv/{key}", data=b"w").json()["version"]
    woke = parked.result(timeout=60)
    assert woke.status_code == 200, woke.text
    assert woke.json()["changed"] is True and woke.json()["index"] == written
    again = one.get(f"/v1/watch/{key}?index=0&wait=0")
    assert again.status_code == 200 and again.json()["value"] == "w", again.text


@pytest.mark.inprocess
def test_a_watch_costs_one_request_of_the_user_limit(planes_with, key):
    limited = planes_with(PLAB_USER_RATE="3/minute")
    statuses = [limited.get(f"/v1/watch/{key}?wait=0").status_code for _ in range(5)]
    assert statuses[:3] == [200, 200, 200] and statuses[3:] == [429, 429], statuses
    refused = limited.get(f"/v1/watch?prefix={key}&wait=0")
    assert_json_error(refused, 429, "rate_limited")
    assert int(refused.headers["Retry-After"]) >= 1
