"""The local stack without Docker: redis, the control plane, N app-plane
processes and nginx, supervised in the foreground.

``make run`` uses it with the defaults of DESIGN.md; the test suite uses the
same class with free ports and a temporary state directory, so the tests run
the system the way users do.
"""

from __future__ import annotations

import contextlib
import ctypes
import grp
import json
import os
import pwd
import shutil
import signal
import socket
import ssl
import subprocess  # the local stack runs its own processes  # nosec B404
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import redis

from productionlab.render import EdgeConfig, RedisUser, render_redis_conf
from productionlab.secretgen import ensure_secrets, ensure_tls
from productionlab.settings import SECRET_NAMES, parse_size

PR_SET_PDEATHSIG = 1


def find_binary(name: str) -> str | None:
    return shutil.which(name) or next(
        (
            str(p)
            for d in ("/usr/sbin", "/usr/bin", "/usr/local/sbin", "/usr/local/bin")
            if (p := Path(d) / name).exists()
        ),
        None,
    )


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def _die_with_parent() -> None:
    """Children get SIGTERM if the supervisor dies, so no process is left behind."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


@dataclass
class StackConfig:
    state_dir: Path = Path("var")
    bind: str = "127.0.0.1"
    https_port: int = 8443
    http_port: int = 8080
    ap_port: int = 8101
    ap_workers: int = max(1, os.cpu_count() or 1)
    cp_port: int = 8201
    redis_port: int = 6390
    env: str = "development"
    durability: str = "everysec"
    edge_rate: int = 50
    edge_burst: int = 100
    admin_rate: int = 5
    admin_burst: int = 10
    user_rate: str = "6000/minute"
    max_body: str = "1m"
    threads: int = 8
    restart_apps: bool = True
    restart_redis: bool = True
    ready_path: str = "/ready"
    extra_env: dict[str, str] = field(default_factory=dict)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> StackConfig:
        environ = os.environ if environ is None else environ

        def get(name: str, default: object) -> str:
            return environ.get(f"PLAB_{name}", str(default))

        defaults = cls()
        return cls(
            state_dir=Path(get("STATE_DIR", "var")),
            bind=get("BIND", defaults.bind),
            https_port=int(get("HTTPS_PORT", defaults.https_port)),
            http_port=int(get("HTTP_PORT", defaults.http_port)),
            ap_port=int(get("AP_PORT", defaults.ap_port)),
            ap_workers=int(get("AP_WORKERS", defaults.ap_workers)),
            cp_port=int(get("CP_PORT", defaults.cp_port)),
            redis_port=int(get("REDIS_PORT", defaults.redis_port)),
            env=get("ENV", defaults.env),
            durability=get("DURABILITY", defaults.durability),
            edge_rate=int(get("EDGE_RATE", defaults.edge_rate)),
            edge_burst=int(get("EDGE_BURST", defaults.edge_burst)),
            admin_rate=int(get("ADMIN_RATE", defaults.admin_rate)),
            admin_burst=int(get("ADMIN_BURST", defaults.admin_burst)),
            user_rate=get("USER_RATE", defaults.user_rate),
            max_body=get("MAX_BODY", defaults.max_body),
            threads=int(get("THREADS", defaults.threads)),
        )

    @classmethod
    def ephemeral(cls, state_dir: Path, **overrides: object) -> StackConfig:
        """Free loopback ports for every listener: what the tests use."""
        config = cls(
            state_dir=state_dir,
            https_port=free_port(),
            http_port=free_port(),
            cp_port=free_port(),
            redis_port=free_port(),
            **overrides,
        )
        ports = set()
        while len(ports) < config.ap_workers:
            ports.add(free_port())
        config.extra_env["_AP_PORTS"] = ",".join(str(p) for p in sorted(ports))
        return config

    @property
    def ap_ports(self) -> list[int]:
        explicit = self.extra_env.get("_AP_PORTS")
        if explicit:
            return [int(p) for p in explicit.split(",")]
        return [self.ap_port + i for i in range(self.ap_workers)]


@dataclass
class Component:
    name: str
    argv: list[str]
    env: dict[str, str]
    log_path: Path
    restart: bool
    process: subprocess.Popen | None = None
    restarts: int = 0
    stop_signal: int = signal.SIGTERM

    def start(self) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(  # noqa: S603 - argv from our config  # nosec B603
                self.argv,
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
                preexec_fn=_die_with_parent,
            )

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def signal(self, signum: int) -> None:
        if self.alive:
            assert self.process is not None  # type narrowing after alive  # nosec B101
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.process.pid, signum)

    def stop(self, timeout: float = 10.0) -> None:
        if self.process is None:
            return
        if self.alive:
            self.signal(self.stop_signal)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.signal(signal.SIGKILL)
                self.process.wait(5)
        self.process = None


class StackError(RuntimeError):
    pass


class LocalStack:
    def __init__(self, config: StackConfig):
        self.config = config
        self.state = config.state_dir.resolve()
        self.secrets_dir = self.state / "secrets"
        self.tls_dir = self.state / "tls"
        self.log_dir = self.state / "log"
        self.redis_dir = self.state / "redis"
        self.edge_dir = self.state / "edge"
        self.components: dict[str, Component] = {}
        self._stopping = False

    # --- files ----------------------------------------------------------------
    @property
    def admin_password_file(self) -> Path:
        return self.secrets_dir / "admin.password"

    @property
    def htpasswd(self) -> Path:
        return self.edge_dir / "htpasswd"

    @property
    def tls_cert(self) -> Path:
        return self.tls_dir / "tls.crt"

    def secret(self, name: str) -> str:
        return (self.secrets_dir / name).read_text().strip()

    def prepare(self) -> None:
        for directory in (self.state, self.log_dir, self.redis_dir, self.edge_dir):
            directory.mkdir(parents=True, exist_ok=True)
        ensure_secrets(self.secrets_dir)
        ensure_tls(self.tls_dir)
        os.chmod(self.tls_dir, 0o700)
        self._write_redis_conf()
        self._write_nginx_conf()

    def _write_redis_conf(self) -> None:
        from productionlab.settings import redis_maxmemory  # bounded memory, noeviction

        conf = render_redis_conf(
            maxmemory=redis_maxmemory({**os.environ, **self.config.extra_env}),
            port=self.config.redis_port,
            data_dir=str(self.redis_dir),
            bind=self.config.bind,
            appendfsync="always" if self.config.durability == "strict" else "everysec",
            users=[
                RedisUser("plab-ap", self.secret("redis_ap_password")),
                RedisUser("plab-cp", self.secret("redis_cp_password")),
            ],
        )
        path = self.redis_dir / "redis.conf"
        path.write_text(conf)
        os.chmod(path, 0o600)

    def _write_nginx_conf(self) -> None:
        nginx_dir = self.state / "nginx"
        temp = nginx_dir / "temp"
        for sub in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"):
            (temp / sub).mkdir(parents=True, exist_ok=True)
        user = None
        if os.geteuid() == 0:
            # nginx's master starts as root here; its workers must not stay root.
            user = "nobody nogroup"
            nobody, nogroup = pwd.getpwnam("nobody").pw_uid, grp.getgrnam("nogroup").gr_gid
            for path in [temp, *temp.iterdir()]:
                os.chown(path, nobody, nogroup)
            os.chown(self.edge_dir, 0, nogroup)
            os.chmod(self.edge_dir, 0o2750)  # noqa: S103 - setgid dir, no world bits  # nosec B103
            for parent in self.state.parents:
                if parent == Path("/"):
                    break
                mode = parent.stat().st_mode
                if not mode & 0o001:
                    raise StackError(
                        f"{parent} is not traversable by nginx's workers (mode "
                        f"{oct(mode & 0o777)}); choose a PLAB_STATE_DIR elsewhere"
                    )
        self.htpasswd.touch(exist_ok=True)
        edge = EdgeConfig(
            ap_servers=[f"{self.config.bind}:{p}" for p in self.config.ap_ports],
            cp_server=f"{self.config.bind}:{self.config.cp_port}",
            tls_cert=str(self.tls_cert),
            tls_key=str(self.tls_dir / "tls.key"),
            htpasswd=str(self.htpasswd),
            https_listen=f"{self.config.bind}:{self.config.https_port}",
            http_listen=f"{self.config.bind}:{self.config.http_port}",
            public_https_port=self.config.https_port,
            pid_path=str(nginx_dir / "nginx.pid"),
            temp_dir=str(temp),
            error_log="stderr",
            access_log=str(self.log_dir / "edge-access.log"),
            user=user,
            worker_processes="2",
            edge_rate=self.config.edge_rate,
            edge_burst=self.config.edge_burst,
            admin_rate=self.config.admin_rate,
            admin_burst=self.config.admin_burst,
            max_body=self.config.max_body,
        )
        (nginx_dir / "nginx.conf").write_text(edge.render())

    # --- processes ----------------------------------------------------------
    def plane_env(self, plane: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("PLAB_")}
        env.update(
            {
                "PLAB_ENV": self.config.env,
                "PLAB_REDIS_URL": f"redis://{self.config.bind}:{self.config.redis_port}/0",
                "PLAB_REDIS_USERNAME": f"plab-{plane}",
                "PLAB_REDIS_PASSWORD_FILE": str(self.secrets_dir / f"redis_{plane}_password"),
                "PLAB_STATE_DIR": str(self.state),
                "PLAB_DURABILITY": self.config.durability,
                "PLAB_USER_RATE": self.config.user_rate,
                "PLAB_MAX_BODY": self.config.max_body,
                "PLAB_THREADS": str(self.config.threads),
                "PLAB_TRUSTED_PROXY": self.config.bind,
                "PYTHONUNBUFFERED": "1",
                # argon2id takes 19 MiB per verification; with glibc's dynamic mmap
                # threshold each Waitress thread's arena would keep that block after a
                # burst of cache misses (+150 MiB per process). A fixed threshold
                # returns it to the system on free.
                "MALLOC_MMAP_THRESHOLD_": "1048576",
            }
        )
        for name in SECRET_NAMES:
            env[f"PLAB_{name.upper()}_FILE"] = str(self.secrets_dir / name)
        if plane == "cp":
            env["PLAB_HTPASSWD"] = str(self.htpasswd)
        env.update({k: v for k, v in self.config.extra_env.items() if not k.startswith("_")})
        return env

    def _add(
        self,
        name: str,
        argv: list[str],
        env: dict[str, str],
        restart: bool,
        stop_signal: int = signal.SIGTERM,
    ) -> Component:
        component = Component(
            name, argv, env, self.log_dir / f"{name}.log", restart, stop_signal=stop_signal
        )
        self.components[name] = component
        return component

    def start(self, timeout: float = 60.0) -> None:
        redis_server, nginx = find_binary("redis-server"), find_binary("nginx")
        missing = [n for n, b in (("redis-server", redis_server), ("nginx", nginx)) if not b]
        if missing:
            raise StackError(
                f"missing {', '.join(missing)}: install the Debian packages "
                f"{' '.join(missing)} (make run does it when run as root)"
            )
        self.prepare()
        assert redis_server is not None and nginx is not None  # checked above  # nosec B101
        try:
            self._add(
                "redis",
                [redis_server, str(self.redis_dir / "redis.conf")],
                dict(os.environ),
                self.config.restart_redis,
            ).start()
            self.wait_redis(timeout)
            python = sys.executable
            self._add(
                "cp",
                [
                    python,
                    "-m",
                    "productionlab",
                    "serve",
                    "cp",
                    "--host",
                    self.config.bind,
                    "--port",
                    str(self.config.cp_port),
                ],
                self.plane_env("cp"),
                self.config.restart_apps,
            ).start()
            self.wait_http(self.config.cp_port, self.config.ready_path, timeout)
            self.wait_file(self.admin_password_file, timeout)
            for index, port in enumerate(self.config.ap_ports):
                self._add(
                    f"ap{index + 1}",
                    [
                        python,
                        "-m",
                        "productionlab",
                        "serve",
                        "ap",
                        "--host",
                        self.config.bind,
                        "--port",
                        str(port),
                    ],
                    self.plane_env("ap"),
                    self.config.restart_apps,
                ).start()
            for port in self.config.ap_ports:
                self.wait_http(port, self.config.ready_path, timeout)
            conf = str(self.state / "nginx" / "nginx.conf")
            prefix = str(self.state / "nginx")
            check = subprocess.run(  # noqa: S603 - nginx -t on our config  # nosec B603
                [nginx, "-t", "-q", "-p", prefix, "-c", conf],
                capture_output=True,
                text=True,
                check=False,
            )
            if check.returncode != 0:
                raise StackError(f"nginx rejected its configuration:\n{check.stderr}")
            self._add(
                "nginx",
                [nginx, "-p", prefix, "-c", conf],
                dict(os.environ),
                True,
                stop_signal=signal.SIGQUIT,
            ).start()
            self.wait_https("/health", timeout)
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        self._stopping = True
        for name in ["nginx", *[n for n in self.components if n.startswith("ap")], "cp", "redis"]:
            component = self.components.get(name)
            if component is not None:
                component.stop()

    def supervise_once(self) -> list[str]:
        """Restart every component that died on its own; return their names."""
        restarted = []
        if self._stopping:
            return restarted
        for component in self.components.values():
            if component.process is not None and not component.alive and component.restart:
                component.restarts += 1
                component.start()
                restarted.append(component.name)
        return restarted

    def run_forever(self) -> None:
        stop = {"flag": False}

        def request_stop(signum: int, _frame: object) -> None:
            stop["flag"] = True

        signal.signal(signal.SIGINT, request_stop)
        signal.signal(signal.SIGTERM, request_stop)
        try:
            self.start()
            self.print_banner()
            while not stop["flag"]:
                for name in self.supervise_once():
                    print(f"productionlab: {name} exited; restarted it", file=sys.stderr)
                time.sleep(0.5)
        finally:
            print("productionlab: stopping", file=sys.stderr)
            self.stop()
            print("productionlab: stopped", file=sys.stderr)

    def print_banner(self) -> None:
        url = f"https://{self.config.bind}:{self.config.https_port}"
        print(json.dumps({"event": "ready", "url": url}), flush=True)
        print(
            f"""
