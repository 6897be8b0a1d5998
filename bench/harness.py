"""The pieces of the benchmark: the systems under test, wrk, and CPU accounting.

Each system runs against its own fresh redis on free loopback ports in a temp
dir: the naive baseline (``bench/naive_app.py``), the hardened stack through
its edge (``productionlab.supervisor.Supervisor``) and Webdis when installed.
"""

from __future__ import annotations

import base64
import http.client
import json
import os
import shutil
import signal
import ssl
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from productionlab.procutil import find_binary, free_port
from productionlab.redis_process import RedisProcess
from productionlab.supervisor import StackConfig, Supervisor

BENCH_DIR = Path(__file__).resolve().parent
KEYS = 256
BENCH_USER = "bench"


def temp_dir(prefix: str) -> Path:
    """A temp dir nginx's unprivileged workers can traverse."""
    path = Path(tempfile.mkdtemp(prefix=prefix, dir=os.environ.get("PLAB_BENCH_TMP", "/tmp")))
    os.chmod(path, 0o711)
    return path


def wait_port(port: int, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=1)
            conn.request("GET", "/")
            conn.getresponse().read()
            conn.close()
            return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"nothing answered on port {port}")


@dataclass
class System:
    """One system under test: a base URL, wrk environment and its processes."""

    name: str
    label: str
    url: str
    env: dict[str, str] = field(default_factory=dict)
    tmp: Path | None = None

    def processes(self) -> dict[str, int]:
        return {}

    def stop(self) -> None:
        if self.tmp is not None:
            shutil.rmtree(self.tmp, ignore_errors=True)


class RedisBacked(System):
    """A system over its own plain redis-server (no password, AOF on, everysec, as the
    hardened stack has), preloaded with the benchmark's keys."""

    server_name = ""

    def __init__(self, name: str, label: str, tmp: Path, **kwargs: object) -> None:
        self.redis = RedisProcess(password=False, directory=tmp)
        self.redis.start()
        port = free_port()
        self.process = self.start_server(tmp, port)
        wait_port(port)
        pipe = self.redis.client.pipeline()
        for i in range(KEYS):
            pipe.set(f"bench-{i}", f"value-{i}")
        pipe.execute()
        super().__init__(name, label, f"http://127.0.0.1:{port}", tmp=tmp, **kwargs)

    def start_server(self, tmp: Path, port: int) -> subprocess.Popen:
        """Start the system's HTTP server on ``port``."""
        raise NotImplementedError

    def processes(self) -> dict[str, int]:
        return {self.server_name: self.process.pid, "redis": self.redis.process.pid}

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(10)
        self.redis.stop()
        super().stop()


class Naive(RedisBacked):
    server_name = "naive"

    def __init__(self) -> None:
        super().__init__(
            "naive", "naive (1 Waitress, HTTP, no auth)", temp_dir("plab-bench-naive-")
        )

    def start_server(self, tmp: Path, port: int) -> subprocess.Popen:
        process = subprocess.Popen(
            [
                sys.executable,
                str(BENCH_DIR / "naive_app.py"),
                "--port",
                str(port),
                "--redis-port",
                str(self.redis.port),
            ],
            stdout=open(tmp / "naive.log", "ab"),
            stderr=subprocess.STDOUT,
        )
        return process


