"""Chaos: under a steady write load through the edge, every kind of component is
SIGKILLed in turn (redis, each app-plane process, the control plane, the nginx
master, an nginx worker). The supervisor (`supervise_once`, the loop `make run`
runs) must bring the stack back by itself; no acknowledged write may be lost;
answers during the faults are 2xx or a JSON 503 with Retry-After (the edge turns
an upstream's 502/504 into that), never a 500; at the end nothing is left."""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import threading
import time
from collections import Counter
from dataclasses import dataclass, field

import pytest
import redis
import requests

from productionlab.supervisor import Supervisor, port_free
from tests.conftest import start_stack
from tests.supervisor_kit import processes_mentioning, wait_until

WRITERS = 3
MAX_WRITES_PER_WRITER = 1500
RECOVERY_TIMEOUT = 90


@dataclass
class Ledger:
    acknowledged: dict[str, str] = field(default_factory=dict)
    statuses: Counter = field(default_factory=Counter)
    bad: list[str] = field(default_factory=list)
    no_answer: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)


def session_for(stack: Supervisor) -> requests.Session:
    session = requests.Session()
    session.trust_env = False
    session.verify = str(stack.tls_cert)
    session.auth = ("admin", stack.admin_password_file.read_text().strip())
    return session


def writer(stack: Supervisor, number: int, ledger: Ledger, stop: threading.Event) -> None:
    session = session_for(stack)
    for index in range(MAX_WRITES_PER_WRITER):
        if stop.is_set():
            return
        key, value = f"chaos-{number}-{index}", secrets.token_hex(4)
        try:
            response = session.post(f"{stack.url}/write/{key}/{value}", timeout=15)
        except requests.RequestException:
            with ledger.lock:
                ledger.no_answer += 1  # the edge itself was down or reset: no answer at all
            session = session_for(stack)
            time.sleep(0.05)
            continue
        with ledger.lock:
            ledger.statuses[response.status_code] += 1
            if 200 <= response.status_code < 300:
                ledger.acknowledged[key] = value
            elif not acceptable_refusal(response):
                ledger.bad.append(f"{response.status_code} {response.headers} {response.text!r}")
        time.sleep(0.02)


def acceptable_refusal(response: requests.Response) -> bool:
    """503 + Retry-After with the contract's JSON error: a plane or redis is down."""
    if response.status_code != 503 or not response.headers.get("Retry-After", "").isdigit():
        return False
    try:
        return response.json()["error"]["code"] == "unavailable"
    except (ValueError, KeyError, TypeError):
        return False


class RunLoop:
    """`make run`'s loop, run on the main thread as there: children the supervisor
    starts get SIGTERM when the thread that started them ends (PR_SET_PDEATHSIG),
    so the supervising thread must live as long as the stack."""

    def __init__(self, stack: Supervisor):
        self.stack = stack
        self.restarted: list[str] = []

    def tick(self) -> None:
        self.restarted += self.stack.supervise_once()

    def wait(self, predicate, timeout: float, what: str) -> None:
        def ticked() -> bool:
            self.tick()
            return predicate()

        wait_until(ticked, timeout, what)

    def run_for(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            self.tick()
            time.sleep(0.2)


def plane_ready(stack: Supervisor, port: int) -> bool:
    try:
        url = f"http://{stack.config.bind}:{port}/ready"
        return requests.get(url, timeout=2).status_code == 200
    except requests.RequestException:
        return False


def edge_healthy(stack: Supervisor) -> bool:
    try:
        return session_for(stack).get(f"{stack.url}/ready", timeout=5).status_code == 200
    except requests.RequestException:
        return False


def redis_up(stack: Supervisor) -> bool:
    try:
        client = stack.redis_client()
        client.ping()
        client.close()
        return True
    except redis.RedisError:
        return False


def kill_and_recover(stack: Supervisor, name: str, supervisor: RunLoop) -> None:
    component = stack.components[name]
    before = supervisor.restarted.count(name)
    os.kill(component.process.pid, signal.SIGKILL)
    supervisor.wait(
        lambda: supervisor.restarted.count(name) > before, RECOVERY_TIMEOUT, f"{name} restarted"
    )
    if name == "redis":
        supervisor.wait(lambda: redis_up(stack), RECOVERY_TIMEOUT, "redis back")
    elif name != "nginx":
        supervisor.wait(lambda: plane_ready(stack, component.ports[0]), RECOVERY_TIMEOUT, name)
    supervisor.wait(lambda: edge_healthy(stack), RECOVERY_TIMEOUT, f"the edge after {name}")


def kill_a_worker(stack: Supervisor, supervisor: RunLoop) -> None:
    nginx = stack.components["nginx"]
    master = nginx.process.pid
    workers = [pid for pid in nginx.members() if pid != master]
    os.kill(workers[0], signal.SIGKILL)
    supervisor.wait(
        lambda: len([p for p in nginx.members() if p != master and p not in workers]) >= 1,
        RECOVERY_TIMEOUT,
        "the master to replace its worker",
    )
    supervisor.wait(lambda: edge_healthy(stack), RECOVERY_TIMEOUT, "the edge after a worker")


@pytest.mark.slow
def test_every_component_killed_under_write_load_recovers_and_loses_no_acknowledged_write():
    stack = start_stack(
        ap_workers=2,
        durability="strict",  # an acknowledgement means fsynced: a redis SIGKILL loses none
        edge_rate=5000,
        edge_burst=5000,
        admin_rate=1000,
        admin_burst=1000,
        user_rate="1000000/minute",
    )
    ledger, stop_load = Ledger(), threading.Event()
    supervisor = RunLoop(stack)
    writers = [
        threading.Thread(target=writer, args=(stack, n, ledger, stop_load)) for n in range(WRITERS)
    ]
    ports = [port for component in stack.components.values() for port in component.ports]
    try:
        for thread in writers:
            thread.start()
        supervisor.run_for(1.0)
        for name in ("redis", "ap1", "ap2", "cp", "nginx"):
            kill_and_recover(stack, name, supervisor)
            supervisor.run_for(1.0)  # load against the recovered stack
        kill_a_worker(stack, supervisor)
        supervisor.run_for(1.0)
    finally:
        stop_load.set()
        for thread in writers:
            thread.join(60)

    try:
        restarted = supervisor.restarted
        assert sorted(restarted) == ["ap1", "ap2", "cp", "nginx", "redis"], restarted
        assert ledger.bad == [], ledger.bad[:5]
        assert 500 not in ledger.statuses
        assert len(ledger.acknowledged) > 50, ledger.statuses  # the load really ran
        session = session_for(stack)
        lost = []
        for key, value in ledger.acknowledged.items():
            response = session.get(f"{stack.url}/read/{key}", timeout=15)
            if response.status_code != 200 or response.json()["value"] != value:
                lost.append((key, value, response.status_code, response.text))
        assert lost == [], f"{len(lost)} acknowledged writes lost, e.g. {lost[:3]}"
        print(  # the figures, for `pytest -s`
            f"chaos: statuses {dict(ledger.statuses)}, no answer {ledger.no_answer}, "
            f"acknowledged and read back {len(ledger.acknowledged)}, restarts {restarted}"
        )
    finally:
        left = stack.stop()
        state = stack.state
        if os.environ.get("PLAB_KEEP_TEST_STATE") != "1":
            shutil.rmtree(state, ignore_errors=True)
    assert left == []
    assert processes_mentioning(str(state)) == []
    assert all(port_free(stack.config.bind, port) for port in ports)
