"""The local stack without Docker: redis, the control plane, N app-plane
processes and nginx, supervised in the foreground.

``make run`` uses it with the defaults README.md documents; the test suite uses the
same class with free ports and a temporary state directory, so the tests run
the system the way users do.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import grp
import hashlib
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

from productionlab import stackfile
from productionlab.configfiles import EdgeConfig, RedisTLS, RedisUser, render_redis_conf
from productionlab.procutil import find_binary, free_port
from productionlab.secretgen import (
    REDIS_TLS_CA,
    REDIS_TLS_CA_KEY,
    REDIS_TLS_SERVER,
    TOKEN_PUBLIC_KEY,
    ensure_redis_tls,
    ensure_secrets,
    ensure_tls,
    redis_client_files,
)
from productionlab.settings import CP_SECRET_NAMES, PLANE_SECRETS, parse_cidrs, parse_size

PR_SET_PDEATHSIG = 1

# The account redis and both planes run as when the stack is started by root, and
# the one nginx's workers run as (it can read the htpasswd and nothing else of ours).
SERVICE_USER = "productionlab"
EDGE_USER = "productionlab-edge"
FALLBACK_USER = "nobody"
# Layout of the state dir. 1: c64ef11 and before (no format file); 2: format file,
# lock file, and as root the service-owned data dirs and the runtime dir.
STATE_FORMAT = 2
FORMAT_FILE = "state-format"
LOCK_FILE = "run.lock"
SERVICE_DATA_ROOT = Path("/var/lib/productionlab")
RUNTIME_ROOT = Path("/run")


def die_with_parent() -> None:
    """Children get SIGTERM if the supervisor dies, so no process is left behind.

    The kernel clears this on a change of user id, so a process that drops its
    privileges itself (the planes) calls it again afterwards.
    """
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


_die_with_parent = die_with_parent


def port_free(host: str, port: int) -> bool:
    """True when nothing listens on host:port (a bind the way servers bind succeeds)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                return False
            raise
        return True


def process_group_members(pgid: int) -> list[int]:
    """Live (not zombie) processes of a process group, from /proc."""
    members = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] not in ("Z", "X"):
            members.append(int(entry.name))
    return members


@dataclass(frozen=True)
class Account:
    """A system user and its primary group: who a component runs as."""

    name: str
    uid: int
    gid: int
    group: str


def system_account(name: str) -> Account:
    """The dedicated system user ``name``, created (no home, no shell) when missing.

    Where it cannot be created (no useradd), ``nobody`` is used instead: still not
    root, but shared with other services on the host (README.md, SECURITY.md).
    """
    for _attempt in range(5):
        try:
            entry = pwd.getpwnam(name)
            return Account(name, entry.pw_uid, entry.pw_gid, grp.getgrgid(entry.pw_gid).gr_name)
        except KeyError:
            pass
        useradd = find_binary("useradd")
        if useradd is None:
            break
        subprocess.run(  # noqa: S603 - fixed argv  # nosec B603
            [
                *(useradd, "--system", "--no-create-home", "--home-dir", "/nonexistent"),
                *("--shell", "/usr/sbin/nologin", "--user-group", name),
            ],
            capture_output=True,
            check=False,
        )
        time.sleep(0.2)  # another stack may hold the passwd lock; look again
    entry = pwd.getpwnam(FALLBACK_USER)
    return Account(FALLBACK_USER, entry.pw_uid, entry.pw_gid, grp.getgrgid(entry.pw_gid).gr_name)


def traversable_by_others(path: Path) -> bool:
    """Every directory from / down to ``path`` lets other users through (o+x).

    A part that does not exist yet counts as traversable: the stack creates it 0755.
    """
    return all(p.stat().st_mode & 0o001 for p in [path, *path.parents] if p.exists())


def chown_tree(path: Path, account: Account) -> None:
    for root, dirs, files in os.walk(path):
        os.chown(root, account.uid, account.gid)
        for name in dirs + files:
            os.chown(os.path.join(root, name), account.uid, account.gid, follow_symlinks=False)