class Webdis(RedisBacked):
    server_name = "webdis"

    def __init__(self) -> None:
        super().__init__(
            "webdis",
            "Webdis (C, HTTP, no auth)",
            temp_dir("plab-bench-webdis-"),
            env={"BENCH_READ": "/GET/", "BENCH_WRITE": "/SET/", "BENCH_WRITE_METHOD": "GET"},
        )

    def start_server(self, tmp: Path, port: int) -> subprocess.Popen:
        conf = {
            "redis_host": "127.0.0.1",
            "redis_port": self.redis.port,
            "redis_auth": None,
            "http_host": "127.0.0.1",
            "http_port": port,
            "threads": 2,
            "pool_size": 16,
            "daemonize": False,
            "database": 0,
            "verbosity": 1,
            "logfile": str(tmp / "webdis.log"),
        }
        (tmp / "webdis.json").write_text(json.dumps(conf))
        binary = find_binary("webdis")
        assert binary is not None
        process = subprocess.Popen(
            [binary, str(tmp / "webdis.json")],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        return process

    @staticmethod
    def available() -> bool:
        return find_binary("webdis") is not None


class Hardened(System):
    """The full stack through the edge: TLS, basic auth, key regex, edge and
    per-user rate limits (raised for the run, still checked on every
    request), audit, metrics, AOF on."""

    def __init__(
        self,
        ap_workers: int | None = None,
        threads: int | None = None,
        redis_url: str | None = None,
        before_start: Callable[[Supervisor], None] | None = None,
    ) -> None:
        """``redis_url``: the planes' ``PLAB_REDIS_URL`` instead of the stack's own
        redis (which still starts, idle); ``before_start``: called with the prepared
        stack (secrets written) before anything starts, e.g. to give that redis the
        planes' ACL users."""
        tmp = temp_dir("plab-bench-stack-")
        overrides: dict[str, object] = {
            "edge_rate": 1_000_000,
            "edge_burst": 1_000_000,
            # the watch workload (issue 13): one user holds 200 watches at once
            "edge_watch_rate": 1_000_000,
            "edge_watch_burst": 1_000_000,
            "edge_watch_conns": 1_000,
            "user_rate": "100000000/minute",
        }
        if ap_workers is not None:
            overrides["ap_workers"] = ap_workers
        if threads is not None:
            overrides["threads"] = threads
        # PLAB_REDIS_TLS=on measures the hardened stack with redis on TLS only
        overrides["redis_tls"] = os.environ.get("PLAB_REDIS_TLS", "off").lower() == "on"
        if redis_url is not None:
            overrides["extra_env"] = {"PLAB_REDIS_URL": redis_url}
        self.stack = Supervisor(StackConfig.ephemeral(tmp, **overrides))
        if before_start is not None:
            self.stack.prepare()
            before_start(self.stack)
        self.stack.start(timeout=60)
        self.context = ssl.create_default_context(cafile=str(self.stack.tls_cert))
        admin_password = self.stack.admin_password_file.read_text().strip()
        created = self.call(
            "POST",
            "/admin/users",
            ("admin", admin_password),
            json.dumps({"name": BENCH_USER, "role": "writer", "prefixes": ["bench-"]}),
        )
        password = created["password"]
        self.auth = (BENCH_USER, password)
        conn = self.connection()
        header = self.auth_header(self.auth)
        for i in range(KEYS):
            conn.request("POST", f"/write/bench-{i}/value-{i}", headers={"Authorization": header})
            response = conn.getresponse()
            response.read()
            if response.status not in (200, 201):
                raise RuntimeError(f"preloading bench-{i}: {response.status}")
        conn.close()
        super().__init__(
            "hardened",
            f"hardened ({self.stack.config.ap_workers} ap x {self.stack.config.threads} threads, "
            "TLS edge, auth, limits, audit)",
            self.stack.url,
            env={"BENCH_AUTH": header},
            tmp=tmp,
        )

    @staticmethod
    def auth_header(auth: tuple[str, str]) -> str:
        return "Basic " + base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode()

    def connection(self) -> http.client.HTTPSConnection:
        return http.client.HTTPSConnection(
            self.stack.config.bind, self.stack.config.https_port, context=self.context, timeout=15
        )

    def call(self, method: str, path: str, auth: tuple[str, str], body: str | None = None) -> dict:
        conn = self.connection()
        headers = {"Authorization": self.auth_header(auth), "Content-Type": "application/json"}
        conn.request(method, path, body=body, headers=headers)
        response = conn.getresponse()
        data = response.read()
        conn.close()
        if response.status >= 300:
            raise RuntimeError(f"{method} {path}: {response.status} {data[:200]!r}")
        return json.loads(data)

    def watches_held(self) -> int:
        """Watches the app-plane processes hold now: the sum of their
        ``plab_watches_held`` gauges (each process's own /metrics, not via the edge)."""
        held = 0.0
        for port in self.stack.config.ap_ports:
            conn = http.client.HTTPConnection(self.stack.config.bind, port, timeout=15)
            try:
                conn.request("GET", "/metrics")
                text = conn.getresponse().read().decode()
            finally:
                conn.close()
            held += sum(
                float(line.rsplit(" ", 1)[1])
                for line in text.splitlines()
                if line.startswith("plab_watches_held{")
            )
        return int(held)

    def processes(self) -> dict[str, int]:
        found: dict[str, int] = {}
        for name, component in self.stack.components.items():
            if component.process is None:
                continue
            pid = component.process.pid
            if name == "nginx":
                found["nginx-master"] = pid
                for index, child in enumerate(sorted(children_of(pid))):
                    found[f"nginx-worker{index + 1}"] = child
            else:
                found[name] = pid
        return found

    def stop(self) -> None:
        self.stack.stop()
        super().stop()


def parents() -> dict[int, int]:
    """Every live process's parent, from /proc/<pid>/stat."""
    found: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            found[int(entry.name)] = int(stat.rsplit(")", 1)[1].split()[1])
    return found


def children_of(pid: int) -> list[int]:
    return [child for child, parent in parents().items() if parent == pid]


def rss_kib(pid: int) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


# --- CPU accounting: how much of the machine was used by others during a run ---
CLK_TCK = os.sysconf("SC_CLK_TCK")


def _busy_jiffies() -> int:
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + fields[4]
    return sum(fields[:8]) - idle


def _descendants(root: int) -> list[int]:
    parent = parents()
    found, frontier = [], [root]
    while frontier:
        current = frontier.pop()
        kids = [p for p, pp in parent.items() if pp == current]
        found += kids
        frontier += kids
    return found


def _own_jiffies() -> int:
    """CPU of this process, its reaped children (wrk) and its live descendants."""
    total = 0
    own = Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()
    total += sum(int(x) for x in own[11:15])  # utime stime cutime cstime
    for pid in _descendants(os.getpid()):
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])
    return total