productionlab is running at {url}  (self-signed certificate: {self.tls_cert})
  admin password:  {self.admin_password_file}
  try:             curl --cacert {self.tls_cert} -u admin:$(cat {self.admin_password_file}) \\
                        -X POST {url}/write/hello/world
  logs:            {self.log_dir}/
Ctrl-C stops everything.""",
            flush=True,
        )

    # --- fault hooks for tests ---------------------------------------------
    def kill(self, name: str, signum: int = signal.SIGKILL) -> None:
        component = self.components[name]
        component.signal(signum)
        if component.process is not None:
            component.process.wait(10)

    def restart(self, name: str, timeout: float = 30.0) -> None:
        component = self.components[name]
        component.stop()
        component.start()
        if name == "redis":
            self.wait_redis(timeout)

    # --- waiting ----------------------------------------------------------------
    def redis_client(self, plane: str = "cp") -> redis.Redis:
        return redis.Redis(
            host=self.config.bind,
            port=self.config.redis_port,
            username=f"plab-{plane}",
            password=self.secret(f"redis_{plane}_password"),
            socket_timeout=5,
        )

    def wait_redis(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            self._check_alive("redis")
            try:
                client = self.redis_client()
                client.ping()
                client.close()
                return
            except redis.RedisError:
                if time.monotonic() > deadline:
                    raise StackError("redis did not start; see " + str(self.log_dir)) from None
                time.sleep(0.1)

    def wait_file(self, path: Path, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not path.exists():
            if time.monotonic() > deadline:
                raise StackError(f"{path} did not appear")
            time.sleep(0.1)

    def _check_alive(self, name: str) -> None:
        component = self.components.get(name)
        if component is not None and component.process is not None and not component.alive:
            tail = component.log_path.read_text(errors="replace")[-2000:]
            raise StackError(f"{name} exited during start-up:\n{tail}")

    def wait_http(self, port: int, path: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        url = f"http://{self.config.bind}:{port}{path}"
        while True:
            for name, component in self.components.items():
                if name != "redis" and component.process is not None and not component.alive:
                    self._check_alive(name)
            try:
                with urllib.request.urlopen(url, timeout=2) as response:  # http URL we built  # nosec B310
                    if response.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass
            if time.monotonic() > deadline:
                raise StackError(f"{url} did not answer 200 in {timeout}s; see {self.log_dir}")
            time.sleep(0.1)

    def wait_https(self, path: str, timeout: float) -> None:
        context = ssl.create_default_context(cafile=str(self.tls_cert))
        url = f"https://{self.config.bind}:{self.config.https_port}{path}"
        deadline = time.monotonic() + timeout
        while True:
            self._check_alive("nginx")
            try:
                with urllib.request.urlopen(url, timeout=2, context=context) as response:  # nosec B310
                    if response.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass
            if time.monotonic() > deadline:
                raise StackError(f"{url} did not answer 200 in {timeout}s")
            time.sleep(0.1)

    @property
    def url(self) -> str:
        return f"https://{self.config.bind}:{self.config.https_port}"

    def max_body_bytes(self) -> int:
        return parse_size(self.config.max_body)
