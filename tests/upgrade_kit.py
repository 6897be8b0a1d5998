"""An earlier release's state, made by that release's own code.

Users upgrade: a change to stored state (keys, ACLs, the audit chain, token
format) must keep an existing stack's data working. Tests that prove a
migration start from a state directory that an earlier release wrote:
:func:`previous_release_state` checks out the release from this repository's
history (a ``git worktree`` per release, shared by every test process of the
run), starts that release's local stack on free ports with the given state
directory, fills it through its own edge with the release's fill script (users,
keys with and without TTL, a binary value, a deleted key, a token pair, audit
entries, a backup) and stops it. The new code then starts on the same directory.

Two releases are kept: ``PREVIOUS_RELEASE`` (c64ef11, before issue 9's state
changes) and ``ONE_TAG_RELEASE`` (577e7c6, the last release of the one-tag KV
layout, before the virtual shards). Where a test needs a small, specific state
of the one-tag layout on a redis it runs itself (one key mid-state, a store on a
cluster), :func:`one_tag_writes` drives that release's own ``KVStore`` in a
subprocess against the test's redis: no copy of the old write path is kept in
``productionlab/``.

A missing commit (a shallow clone) is an error, never a skip: CI clones main
whole.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis

from productionlab.supervisor import Supervisor
from tests.conftest import small_stack_config, state_dir

REPO = Path(__file__).resolve().parent.parent
# The last release before the state changes of issue 9 (audit chain, ACLs, tokens, quotas).
PREVIOUS_RELEASE = "c64ef1124ea63af082305e1e5057ed35d4e46178"
# The last release of the one-tag KV layout (every KV key under {plab}), before the
# virtual shards of issue 12 (main's merge-base of that work).
ONE_TAG_RELEASE = "577e7c62e978327b699024c16374d64263205df5"

# Both fill scripts' one request helper (put where a fill says #CALL): a request to
# the old stack's edge, trusting its self-signed certificate, no proxy.
_CALL = """
def call(method, path, auth=None, **kw):
    with requests.Session() as s:
        s.trust_env = False
        s.verify = str(stack.tls_cert)
        return s.request(method, stack.url + path, auth=auth, timeout=30, **kw)
"""

# Runs inside the previous release's checkout, with its own `productionlab` first
# on sys.path. Prints one JSON line describing what it stored.
_FILL = r"""
import json, os, secrets, sys, requests
import productionlab
# the previous release's own supervisor (its name then), never this checkout's
from productionlab.localstack import LocalStack as Supervisor, StackConfig

assert productionlab.__file__.startswith(os.environ["PLAB_OLD_TREE"]), productionlab.__file__
state = sys.argv[1]
stack = Supervisor(StackConfig.ephemeral(__import__("pathlib").Path(state), ap_workers=1,
                   threads=4, edge_rate=5000, edge_burst=5000, admin_rate=1000, admin_burst=1000))
