"""The operator commands find the local stack on their own (issue 10, item 2).

Each test runs the real command line as a subprocess with a clean environment
(no PLAB_* at all), the way a newcomer types it right after `make run`, against
a stack started by the fixtures; only the directory it runs in tells it where
the stack is.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess  # nosec B404
import sys
from pathlib import Path

import pytest

from productionlab import stackfile
from productionlab.settings import SECRET_NAMES
from productionlab.supervisor import Supervisor, free_port
from tests.conftest import Client


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PLAB_")}
    env.update(extra)
    return env


def cli(
    *args: str, cwd: Path, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "productionlab", *args],
        cwd=cwd,
        env=clean_env() if env is None else env,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )


@pytest.fixture
def checkout(stack: Supervisor, tmp_path: Path) -> Path:
    """A directory whose `var` is the stack's state dir, as in a checkout after `make run`."""
    (tmp_path / "var").symlink_to(stack.state)
    return tmp_path


def banner(stack: Supervisor) -> str:
    return f"productionlab: using the local stack in {stack.state} ({stack.url})"


def test_descriptor_holds_the_control_planes_settings_and_no_secret(stack: Supervisor) -> None:
    path = stack.state / "stack.json"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    text = path.read_text()
    body = json.loads(text)
    assert body["url"] == stack.url
    assert body["supervisor_pid"] == os.getpid()
    expected = {k: v for k, v in stack.plane_env("cp").items() if k.startswith("PLAB_")}
    assert body["env"] == expected
    for name in (*SECRET_NAMES, "redis_cp_password", "redis_ap_password", "admin.password"):
        assert stack.secret(name) not in text, name
    assert body["env"]["PLAB_SECRET_KEY_FILE"] == str(stack.secrets_dir / "secret_key")


def test_operator_commands_work_bare_in_the_checkout(
    stack: Supervisor, checkout: Path, key: str
) -> None:
    verify = cli("audit", "verify", cwd=checkout)
    assert verify.returncode == 0, verify.stderr
    assert verify.stderr.splitlines()[0] == banner(stack)
    assert verify.stdout.startswith("audit: OK"), verify.stdout

    name = f"ops{key[2:10]}"
    created = cli("users", "create", name, "--role", "writer", "--prefix", "ops-", cwd=checkout)
    assert created.returncode == 0, created.stderr
    assert created.stderr.splitlines()[0] == banner(stack)
    user = json.loads(created.stdout)
    assert user["name"] == name and user["role"] == "writer"
    # The command changed the running stack: the edge and the app plane accept the user.
    client = Client(stack, name, user["password"])
    assert client.post(f"/write/ops-{key}/v").status_code == 201

    listed = cli("users", "list", cwd=checkout)
    assert listed.returncode == 0, listed.stderr
    assert name in [json.loads(line)["name"] for line in listed.stdout.splitlines()]

    backup = cli("backup", "create", "--quiet", cwd=checkout)
    assert backup.returncode == 0, backup.stderr
    path = Path(backup.stdout.split()[1])
    assert path.parent == stack.state / "backups" and path.is_file()

    check = cli("check-prod", cwd=checkout)
    # A development stack is not fit for production: findings, exit 1 — not a
    # configuration error (2) or a redis error (3).
    assert check.returncode == 1, check.stdout + check.stderr
    assert check.stderr.splitlines()[0] == banner(stack)
    findings = check.stdout.splitlines()
    assert findings and not [f for f in findings if f.startswith("config:")], findings


def test_state_dir_variable_points_at_the_stack(stack: Supervisor, tmp_path: Path) -> None:
    result = cli("audit", "verify", cwd=tmp_path, env=clean_env(PLAB_STATE_DIR=str(stack.state)))
    assert result.returncode == 0, result.stderr
    assert result.stderr.splitlines()[0] == banner(stack)


def test_a_subdirectory_of_the_checkout_finds_it(stack: Supervisor, checkout: Path) -> None:
    inner = checkout / "docs" / "deeper"
    inner.mkdir(parents=True)
    result = cli("users", "list", cwd=inner)
    assert result.returncode == 0, result.stderr
    assert result.stderr.splitlines()[0] == banner(stack)


def test_explicit_variables_win_over_the_descriptor(
    stack: Supervisor, checkout: Path, tmp_path: Path
) -> None:
    # One explicit setting on top of the local stack: it wins, the rest comes from it.
    elsewhere = tmp_path / "elsewhere"
    result = cli(
        "backup", "create", "--quiet", cwd=checkout, env=clean_env(PLAB_BACKUP_DIR=str(elsewhere))
    )
    assert result.returncode == 0, result.stderr
    assert Path(result.stdout.split()[1]).parent == elsewhere

    # An environment that names a stack is used alone: the descriptor is not read,
    # so a redis nobody listens on is what the command reports, and no banner.
    dead = f"redis://127.0.0.1:{free_port()}/0"
    result = cli("audit", "verify", cwd=checkout, env=clean_env(PLAB_REDIS_URL=dead))
    assert "using the local stack" not in result.stderr
    assert result.returncode == 2, result.stderr  # no secrets given: refused, not guessed
    assert "PLAB_SECRET_KEY is missing" in result.stderr

    # The full explicit environment (what compose gives) works with no descriptor.
    explicit = {k: v for k, v in stack.plane_env("cp").items() if k.startswith("PLAB_")}
    result = cli("audit", "verify", cwd=tmp_path / "elsewhere", env=clean_env(**explicit))
    assert result.returncode == 0, result.stderr
    assert "using the local stack" not in result.stderr
    explicit["PLAB_REDIS_URL"] = dead
    result = cli("audit", "verify", cwd=checkout, env=clean_env(**explicit))
    assert result.returncode == 3, result.stderr
    assert "using the local stack" not in result.stderr