CONSOLE_VARIABLES = ("PLAB_CONSOLE", "PLAB_CONSOLE_IDLE", "PLAB_CONSOLE_LIFETIME")


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
    console_rate: int = 5
    console_burst: int = 40
    user_rate: str = "6000/minute"
    max_body: str = "1m"
    threads: int = 8
    edge_trusted_proxies: str = ""  # CIDR list of load balancers in front of the edge
    restart_apps: bool = True
    restart_redis: bool = True
    ready_path: str = "/ready"
    redis_tls: bool = False  # PLAB_REDIS_TLS=on: redis speaks TLS only, mutually authenticated
    extra_env: dict[str, str] = field(default_factory=dict)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> StackConfig:
        environ = os.environ if environ is None else environ

        def get(name: str, default: object) -> str:
            return environ.get(f"PLAB_{name}", str(default))

        def on_off(name: str, default: str) -> bool:
            raw = get(name, default).strip().lower()
            if raw not in ("on", "off"):
                raise ValueError(f"PLAB_{name}={raw!r} is on or off")
            return raw == "on"

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
            edge_trusted_proxies=get("EDGE_TRUSTED_PROXIES", ""),
            redis_tls=on_off("REDIS_TLS", "off"),
            # the control plane's console settings pass through to it (PLAB_CONSOLE=off)
            extra_env={k: environ[k] for k in CONSOLE_VARIABLES if k in environ},
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

    def port_variables(self) -> dict[int, str]:
        """Each listening port and the PLAB_* variable that moves it."""
        names = {
            self.https_port: "PLAB_HTTPS_PORT",
            self.http_port: "PLAB_HTTP_PORT",
            self.cp_port: "PLAB_CP_PORT",
            self.redis_port: "PLAB_REDIS_PORT",
        }
        for port in self.ap_ports:
            names.setdefault(port, "PLAB_AP_PORT (app-plane ports count up from it)")
        return names

    @property
    def ap_ports(self) -> list[int]:
        explicit = self.extra_env.get("_AP_PORTS")
        if explicit:
            return [int(p) for p in explicit.split(",")]
        return [self.ap_port + i for i in range(self.ap_workers)]


