"""Every start-up failure a newcomer can meet is one line saying what to do.

Each case runs `python -m productionlab run` (what `make run` executes) as a
subprocess and checks its exit status and its one line, never a traceback."""

from __future__ import annotations

import io
import shutil
import socket
import subprocess
import sys
import tarfile
from pathlib import Path

from tests.conftest import state_dir
from tests.supervisor_kit import (
    REPO,
    RunProcess,
    all_ports_free,
    edge_client,
    finished,
    port_env,
    ports_of,
    wait_until,
)

PREVIOUS_RELEASE = "c64ef11"


def one_line(output: str) -> str:
    lines = [line for line in output.splitlines() if line.strip()]
    assert "Traceback" not in output, output
    assert len(lines) == 1, output
    return lines[0]


def test_port_in_use_names_the_variable_that_moves_it():
    state = state_dir()
    env = port_env(state)
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", int(env["PLAB_HTTPS_PORT"])))
        squatter.listen()
        status, output = finished([], env, REPO)
    line = one_line(output)
    assert status == 1
    assert f"port {env['PLAB_HTTPS_PORT']}" in line and "already in use" in line
    assert "set PLAB_HTTPS_PORT to a free port" in line
    assert all_ports_free(ports_of(env))
    shutil.rmtree(state)


def test_missing_os_package_says_how_to_install_it():
    """The supervisor's own check (make run's system-deps step names the packages first
    when not root); the binary lookup is made to find nothing, as on a bare machine."""
    state = state_dir()
    env = port_env(state)
    code = (
        "import productionlab.supervisor as stack; stack.find_binary = lambda name: None; "
        "from productionlab.cli import main; raise SystemExit(main(['run']))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], env=env, cwd=REPO, capture_output=True, text=True
    )
    line = one_line(result.stdout + result.stderr)
    assert result.returncode == 1
    assert "sudo apt-get install redis-server nginx" in line
    shutil.rmtree(state)


def test_state_dir_of_a_newer_format_is_refused():
    state = state_dir()
    (state / "state-format").write_text("99\n")
    status, output = finished([], port_env(state), REPO)
    line = one_line(output)
    assert status == 1
    assert "newer productionlab (state format 99" in line and "PLAB_STATE_DIR" in line
    assert sorted(p.name for p in state.iterdir()) == ["run.lock", "state-format"]
    shutil.rmtree(state)


def test_second_run_in_the_same_checkout_names_the_running_one():
    state = state_dir()
    env = port_env(state)
    first = RunProcess(env, cwd=REPO).start()
    try:
        first.wait_ready()
        status, output = finished([], env, REPO)
        line = one_line(output)
        pid = first.process.pid
        assert status == 1
        assert line == (
            f"productionlab: a stack from this checkout is already running (pid {pid}); "
            f"stop it with Ctrl-C in its terminal or kill {pid}"
        )
        session, base = edge_client(state, int(env["PLAB_HTTPS_PORT"]))
        assert session.get(f"{base}/health").status_code == 200, "the first one is untouched"
        status, err = first.stop()
        assert status == 0, err
    finally:
        first.kill()
        shutil.rmtree(state, ignore_errors=True)


def previous_release(destination: Path) -> Path:
    """c64ef11's code (the previous release), unpacked from git."""
    archive = subprocess.run(
        ["git", "-C", str(REPO), "archive", PREVIOUS_RELEASE, "productionlab", "nginx"],
        capture_output=True,
        check=True,
    ).stdout
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(destination, filter="data")
    return destination


def test_state_dir_of_the_previous_release_is_upgraded_in_place(tmp_path):
    """A var/ written by c64ef11's `make run` (format 1: no format file) is upgraded with
    one line, keeps its data and admin password, and is then marked format 2."""
    old_code = previous_release(tmp_path / "old")
    state = state_dir()
    env = port_env(state)
    old = RunProcess(env, cwd=old_code).start()
    try:
        old.wait_ready()
        session, base = edge_client(state, int(env["PLAB_HTTPS_PORT"]))
        assert session.post(f"{base}/write/from-c64ef11/kept").status_code == 201
        password = session.auth[1]
        status, err = old.stop()
        assert status == 0, err
    finally:
        old.kill()
    assert not (state / "state-format").exists()
    wait_until(lambda: all_ports_free(ports_of(env)), 15, "the old stack's ports")

    new = RunProcess(env, cwd=REPO).start()
    try:
        new.wait_ready()
        session, base = edge_client(state, int(env["PLAB_HTTPS_PORT"]))
        assert session.auth[1] == password
        assert session.get(f"{base}/read/from-c64ef11").json()["value"] == "kept"
        assert session.post(f"{base}/write/after-upgrade/v").status_code == 201
        status, err = new.stop()
        assert status == 0, err
    finally:
        new.kill()
    notices = [line for line in err.splitlines() if "upgraded" in line]
    assert notices == [f"productionlab: upgraded state dir {state} from format 1 to 2"], err
    assert "Traceback" not in err
    assert (state / "state-format").read_text() == "2\n"
    shutil.rmtree(state)


def test_a_bad_port_or_count_names_its_variable():
    state = state_dir()
    status, output = finished([], port_env(state, PLAB_AP_WORKERS="many"), REPO)
    line = one_line(output)
    assert status == 2
    assert "PLAB_AP_WORKERS='many' is not an integer" in line, line
    assert not any(state.iterdir()), "nothing is written before the settings are valid"
    shutil.rmtree(state)