stack.start(timeout=90)
#CALL
try:
    admin = ("admin", stack.admin_password_file.read_text().strip())
    users = {}
    for name, role in (("olduser-w", "writer"), ("olduser-r", "reader")):
        prefixes = ["app-"]
        body = {"name": name, "role": role, "prefixes": prefixes}
        r = call("POST", "/admin/users", admin, json=body)
        assert r.status_code == 201, r.text
        users[name] = {"password": r.json()["password"], "role": role, "prefixes": prefixes}
    # the previous release accepted "" as a grant: a silent wildcard
    body = {"name": "olduser-empty", "role": "reader", "prefixes": [""]}
    r = call("POST", "/admin/users", admin, json=body)
    assert r.status_code == 201, r.text
    users["olduser-empty"] = {"password": r.json()["password"], "role": "reader", "prefixes": [""]}
    writer = ("olduser-w", users["olduser-w"]["password"])
    keys = {}
    for i in range(5):
        key, value = f"app-old-{i}", f"value-{i}-" + secrets.token_hex(4)
        r = call("POST", f"/write/{key}/{value}", writer)
        assert r.status_code == 201, r.text
        keys[key] = {"value": value, "version": r.json()["version"]}
    r = call("PUT", "/v1/kv/app-old-ttl?ttl=86400", writer, data=b"lives-a-day")
    assert r.status_code in (200, 201), r.text
    keys["app-old-ttl"] = {"value": "lives-a-day", "version": int(r.headers["ETag"].strip('"'))}
    r = call("PUT", "/v1/kv/app-old-bin", writer, data=b"\xff\x00\xfe")
    assert r.status_code in (200, 201), r.text
    keys["app-old-bin"] = {"value_hex": "ff00fe", "version": int(r.headers["ETag"].strip('"'))}
    r = call("DELETE", "/v1/kv/app-old-4", writer)
    assert r.status_code in (200, 204), r.text
    del keys["app-old-4"]
    r = call("POST", "/auth/token", writer)
    assert r.status_code == 200, r.text
    tokens = r.json()
    r = call("POST", "/admin/backups", admin)
    backup = r.json() if r.status_code in (200, 201) else None
    r = call("POST", "/admin/audit/verify", admin)
    assert r.status_code == 200, r.text
    audit = r.json()
    print(json.dumps({"users": users, "keys": keys, "tokens": tokens, "backup": backup,
                      "audit_verify": audit, "admin_password": admin[1]}))
finally:
    stack.stop()
"""

# 577e7c6's fill: its supervisor and config under today's names; the same users and
# keys as c64ef11's, plus a key with a short TTL left to expire, the users' usage as
# that release reports it, and the backup's file name.
_FILL_ONE_TAG = r"""
import json, os, secrets, sys, time, pathlib, requests
import productionlab
from productionlab.supervisor import Supervisor
from productionlab.stackconfig import StackConfig

assert productionlab.__file__.startswith(os.environ["PLAB_OLD_TREE"]), productionlab.__file__
state = pathlib.Path(sys.argv[1])
stack = Supervisor(StackConfig.ephemeral(state, ap_workers=1, threads=4, edge_rate=5000,
                   edge_burst=5000, admin_rate=1000, admin_burst=1000))
stack.start(timeout=90)
#CALL
try:
    admin = ("admin", stack.admin_password_file.read_text().strip())
    users = {}
    for name, role in (("olduser-w", "writer"), ("olduser-v", "writer"), ("olduser-r", "reader")):
        body = {"name": name, "role": role, "prefixes": ["app-"]}
        r = call("POST", "/admin/users", admin, json=body)
        assert r.status_code == 201, r.text
        users[name] = {"password": r.json()["password"], "role": role, "prefixes": ["app-"]}
    writer = ("olduser-w", users["olduser-w"]["password"])
    other = ("olduser-v", users["olduser-v"]["password"])
    keys = {}
    def put(who, key, data, query=""):
        r = call("PUT", f"/v1/kv/{key}{query}", who, data=data)
        assert r.status_code in (200, 201), r.text
        return int(r.headers["ETag"].strip('"'))
    for i in range(6):
        key, value = f"app-old-{i}", f"value-{i}-" + secrets.token_hex(4)
        keys[key] = {"value": value, "version": put(writer, key, value.encode())}
    keys["app-old-ttl"] = {"value": "lives-a-day",
                           "version": put(writer, "app-old-ttl", b"lives-a-day", "?ttl=86400")}
    keys["app-old-bin"] = {"value_hex": "ff00fe",
                           "version": put(writer, "app-old-bin", b"\xff\x00\xfe")}
    keys["app-old-v"] = {"value": "of v", "version": put(other, "app-old-v", b"of v")}
    # app-old-1 changes hands: its charge moves to olduser-v
    keys["app-old-1"] = {"value": "now v's", "version": put(other, "app-old-1", b"now v's")}
    put(writer, "app-old-gone", b"soon gone", "?ttl=1")
    r = call("DELETE", "/v1/kv/app-old-5", writer)
    assert r.status_code in (200, 204), r.text
    del keys["app-old-5"]
    deadline = time.monotonic() + 30
    while call("GET", "/v1/kv/app-old-gone", writer).status_code != 404:
        assert time.monotonic() < deadline, "the one-second key never expired"
        time.sleep(0.2)
    usage = {}
    for name in users:
        r = call("GET", f"/admin/users/{name}", admin)
        assert r.status_code == 200, r.text
        usage[name] = {"keys": r.json()["usage"]["keys"], "bytes": r.json()["usage"]["bytes"]}
    r = call("POST", "/auth/token", writer)
    assert r.status_code == 200, r.text
    tokens = r.json()
    r = call("POST", "/admin/backups", admin)
    assert r.status_code == 201, r.text
    backup = r.json()
    r = call("POST", "/admin/audit/verify", admin)
    assert r.status_code == 200 and r.json()["ok"] is True, r.text
    audit = r.json()
    print(json.dumps({"users": users, "keys": keys, "tokens": tokens, "backup": backup,
                      "audit_verify": audit, "admin_password": admin[1], "usage": usage,
                      "deleted": ["app-old-5", "app-old-gone"]}))