@dataclass
class Component:
    """One supervised program and the whole process tree it starts.

    Each component leads a session (and so a process group) of its own; stops and
    restarts signal the group, so children the leader leaves behind (nginx's
    workers after its master died, a redis rewrite child) go with it.
    """

    name: str
    argv: list[str]
    env: dict[str, str]
    log_path: Path
    restart: bool
    process: subprocess.Popen | None = None
    restarts: int = 0
    stop_signal: int = signal.SIGTERM
    ports: tuple[int, ...] = ()
    bind: str = "127.0.0.1"
    account: Account | None = None
    pgid: int | None = None
    pending_restart: bool = False

    def start(self) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        drop: dict[str, object] = {}
        if self.account is not None:
            drop = {"user": self.account.uid, "group": self.account.gid, "extra_groups": []}
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(  # noqa: S603 - argv from our config  # nosec B603
                self.argv,
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
                preexec_fn=_die_with_parent,
                **drop,  # type: ignore[arg-type]
            )
        self.pgid = self.process.pid

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def members(self) -> list[int]:
        """Live processes of this component's group (the leader may be gone)."""
        return [] if self.pgid is None else process_group_members(self.pgid)

    def signal(self, signum: int) -> None:
        """Signal the whole process group."""
        if self.pgid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.pgid, signum)

    def _wait_gone(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while True:
            if self.process is not None:
                self.process.poll()  # reap the leader
            if not self.members():
                return True
            if time.monotonic() > deadline:
                return False
            time.sleep(0.05)

    def held_ports(self) -> list[int]:
        return [p for p in self.ports if not port_free(self.bind, p)]

    def wait_ports_free(self, timeout: float) -> list[int]:
        """Wait until none of the component's ports is held; return those still held."""
        deadline = time.monotonic() + timeout
        while (held := self.held_ports()) and time.monotonic() < deadline:
            time.sleep(0.05)
        return held

    def stop(self, timeout: float = 10.0, signum: int | None = None) -> None:
        """Stop the whole group: its stop signal, then SIGKILL; reap; ports free."""
        if self.pgid is None:
            self.process = None
            return
        self.signal(self.stop_signal if signum is None else signum)
        if not self._wait_gone(timeout):
            self.signal(signal.SIGKILL)
            self._wait_gone(10.0)
        if self.process is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(5)
        self.process = None
        self.pgid = None
        self.wait_ports_free(10.0)


class StackError(RuntimeError):
    pass


class Supervisor:
    """The supervisor. As an ordinary user everything lives in the state dir and
    runs as that user. As root (SECURITY.md, "The local stack as root"):

    - the state dir (``var/``) stays root's: secrets, TLS key, logs, nginx config;
      the planes read their secrets while still root, then drop to ``productionlab``;
    - redis data, backups and the audit archive/checkpoints live in directories owned
      by ``productionlab`` (0700): inside the state dir when every parent lets other
      users through, else under /var/lib/productionlab/<hash>/ with ``var/redis``,
      ``var/backups`` and ``var/audit`` symlinks;
    - what nginx's workers read at request time (htpasswd, temp dirs) lives in
      /run/productionlab-<hash>/, created at start and removed at stop.
    """

    def __init__(self, config: StackConfig):
        self.config = config
        self.state = config.state_dir.resolve()
        self.as_root = os.geteuid() == 0
        self.secrets_dir = self.state / "secrets"
        self.tls_dir = self.state / "tls"
        self.log_dir = self.state / "log"
        self.nginx_dir = self.state / "nginx"
        digest = hashlib.sha256(str(self.state).encode()).hexdigest()[:12]
        self.data_dir = self.state
        if self.as_root:
            linked = self.state / "redis"
            if linked.is_symlink():
                self.data_dir = Path(os.readlink(linked)).parent
            elif not traversable_by_others(self.state):
                self.data_dir = SERVICE_DATA_ROOT / digest
            self.runtime_dir = RUNTIME_ROOT / f"productionlab-{digest}"
            self.edge_dir = self.runtime_dir / "edge"
            self.nginx_temp = self.runtime_dir / "nginx-temp"
        else:
            self.runtime_dir = self.state
            self.edge_dir = self.state / "edge"
            self.nginx_temp = self.nginx_dir / "temp"
        self.redis_dir = self.data_dir / "redis"
        self.backup_dir = self.data_dir / "backups"
        self.service: Account | None = None
        self.edge_account: Account | None = None
        self.components: dict[str, Component] = {}
        self._stopping = False
        self._lock: int | None = None
        self.notices: list[str] = []

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
        self.state.mkdir(parents=True, exist_ok=True)
        self._check_format()
        for directory in (self.log_dir, self.nginx_dir):
            directory.mkdir(parents=True, exist_ok=True)
        ensure_secrets(self.secrets_dir)
        ensure_tls(self.tls_dir)
        os.chmod(self.tls_dir, 0o700)
        if self.as_root:
            self.service = system_account(SERVICE_USER)
            self.edge_account = system_account(EDGE_USER)
            self._prepare_service_dirs(self.service)
            self._prepare_runtime_dir(self.service, self.edge_account)
        else:
            for directory in (self.redis_dir, self.edge_dir):
                directory.mkdir(parents=True, exist_ok=True)
            for sub in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"):
                (self.nginx_temp / sub).mkdir(parents=True, exist_ok=True)
        self._write_redis_conf()
        if self.service is not None:
            os.chown(self.redis_dir / "redis.conf", self.service.uid, self.service.gid)
        self._write_nginx_conf()
        (self.state / FORMAT_FILE).write_text(f"{STATE_FORMAT}\n")

    def _check_format(self) -> None:
        """Refuse a state dir of a newer format; upgrade one of an older format."""
        path = self.state / FORMAT_FILE
        if path.exists():
            text = path.read_text().strip()
            if not text.isdigit():
                raise StackError(
                    f"{path} holds {text[:20]!r}, not a state format number; "
                    "move the state dir aside or set PLAB_STATE_DIR to a new directory"
                )
            if int(text) > STATE_FORMAT:
                raise StackError(
                    f"{self.state} was written by a newer productionlab (state format "
                    f"{text}; this one knows {STATE_FORMAT}): run that version, or set "
                    "PLAB_STATE_DIR to another directory"
                )
            if int(text) == STATE_FORMAT:
                return
            found = int(text)
        elif (self.state / "secrets").exists() or (self.state / "redis").exists():
            found = 1  # c64ef11 and before wrote no format file
        else:
            return  # a new state dir
        self._upgrade_from(found)
        self.notices.append(
            f"upgraded state dir {self.state} from format {found} to {STATE_FORMAT}"
        )

    def _upgrade_from(self, found: int) -> None:
        """Format 1 -> 2. As root: redis data and backups move to service-owned dirs
        (``_prepare_service_dirs``); the htpasswd and nginx temp dirs that format 1 kept
        in the state dir move to the runtime dir, so the old copies go."""
        if self.as_root and found < 2:
            shutil.rmtree(self.state / "edge", ignore_errors=True)
            shutil.rmtree(self.nginx_dir / "temp", ignore_errors=True)

    def _prepare_service_dirs(self, service: Account) -> None:
        """Redis data, backups and the audit archive and checkpoints: owned by the
        service user, mode 0700, reachable by it."""
        for name in ("redis", "backups", "audit"):
            target = self.data_dir / name
            in_state = self.state / name
            if target != in_state:
                target.parent.mkdir(parents=True, exist_ok=True)
                os.chmod(target.parent, 0o711)  # noqa: S103 - traverse only  # nosec B103
                if in_state.is_dir() and not in_state.is_symlink():
                    # an older layout (or a state dir that moved): its data comes along
                    if target.exists():
                        raise StackError(
                            f"both {in_state} and {target} exist; keep one (move the other "
                            "aside) and start again"
                        )
                    shutil.move(str(in_state), str(target))
                target.mkdir(parents=True, exist_ok=True)
                if not in_state.is_symlink():
                    in_state.symlink_to(target, target_is_directory=True)
            target.mkdir(parents=True, exist_ok=True)
            chown_tree(target, service)
            os.chmod(target, 0o700)

    def _prepare_runtime_dir(self, service: Account, edge: Account) -> None:
        """What nginx's workers read or write at request time, under /run.

        edge/ is the service user's (the control plane renders the htpasswd into it)
        with the edge's group and the setgid bit, so every htpasswd (0640) is readable
        by the workers' group and nobody else; the temp dirs are the workers' own.
        """
        shutil.rmtree(self.runtime_dir, ignore_errors=True)
        self.runtime_dir.mkdir(parents=True)
        os.chmod(self.runtime_dir, 0o711)  # noqa: S103 - traverse only  # nosec B103
        self.edge_dir.mkdir()
        os.chown(self.edge_dir, service.uid, edge.gid)
        os.chmod(self.edge_dir, 0o2750)  # noqa: S103 - setgid dir, no world bits  # nosec B103
        self.nginx_temp.mkdir()
        for sub in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"):
            (self.nginx_temp / sub).mkdir()
        chown_tree(self.nginx_temp, edge)
        for path in [self.nginx_temp, *self.nginx_temp.iterdir()]:
            os.chmod(path, 0o700)

    @property
    def redis_tls_dir(self) -> Path:
        """Where redis and the planes read the redis TLS files. As root it is a copy
        inside the service-owned redis dir (redis and the planes run as the service
        user and read them at every connection); the CA key never goes there."""
        return self.redis_dir / "tls" if self.as_root else self.state / "redis-tls"

    def _prepare_redis_tls(self) -> RedisTLS:
        source = self.state / "redis-tls"
        hosts = tuple(dict.fromkeys(["localhost"]))
        addresses = tuple(dict.fromkeys(["127.0.0.1", "::1", self.config.bind]))
        files = ensure_redis_tls(source, hostnames=hosts, addresses=addresses)
        target = self.redis_tls_dir
        if target != source and self.service is not None:
            target.mkdir(parents=True, exist_ok=True)
            os.chmod(target, 0o700)
            os.chown(target, self.service.uid, self.service.gid)
            for name, path in files.items():
                if name == REDIS_TLS_CA_KEY:
                    continue
                copy = target / name
                shutil.copyfile(path, copy)
                os.chmod(copy, 0o600)
                os.chown(copy, self.service.uid, self.service.gid)
        cert, key = REDIS_TLS_SERVER
        return RedisTLS(
            cert=str(target / cert), key=str(target / key), ca=str(target / REDIS_TLS_CA)
        )

    def redis_tls_options(self, plane: str = "cp") -> dict[str, object]:
        """redis-py SSL options for a client holding ``plane``'s certificate (empty
        when the stack's redis is plain)."""
        if not self.config.redis_tls:
            return {}
        cert, key = redis_client_files(plane)
        return {
            "ssl": True,
            "ssl_ca_certs": str(self.redis_tls_dir / REDIS_TLS_CA),
            "ssl_certfile": str(self.redis_tls_dir / cert),
            "ssl_keyfile": str(self.redis_tls_dir / key),
            "ssl_cert_reqs": "required",
        }

    def _write_redis_conf(self) -> None:
        from productionlab.settings import redis_maxmemory  # bounded memory, noeviction

        tls = self._prepare_redis_tls() if self.config.redis_tls else None
        conf = render_redis_conf(
            tls=tls,
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
        nginx_dir = self.nginx_dir
        temp = self.nginx_temp
        user = None
        if self.edge_account is not None:
            # nginx's master starts as root here (to bind); its workers must not stay root.
            user = f"{self.edge_account.name} {self.edge_account.group}"
        if not self.htpasswd.exists():
            self.htpasswd.touch()
            if self.service is not None and self.edge_account is not None:
                os.chown(self.htpasswd, self.service.uid, self.edge_account.gid)
            os.chmod(self.htpasswd, 0o640)
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
            console_rate=self.config.console_rate,
            console_burst=self.config.console_burst,
            max_body=self.config.max_body,
            trusted_proxies=list(parse_cidrs(self.config.edge_trusted_proxies)),
        )
        (nginx_dir / "nginx.conf").write_text(edge.render())

    # --- processes ----------------------------------------------------------
    def plane_env(self, plane: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("PLAB_")}
        scheme = "rediss" if self.config.redis_tls else "redis"
        env.update(
            {
                "PLAB_ENV": self.config.env,
                "PLAB_REDIS_URL": f"{scheme}://{self.config.bind}:{self.config.redis_port}/0",
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
        # Each plane gets only its own secrets (settings.PLANE_SECRETS, and the audit
        # keys for the control plane alone): the app plane verifies tokens with the
        # public key and never sees the signing, backup or audit keys; the control
        # plane derives the public key itself.
        for name in PLANE_SECRETS[plane] + (CP_SECRET_NAMES if plane == "cp" else ()):
            env[f"PLAB_{name.upper()}_FILE"] = str(self.secrets_dir / name)
        if self.config.redis_tls:
            cert, key = redis_client_files(plane)
            env["PLAB_REDIS_TLS_CA_FILE"] = str(self.redis_tls_dir / REDIS_TLS_CA)
            env["PLAB_REDIS_TLS_CERT_FILE"] = str(self.redis_tls_dir / cert)
            env["PLAB_REDIS_TLS_KEY_FILE"] = str(self.redis_tls_dir / key)
        if plane == "ap":
            env["PLAB_TOKEN_PUBLIC_KEY_FILE"] = str(self.secrets_dir / TOKEN_PUBLIC_KEY)
        if plane == "cp":
            env["PLAB_HTPASSWD"] = str(self.htpasswd)
        if self.as_root:
            # the dir the control plane writes backups into after dropping to the
            # service user (var/backups, or its target when var/ is not reachable)
            env["PLAB_BACKUP_DIR"] = str(self.backup_dir)
        env.update({k: v for k, v in self.config.extra_env.items() if not k.startswith("_")})
        return env

    def _add(
        self,
        name: str,
        argv: list[str],
        env: dict[str, str],
        restart: bool,
        stop_signal: int = signal.SIGTERM,
        ports: tuple[int, ...] = (),
        account: Account | None = None,
    ) -> Component:
        component = Component(
            name,
            argv,
            env,
            self.log_dir / f"{name}.log",
            restart,
            stop_signal=stop_signal,
            ports=ports,
            bind=self.config.bind,
            account=account,
        )
        self.components[name] = component
        return component

    def _plane_argv(self, plane: str, port: int) -> list[str]:
        argv = [sys.executable, "-m", "productionlab", "serve", plane]
        argv += ["--host", self.config.bind, "--port", str(port)]
        if self.service is not None:
            # started as root so it can read root's secrets and the code (which may
            # sit under a 0700 home); it drops to the service user before serving
            argv += ["--run-as", self.service.name]
        return argv

    def check_ports(self) -> None:
        """Every port the stack listens on is free, or one line naming its variable."""
        for port, variable in self.config.port_variables().items():
            if not port_free(self.config.bind, port):
                raise StackError(
                    f"port {port} on {self.config.bind} is already in use (Address already "
                    f"in use): set {variable} to a free port, or stop what holds it"
                )

    def acquire_lock(self) -> None:
        """One supervisor per state dir: a second `make run` in a checkout says who runs."""
        self.state.mkdir(parents=True, exist_ok=True)
        path = self.state / LOCK_FILE
        descriptor = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(descriptor, 32).decode(errors="replace").strip() or "?"
            os.close(descriptor)
            raise StackError(
                f"a stack from this checkout is already running (pid {holder}); stop it "
                f"with Ctrl-C in its terminal or kill {holder}"
            ) from None
        os.ftruncate(descriptor, 0)
        os.write(descriptor, f"{os.getpid()}\n".encode())
        self._lock = descriptor

    def release_lock(self) -> None:
        if self._lock is not None:
            with contextlib.suppress(OSError):
                os.ftruncate(self._lock, 0)
            os.close(self._lock)
            self._lock = None

    def start(self, timeout: float = 60.0) -> None:
        redis_server, nginx = find_binary("redis-server"), find_binary("nginx")
        missing = [n for n, b in (("redis-server", redis_server), ("nginx", nginx)) if not b]
        if missing:
            raise StackError(
                f"missing {', '.join(missing)}: install the Debian packages with "
                f"`sudo apt-get install {' '.join(missing)}` (make run does it when run as root)"
            )
        self._stopping = False
        self.acquire_lock()
        try:
            self.check_ports()
            self.prepare()
            stackfile.write(self.state, self.plane_env("cp"), self.url, os.getpid())
        except BaseException:
            self._remove_runtime_dir()
            self.release_lock()
            raise
        assert redis_server is not None and nginx is not None  # checked above  # nosec B101
        try:
            self._add(
                "redis",
                [redis_server, str(self.redis_dir / "redis.conf")],
                dict(os.environ),
                self.config.restart_redis,
                ports=(self.config.redis_port,),
                account=self.service,
            ).start()
            self.wait_redis(timeout)
            self._add(
                "cp",
                self._plane_argv("cp", self.config.cp_port),
                self.plane_env("cp"),
                self.config.restart_apps,
                ports=(self.config.cp_port,),
            ).start()
            self.wait_http(self.config.cp_port, self.config.ready_path, timeout)
            self.wait_file(self.admin_password_file, timeout)
            for index, port in enumerate(self.config.ap_ports):
                self._add(
                    f"ap{index + 1}",
                    self._plane_argv("ap", port),
                    self.plane_env("ap"),
                    self.config.restart_apps,
                    ports=(port,),
                ).start()
            for port in self.config.ap_ports:
                self.wait_http(port, self.config.ready_path, timeout)
            conf = str(self.nginx_dir / "nginx.conf")
            prefix = str(self.nginx_dir)
            check = subprocess.run(  # noqa: S603 - nginx -t on our config  # nosec B603
                [nginx, "-t", "-q", "-p", prefix, "-c", conf],
                capture_output=True,
                text=True,
                check=False,
            )
            if check.returncode != 0:
                first = (check.stderr.strip().splitlines() or ["no message"])[0]
                raise StackError(f"nginx rejected its configuration: {first}")
            self._add(
                "nginx",
                [nginx, "-p", prefix, "-c", conf],
                dict(os.environ),
                True,
                stop_signal=signal.SIGQUIT,
                ports=(self.config.https_port, self.config.http_port),
            ).start()
            self.wait_https("/health", timeout)
        except BaseException:
            self.stop()
            raise

    def stop(self) -> list[str]:
        """Stop every component's whole process group; return what is left (a live
        process or a held port, one line each: empty when the stop was clean)."""
        self._stopping = True
        for name in ["nginx", *[n for n in self.components if n.startswith("ap")], "cp", "redis"]:
            component = self.components.get(name)
            if component is not None:
                component.stop()
        left = self.leftovers()
        self._remove_runtime_dir()
        self.release_lock()
        return left

    def _remove_runtime_dir(self) -> None:
        if self.as_root and self.runtime_dir != self.state:
            shutil.rmtree(self.runtime_dir, ignore_errors=True)

    def leftovers(self) -> list[str]:
        left = []
        for component in self.components.values():
            left += [f"{component.name}: process {pid} still runs" for pid in component.members()]
            left += [f"{component.name}: port {port} still held" for port in component.held_ports()]
        return left

    def supervise_once(self) -> list[str]:
        """Restart every component that died on its own; return their names.

        What the dead leader left in its process group (nginx's workers after their
        master was killed) is killed first, and its ports must be free before the new
        one starts: no orphan keeps answering with an old configuration.

        Call it from the thread that lives as long as the stack (``run_forever`` uses
        the main thread): a child gets SIGTERM when the thread that started it ends.
        """
        restarted: list[str] = []
        if self._stopping:
            return restarted
        for component in list(self.components.values()):
            dead = component.process is not None and not component.alive
            if not component.restart or not (dead or component.pending_restart):
                continue
            component.stop(timeout=5.0, signum=signal.SIGKILL)
            if component.held_ports():
                print(
                    f"productionlab: {component.name} cannot restart yet: port(s) "
                    f"{component.held_ports()} still held",
                    file=sys.stderr,
                )
                component.pending_restart = True  # the next tick tries again
                continue
            component.pending_restart = False
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
        started = False
        try:
            self.start()
            started = True
            for notice in self.notices:
                print(f"productionlab: {notice}", file=sys.stderr)
            self.print_banner()
            while not stop["flag"]:
                for name in self.supervise_once():
                    print(f"productionlab: {name} exited; restarted it", file=sys.stderr)
                time.sleep(0.5)
        finally:
            if started:
                print("productionlab: stopping", file=sys.stderr)
                left = self.stop()
                for line in left:
                    print(f"productionlab: left behind: {line}", file=sys.stderr)
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
  console:         {url}/console/  (sign in as admin; PLAB_CONSOLE=off turns it off)
  logs:            {self.log_dir}/
Ctrl-C stops everything.""",
            flush=True,
        )

    # --- fault hooks for tests ---------------------------------------------
    def kill(self, name: str, signum: int = signal.SIGKILL) -> None:
        """Signal a component's leader only (as a crash would), and wait for it."""
        component = self.components[name]
        if component.process is not None and component.alive:
            with contextlib.suppress(ProcessLookupError):
                os.kill(component.process.pid, signum)
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
            **self.redis_tls_options(plane),  # type: ignore[arg-type]
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
            lines = component.log_path.read_text(errors="replace").strip().splitlines()
            last = lines[-1].strip() if lines else "no output"
            raise StackError(
                f"{name} exited during start-up ({last[-300:]}); see {component.log_path}"
            )

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