def test_no_stack_found_says_what_to_do_in_one_line(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    for command in (["audit", "verify"], ["users", "list"], ["check-prod"]):
        result = cli(*command, cwd=empty, env=clean_env(PLAB_STATE_DIR=str(empty)))
        assert result.returncode == 2
        assert result.stdout == ""
        lines = result.stderr.splitlines()
        assert len(lines) == 1, result.stderr
        assert "make run" in lines[0] and "PLAB_" in lines[0] and str(empty) in lines[0]


def test_descriptor_never_holds_an_inline_secret(tmp_path: Path) -> None:
    plane_env = {
        "PLAB_REDIS_URL": "redis://127.0.0.1:1/0",
        "PLAB_SECRET_KEY": "inline-value-must-not-be-written",
        "PLAB_REDIS_PASSWORD": "another-inline-value",
        "PLAB_AUDIT_KEY_FILE": "/somewhere/audit_key",
        "HOME": "/root",
    }
    path = stackfile.write(tmp_path, plane_env, "https://127.0.0.1:1", os.getpid())
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    text = path.read_text()
    assert "inline" not in text and "HOME" not in text
    assert stackfile.load(path).env == {
        "PLAB_AUDIT_KEY_FILE": "/somewhere/audit_key",
        "PLAB_REDIS_URL": "redis://127.0.0.1:1/0",
    }


def test_banner_says_when_the_stacks_supervisor_is_gone(tmp_path: Path) -> None:
    gone = subprocess.Popen(["true"])
    gone.wait()  # reaped: its pid names no process now
    stackfile.write(tmp_path, {}, "https://127.0.0.1:1", gone.pid)
    descriptor = stackfile.find({"PLAB_STATE_DIR": str(tmp_path)})
    assert descriptor is not None and not descriptor.running
    assert descriptor.banner() == (
        f"using the local stack in {tmp_path} (https://127.0.0.1:1, its supervisor is not running)"
    )
    stackfile.write(tmp_path, {}, "https://127.0.0.1:1", os.getpid())
    assert stackfile.find({"PLAB_STATE_DIR": str(tmp_path)}).banner() == (
        f"using the local stack in {tmp_path} (https://127.0.0.1:1)"
    )


def test_an_unreadable_descriptor_is_a_one_line_error(tmp_path: Path) -> None:
    (tmp_path / "stack.json").write_text("{not json")
    result = cli("users", "list", cwd=tmp_path, env=clean_env(PLAB_STATE_DIR=str(tmp_path)))
    assert result.returncode == 2
    assert len(result.stderr.splitlines()) == 1, result.stderr
    assert "is not a stack descriptor" in result.stderr and "Traceback" not in result.stderr


def test_a_stopped_stack_is_still_found(stack_factory, tmp_path: Path) -> None:
    stopped = stack_factory(ap_workers=1)
    (tmp_path / "var").symlink_to(stopped.state)
    made = cli("backup", "create", "--quiet", cwd=tmp_path)
    assert made.returncode == 0, made.stderr
    backup = made.stdout.split()[1]
    stopped.stop()

    # What needs no redis still works: the settings come from the descriptor.
    verified = cli("backup", "verify", backup, cwd=tmp_path)
    assert verified.returncode == 0, verified.stderr
    assert verified.stderr.splitlines()[0].startswith(
        f"productionlab: using the local stack in {stopped.state}"
    )
    # What needs redis says why it failed and what to do, in one line after the banner.
    listed = cli("users", "list", cwd=tmp_path)
    assert listed.returncode == 3
    lines = listed.stderr.splitlines()
    assert len(lines) == 2 and "Traceback" not in listed.stderr, listed.stderr
    assert lines[1].startswith("productionlab: redis: ConnectionError") and "make run" in lines[1]


def test_commands_run_as_root_leave_their_files_to_the_planes_user(
    stack: Supervisor, checkout: Path
) -> None:
    """As root the planes run as the service user: what an operator command writes
    in their directories (archive segments, checkpoints, lock files, backups) must
    stay writable by them, or the control plane's next append fails."""
    assert os.geteuid() == 0, "this test proves the root case; the suite runs as root in CI"
    for args in (
        ("audit", "checkpoint"),
        ("audit", "trim", "--keep", "1000"),
        ("backup", "create"),
    ):
        result = cli(*args, cwd=checkout)
        assert result.returncode == 0, result.stderr
    for directory in (stack.state / "audit", stack.state / "backups"):
        owner = directory.resolve().stat().st_uid
        assert owner != 0, directory
        for path in directory.resolve().rglob("*"):
            assert path.lstat().st_uid == owner, path
    admin = Client(stack, "admin", stack.admin_password_file.read_text().strip())
    assert admin.post("/admin/audit/checkpoint").status_code == 201
    verify = admin.post("/admin/audit/verify")
    assert verify.status_code == 200 and verify.json()["ok"] is True, verify.text