finally:
    stack.stop()
"""

FILLS = {
    release: fill.replace("#CALL\n", _CALL)
    for release, fill in ((PREVIOUS_RELEASE, _FILL), (ONE_TAG_RELEASE, _FILL_ONE_TAG))
}

# Runs inside ONE_TAG_RELEASE's checkout: its KVStore writes the ops (JSON on stdin)
# to the redis named by argv, and prints one JSON line of results.
_ONE_TAG_WRITES = r"""
import json, os, sys
import productionlab
import redis
from productionlab.audit import Actor
from productionlab.kv import KVStore, Quota
from productionlab.store.durability import Durability

assert productionlab.__file__.startswith(os.environ["PLAB_OLD_TREE"]), productionlab.__file__
where = json.loads(sys.argv[1])
if where.pop("cluster"):
    client = redis.RedisCluster(**where)
else:
    client = redis.Redis(**where)
kv = KVStore(client, Durability(client, strict=False), Quota())
results = []
for op, *args in json.load(sys.stdin):
    if op == "put":
        key, value_hex, actor, ttl = args
        results.append(kv.put(key, bytes.fromhex(value_hex), Actor(actor, "127.0.0.1", "old"),
                              ttl=ttl).version)
    elif op == "delete":
        key, actor = args
        results.append(kv.delete(key, Actor(actor, "127.0.0.1", "old")))
    elif op == "usage":
        used = kv.usage(args[0])
        results.append([used.keys, used.bytes])
    elif op == "backup":
        from pathlib import Path
        from productionlab.backup import create_backup
        secret, directory = args
        results.append(create_backup(client, secret, Path(directory), progress=False).as_dict())
    else:
        raise SystemExit(f"unknown op {op!r}")
