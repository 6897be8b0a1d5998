"""The local stack as `make run` runs it: redis outages, full restarts, clean stops."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from productionlab.supervisor import (
    StackConfig,
    StackError,
    Supervisor,
    free_port,
    port_free,
    process_group_members,
)
from tests.conftest import Client, admin_of, dead_components, state_dir, stop_stack
from tests.supervisor_kit import (
    RunProcess,
    all_ports_free,
    children_of,
    cmdline,
    edge_client,
    kill,
    port_env,
    ports_of,
    processes_mentioning,
    restart,
    wait_until,
)


def test_redis_down_gives_503_with_retry_after_then_recovers(stack_factory):
    stack = stack_factory(ap_workers=1, restart_redis=False)
    admin = admin_of(stack)
    assert admin.post("/write/outage-key/before").status_code == 201
    assert dead_components(stack) == {}
    kill(stack, "redis")
    assert dead_components(stack) == {"redis": -signal.SIGKILL}  # what the session guard names
    for response in (
        admin.post("/write/outage-key/during"),
        admin.get("/read/outage-key"),
        admin.put("/v1/kv/outage-key", data=b"x"),
        admin.get("/v1/kv"),
        admin.get("/ready"),
        admin.get("/admin/users"),
    ):
        assert response.status_code == 503, response.text
        assert response.headers["Retry-After"].isdigit()
        body = response.json()
        assert body == {"status": "unavailable"} or body["error"]["code"] == "unavailable"
        assert "Traceback" not in response.text
    assert admin.direct("GET", stack.config.cp_port, "/ready").status_code == 503
    assert admin.get("/health").status_code == 200
    restart(stack, "redis")
    wait_until(lambda: admin.get("/ready").status_code == 200, 15, "/ready after redis returned")
    reads = []

    def served() -> bool:  # /ready answered by one app process; another may meet redis anew
        reads.append(admin.get("/read/outage-key"))
        assert reads[-1].status_code in (200, 503), reads[-1].text
        return reads[-1].status_code == 200

    wait_until(served, 15, "reads served after redis returned")
    assert reads[-1].json()["value"] == "before"
    assert admin.post("/write/outage-key/after").status_code == 200


def test_data_survives_a_full_stop_and_start():
    directory = state_dir()
    config = StackConfig.ephemeral(directory, ap_workers=1)
    first = Supervisor(config)
    first.start(timeout=60)
    try:
        admin = admin_of(first)
        password = admin.password
        version = admin.put("/v1/kv/durable", data=b"kept").json()["version"]
        admin.post("/admin/users", json={"name": "kept-user", "role": "reader", "prefixes": []})
    finally:
        first.stop()
    second = Supervisor(config)
    second.start(timeout=60)
    try:
        admin = admin_of(second)
        assert admin.password == password, "the admin password is not regenerated"
        got = admin.get("/v1/kv/durable")
        assert got.content == b"kept"
        assert got.headers["ETag"] == f'"{version}"'
        assert admin.get("/admin/users/kept-user").status_code == 200
        assert admin.put("/v1/kv/durable2", data=b"x").json()["version"] > version
        assert (second.redis_dir / "appendonly").is_dir()
    finally:
        stop_stack(second)


def test_run_command_serves_and_stops_cleanly_on_sigterm():
    """`productionlab run` (what `make run` executes) starts everything, then SIGTERM
    stops every process it started."""
    directory = state_dir()
    ports = {name: free_port() for name in ("HTTPS", "HTTP", "CP", "REDIS", "AP")}
    env = {
        **os.environ,
        "PLAB_STATE_DIR": str(directory),
        "PLAB_AP_WORKERS": "1",
        **{f"PLAB_{name}_PORT": str(port) for name, port in ports.items()},
    }
    process = subprocess.Popen(
        [sys.executable, "-m", "productionlab", "run"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        line = process.stdout.readline()
        assert json.loads(line) == {"event": "ready", "url": f"https://127.0.0.1:{ports['HTTPS']}"}
        children = set(children_of(process.pid, zombies=True))
        assert len(children) == 4, children  # redis, cp, one ap, nginx
        stack = Supervisor(StackConfig(state_dir=directory, https_port=ports["HTTPS"]))
        admin = Client(
            stack, "admin", (directory / "secrets" / "admin.password").read_text().strip()
        )
        assert admin.post("/write/run-key/v").status_code == 201
        process.send_signal(signal.SIGTERM)
        assert process.wait(30) == 0
        for pid in children:
            assert (
                not Path(f"/proc/{pid}").exists()
                or "Z" in Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
            )
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def test_missing_binary_is_a_clear_error(monkeypatch):
    from productionlab import supervisor

    monkeypatch.setattr(supervisor, "find_binary", lambda name: None)
    stack = Supervisor(StackConfig.ephemeral(state_dir()))
    with pytest.raises(supervisor.StackError) as failure:
        stack.start()
    assert "redis-server" in str(failure.value) and "nginx" in str(failure.value)


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def test_killed_edge_master_leaves_no_orphan_worker_and_is_restarted(stack_factory):
    """SIGKILL the nginx master: its workers would keep the port and answer with the old
    configuration. The supervisor kills the old group, then starts a new edge."""
    stack = stack_factory(ap_workers=1)
    admin = admin_of(stack)
    nginx = stack.components["nginx"]
    master, old_group = nginx.process.pid, nginx.pgid
    workers = [pid for pid in nginx.members() if pid != master]
    assert len(workers) == 2
    conf = str(stack.nginx_dir / "nginx.conf")
    kill(stack, "nginx")  # the master only, as a crash would
    assert all(_alive(pid) for pid in workers), "orphaned workers outlive their master"
    restarted: list[str] = []
    deadline = time.monotonic() + 30
    while "nginx" not in restarted:
        assert time.monotonic() < deadline, "the supervisor did not restart the edge"
        restarted += stack.supervise_once()
        time.sleep(0.1)
    assert [pid for pid in workers if _alive(pid)] == [], "an orphan worker survived"
    assert process_group_members(old_group) == []
    masters = [p for p in processes_mentioning(conf) if "master" in cmdline(p)]
    assert masters == [nginx.process.pid] != [master]
    stack.wait_https("/health", 60)
    assert admin.post("/write/after-edge-kill/v").status_code == 201
    groups = {name: c.pgid for name, c in stack.components.items()}
    ports = [port for c in stack.components.values() for port in c.ports]
    assert stack.stop() == []
    assert all(process_group_members(pgid) == [] for pgid in groups.values())
    assert all(port_free(stack.config.bind, port) for port in ports)
    assert processes_mentioning(str(stack.state)) == []


def test_ctrl_c_after_a_killed_edge_master_leaves_no_process_and_no_port():
    """The issue's scenario under `productionlab run`: kill the edge's master, let the
    supervisor recover, Ctrl-C (SIGINT): nothing of the stack is left."""
    directory = state_dir()
    env = port_env(directory)
    run = RunProcess(env, cwd=Path(__file__).parent.parent).start()
    try:
        run.wait_ready()
        supervisor = run.process.pid

        def master() -> list[int]:
            return [p for p in children_of(supervisor) if "nginx: master" in cmdline(p)]

        [old_master] = master()
        old_workers = children_of(old_master)
        os.kill(old_master, signal.SIGKILL)
        wait_until(lambda: master() not in ([], [old_master]), 60, "a new edge master")
        wait_until(lambda: not any(_alive(p) for p in old_workers), 30, "orphans gone")
        session, base = edge_client(directory, int(env["PLAB_HTTPS_PORT"]))
        wait_until(lambda: session.get(f"{base}/health").status_code == 200, 60, "/health")
        assert session.post(f"{base}/write/after-ctrl-c/v").status_code == 201
        stack_pids = children_of(supervisor) + children_of(master()[0])
        run.process.send_signal(signal.SIGINT)
        _, err = run.process.communicate(timeout=60)
        assert run.process.returncode == 0, err
        assert "left behind" not in err and "Traceback" not in err
        assert [p for p in stack_pids if _alive(p)] == []
        assert processes_mentioning(str(directory)) == []
        assert all_ports_free(ports_of(env))
    finally:
        run.kill()
        shutil.rmtree(directory, ignore_errors=True)


def test_a_killed_supervisor_takes_its_stack_with_it_and_the_next_run_starts():
    """SIGKILL the supervisor itself: every component follows (the parent-death signal,
    armed again by the planes after dropping privileges), the ports are freed, and the
    next run is not refused by the dead one's lock file."""
    directory = state_dir()
    env = port_env(directory)
    checkout = Path(__file__).parent.parent
    run = RunProcess(env, cwd=checkout).start()
    second = RunProcess(env, cwd=checkout)
    try:
        run.wait_ready()
        supervisor = run.process.pid
        [master] = [p for p in children_of(supervisor) if "nginx: master" in cmdline(p)]
        stack_pids = children_of(supervisor) + children_of(master)
        assert len(stack_pids) == 6  # redis, cp, ap1, nginx master and two workers
        run.process.kill()
        run.process.communicate()
        wait_until(lambda: not any(_alive(p) for p in stack_pids), 30, "the stack to follow")
        wait_until(lambda: all_ports_free(ports_of(env)), 30, "the ports")
        second.start()
        assert second.wait_ready() == f"https://127.0.0.1:{env['PLAB_HTTPS_PORT']}"
        status, err = second.stop()
        assert status == 0, err
    finally:
        run.kill()
        second.kill()
        shutil.rmtree(directory, ignore_errors=True)


def test_replicated_durability_is_refused_for_the_one_redis_of_the_local_stack():
    with pytest.raises(StackError, match="needs redis replicas"):
        StackConfig.from_env({"PLAB_DURABILITY": "replicated"})
    assert StackConfig.from_env({"PLAB_DURABILITY": "strict"}).durability == "strict"
