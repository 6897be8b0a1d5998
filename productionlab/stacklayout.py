"""The local stack's files: where each lives (as an ordinary user, and as root),
and everything written before a process starts: the state dir's format, secrets,
TLS material, the service-owned and runtime dirs, redis.conf, nginx.conf, and the
environment each plane is given."""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

from productionlab.accounts import (
    EDGE_USER,
    SERVICE_USER,
    Account,
    chown_tree,
    system_account,
    traversable_by_others,
)
from productionlab.configfiles import EdgeConfig, RedisTLS, plane_redis_users, render_redis_conf
from productionlab.secretgen import (
    REDIS_TLS_CA,
    REDIS_TLS_CA_KEY,
    TOKEN_PUBLIC_KEY,
    ensure_redis_tls,
    ensure_secrets,
    ensure_tls,
    redis_client_files,
)
from productionlab.settings import (
    CP_SECRET_NAMES,
    PLANE_SECRETS,
    parse_cidrs,
    parse_size,
    redis_maxmemory,
)
from productionlab.stackconfig import StackConfig, StackError

# Layout of the state dir. 1: c64ef11 and before (no format file); 2: format file,
# lock file, and as root the service-owned data dirs and the runtime dir.
STATE_FORMAT = 2
FORMAT_FILE = "state-format"
SERVICE_DATA_ROOT = Path("/var/lib/productionlab")
RUNTIME_ROOT = Path("/run")


class StackLayout:
    """The state dir and what the stack writes into it. As an ordinary user everything
    lives in the state dir. As root (SECURITY.md, "The local stack as root"):

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
        return RedisTLS.in_directory(target)

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
        tls = self._prepare_redis_tls() if self.config.redis_tls else None
        conf = render_redis_conf(
            tls=tls,
            # bounded memory, noeviction (extra_env may override it: the tests do)
            maxmemory=redis_maxmemory(
                {"PLAB_REDIS_MAXMEMORY": self.config.redis_maxmemory, **self.config.extra_env}
            ),
            port=self.config.redis_port,
            data_dir=str(self.redis_dir),
            bind=self.config.bind,
            appendfsync="always" if self.config.durability == "strict" else "everysec",
            users=plane_redis_users(self.secrets_dir),
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
            watch_rate=self.config.edge_watch_rate,
            watch_burst=self.config.edge_watch_burst,
            watch_conns=self.config.edge_watch_conns,
            console_rate=self.config.console_rate,
            console_burst=self.config.console_burst,
            max_body=self.config.max_body,
            trusted_proxies=list(parse_cidrs(self.config.edge_trusted_proxies)),
        )
        (nginx_dir / "nginx.conf").write_text(edge.render())

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
                "PLAB_WATCH_MAX_PER_PROCESS": str(self.config.watch_max_per_process),
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

    @property
    def url(self) -> str:
        return f"https://{self.config.bind}:{self.config.https_port}"

    def max_body_bytes(self) -> int:
        return parse_size(self.config.max_body)