@dataclass
class CpuWindow:
    busy: int = 0
    own: int = 0
    started: float = 0.0

    @classmethod
    def open(cls) -> CpuWindow:
        return cls(_busy_jiffies(), _own_jiffies(), time.monotonic())

    def foreign_percent(self) -> float:
        """CPU used by processes that are not ours, in % of the whole machine."""
        elapsed = time.monotonic() - self.started
        foreign = max(0, (_busy_jiffies() - self.busy) - (_own_jiffies() - self.own))
        capacity = elapsed * CLK_TCK * (os.cpu_count() or 1)
        return 100.0 * foreign / capacity if capacity else 0.0


# --- wrk ----------------------------------------------------------------------
@dataclass
class WrkResult:
    requests: int
    rps: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    max_ms: float
    errors: int
    non2xx: int
    foreign_cpu: float
    # answers by status class (2xx, 4xx, 429, 503, other) when run with BENCH_STATUS=1
    status: dict[str, int] | None = None

    @classmethod
    def parse(cls, output: str, foreign_cpu: float) -> WrkResult:
        line = next((x for x in output.splitlines() if x.startswith("BENCH_JSON ")), None)
        if line is None:
            raise RuntimeError(f"wrk printed no summary:\n{output[-2000:]}")
        data = json.loads(line.split(" ", 1)[1])
        errors = sum(data[k] for k in ("err_connect", "err_read", "err_write", "err_timeout"))
        return cls(
            requests=data["requests"],
            rps=data["requests"] / (data["duration_us"] / 1e6),
            p50_ms=data["p50_us"] / 1000,
            p90_ms=data["p90_us"] / 1000,
            p99_ms=data["p99_us"] / 1000,
            max_ms=data["max_us"] / 1000,
            errors=errors,
            non2xx=data["err_status"],
            foreign_cpu=foreign_cpu,
            status=data.get("status"),
        )


def run_wrk(
    system: System,
    workload: str,
    seconds: float,
    threads: int = 2,
    connections: int = 32,
    extra_env: dict[str, str] | None = None,
    timeout_s: int = 5,
) -> WrkResult:
    wrk = find_binary("wrk")
    if wrk is None:
        raise RuntimeError("wrk is missing: apt-get install wrk")
    env = dict(os.environ)
    env.update(BENCH_DIR=str(BENCH_DIR), BENCH_KEYS=str(KEYS), **system.env, **(extra_env or {}))
    argv = [
        wrk,
        f"-t{threads}",
        f"-c{connections}",
        f"-d{max(1, round(seconds))}s",
        f"--timeout={timeout_s}s",
        "-s",
        str(BENCH_DIR / f"{workload}.lua"),
        system.url,
    ]
    window = CpuWindow.open()
    done = subprocess.run(
        argv, env=env, capture_output=True, text=True, check=False, timeout=seconds + 120
    )
    foreign = window.foreign_percent()
    if done.returncode != 0:
        raise RuntimeError(f"wrk failed ({done.returncode}): {done.stderr[-2000:]}")
    return WrkResult.parse(done.stdout, foreign)


def stop_all(systems: list[System]) -> None:
    for system in systems:
        try:
            system.stop()
        except (OSError, subprocess.SubprocessError, RuntimeError) as exc:
            print(f"bench: stopping {system.name}: {exc}", file=sys.stderr)


def handle_signals() -> None:
    """SIGTERM and SIGINT (even when started in the background) stop the run cleanly."""

    def stop(signum: int, _frame: object) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)


def cpu_seconds(pids: dict[str, int]) -> dict[str, float]:
    """utime + stime of each named process, in seconds."""
    found = {}
    for name, pid in pids.items():
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        found[name] = (int(fields[11]) + int(fields[12])) / CLK_TCK
    return found