print(json.dumps(results))
"""


@dataclass(frozen=True)
class PreviousState:
    """A state directory written and left stopped by the previous release."""

    state_dir: Path
    users: dict
    keys: dict
    tokens: dict
    backup: dict | None
    audit_verify: dict
    admin_password: str
    usage: dict | None = None  # ONE_TAG_RELEASE: each user's usage as it reported it
    deleted: list | None = None  # ONE_TAG_RELEASE: keys deleted or expired before the stop


def previous_release_tree(release: str = PREVIOUS_RELEASE) -> Path:
    """An earlier release's source, checked out once per run (a git worktree)."""
    root = Path(os.environ.get("PLAB_TEST_TMP", tempfile.gettempdir()))
    tree = root / f"plab-release-{release[:12]}"
    lock = root / f"plab-release-{release[:12]}.lock"
    with open(lock, "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        if not (tree / "productionlab" / "__init__.py").exists():
            subprocess.run(
                ["git", "-C", str(REPO), "worktree", "prune"], check=False, capture_output=True
            )
            subprocess.run(
                [
                    "git",
                    "-C",
                    str(REPO),
                    "worktree",
                    "add",
                    "--force",
                    "--detach",
                    str(tree),
                    release,
                ],
                check=True,
                capture_output=True,
            )
    return tree


def _run_release(release: str, code: str, *argv: str, stdin: str | None = None) -> object:
    """Run ``code`` with ``release``'s own ``productionlab`` first on sys.path (and no
    PLAB_* setting of this run); the JSON of its last line of output."""
    tree = previous_release_tree(release)
    env = {k: v for k, v in os.environ.items() if not k.startswith("PLAB_")}
    env["PYTHONPATH"] = str(tree)
    env["PLAB_OLD_TREE"] = str(tree)
    result = subprocess.run(
        [sys.executable, "-c", code, *argv],
        cwd=tree,
        env=env,
        input=stdin,
        capture_output=True,
        text=True,
        timeout=240,
    )
    if result.returncode != 0:
        raise AssertionError(
            f"release {release[:7]} failed ({argv}):\n{result.stdout}\n{result.stderr}"
        )
    return json.loads(result.stdout.strip().splitlines()[-1])


def previous_release_state(state_dir: Path, release: str = PREVIOUS_RELEASE) -> PreviousState:
    """Run ``release`` on ``state_dir``, fill it with that release's fill script, stop
    it; say what it stored."""
    data = _run_release(release, FILLS[release], str(state_dir))
    assert isinstance(data, dict)
    return PreviousState(state_dir=state_dir, **data)


def _where(client: redis.Redis | redis.RedisCluster) -> dict:
    """How a subprocess connects to the redis ``client`` talks to."""
    if isinstance(client, redis.RedisCluster):
        node = client.get_default_node()
        kwargs = node.redis_connection.connection_pool.connection_kwargs
        where = {"cluster": True, "host": node.host, "port": node.port}
    else:
        kwargs = client.connection_pool.connection_kwargs
        where = {"cluster": False, "host": kwargs["host"], "port": kwargs["port"]}
    for name in ("username", "password"):
        if kwargs.get(name):
            where[name] = kwargs[name]
    return where


def one_tag_writes(client: redis.Redis | redis.RedisCluster, ops: list[list]) -> list:
    """Apply ``ops`` with ONE_TAG_RELEASE's own ``KVStore`` on ``client``'s redis,
    in order: ``["put", key, value_hex, actor, ttl_or_None]`` -> the version,
    ``["delete", key, actor]`` -> the version, ``["usage", user]`` -> [keys, bytes],
    ``["backup", secret, directory]`` -> that release's backup summary (``as_dict``)."""
    results = _run_release(
        ONE_TAG_RELEASE, _ONE_TAG_WRITES, json.dumps(_where(client)), stdin=json.dumps(ops)
    )
    assert isinstance(results, list)
    return results


@dataclass(frozen=True)
class OldBackup:
    """A backup file ONE_TAG_RELEASE wrote of a one-tag store."""

    path: Path
    keys: int
    digest: str
    kv_version: int


def one_tag_backup(
    client: redis.Redis | redis.RedisCluster, secret: str, directory: Path
) -> OldBackup:
    """A backup of ``client``'s one-tag store, taken by ONE_TAG_RELEASE's own code."""
    (summary,) = one_tag_writes(client, [["backup", secret, str(directory)]])
    return OldBackup(
        directory / summary["name"], summary["keys"], summary["digest"], summary["kv_version"]
    )


@contextlib.contextmanager
def started_on_release_state(
    prefix: str, release: str = PREVIOUS_RELEASE
) -> Iterator[tuple[Supervisor, PreviousState]]:
    """``release``'s state in a new state directory, then this release's stack
    started on it (its start-up migrations run); stopped and removed after."""
    directory = state_dir(prefix)
    old = previous_release_state(directory, release)
    stack = Supervisor(small_stack_config(directory))
    stack.start(timeout=90)
    try:
        yield stack, old
    finally:
        stack.stop()
        shutil.rmtree(directory, ignore_errors=True)


def upgraded_fixture(prefix: str, release: str = PREVIOUS_RELEASE):
    """A module-scoped fixture giving (this release's stack, ``release``'s
    PreviousState), as :func:`started_on_release_state` makes them."""

    @pytest.fixture(scope="module")
    def upgraded() -> Iterator[tuple[Supervisor, PreviousState]]:
        with started_on_release_state(prefix, release) as both:
            yield both

    return upgraded
