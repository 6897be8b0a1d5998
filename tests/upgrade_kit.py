"""The previous release's state, made by the previous release's own code.

Users upgrade: a change to stored state (keys, ACLs, the audit chain, token
format) must keep an existing stack's data working. Tests that prove a
migration start from a state directory that the previous release wrote:
:func:`previous_release_state` checks out ``PREVIOUS_RELEASE`` from this
repository's history (a ``git worktree``, shared by every test process of the
run), starts that release's local stack on free ports with the given state
directory, fills it through its own edge (users, keys with and without TTL, a
binary value, a token pair, audit entries, a backup) and stops it. The new code
then starts on the same directory.

A missing commit (a shallow clone) is an error, never a skip: CI clones main
whole.
"""

from __future__ import annotations

import fcntl
import json
import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
# The last release before the state changes of issue 9 (audit chain, ACLs, tokens, quotas).
PREVIOUS_RELEASE = "c64ef1124ea63af082305e1e5057ed35d4e46178"

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
try:
    def call(method, path, auth=None, **kw):
        with requests.Session() as s:
            s.trust_env = False
            s.verify = str(stack.tls_cert)
            r = s.request(method, stack.url + path, auth=auth, timeout=30, **kw)
        return r
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


def previous_release_tree() -> Path:
    """The previous release's source, checked out once per run (a git worktree)."""
    root = Path(os.environ.get("PLAB_TEST_TMP", tempfile.gettempdir()))
    tree = root / f"plab-release-{PREVIOUS_RELEASE[:12]}"
    lock = root / f"plab-release-{PREVIOUS_RELEASE[:12]}.lock"
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
                    PREVIOUS_RELEASE,
                ],
                check=True,
                capture_output=True,
            )
    return tree


def previous_release_state(state_dir: Path) -> PreviousState:
    """Run the previous release on ``state_dir``, fill it, stop it; say what it stored."""
    tree = previous_release_tree()
    env = {k: v for k, v in os.environ.items() if not k.startswith("PLAB_")}
    env["PYTHONPATH"] = str(tree)
    env["PLAB_OLD_TREE"] = str(tree)
    result = subprocess.run(
        [sys.executable, "-c", _FILL, str(state_dir)],
        cwd=tree,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )
    if result.returncode != 0:
        raise AssertionError(
            f"the previous release failed to fill {state_dir}:\n{result.stdout}\n{result.stderr}"
        )
    data = json.loads(result.stdout.strip().splitlines()[-1])
    return PreviousState(state_dir=state_dir, **data)
