"""The validated settings every part reads: built from the environment once,
checked once (concern by concern, see ``concerns.py``), passed in."""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from productionlab.settings.concerns import (
    DEFAULT_USER_MAX_BYTES,
    DEFAULT_USER_MAX_KEYS,
    PLANE_CONCERNS,
    Concern,
)
from productionlab.settings.deployment import DEFAULT_NGINX_TEMPLATE
from productionlab.settings.values import DEFAULT_REDIS_MAXMEMORY, ConfigError, EnvReader

# Audit chains archived at once (``audit_chains.trim_every_chain``). A big reply leaves
# redis 64 KiB per event-loop pass while other clients' scripts run, so under bulk
# writes one connection reading a chain after another archived fewer entries a second
# than the planes wrote (bench/levers.md, "Open findings").
AUDIT_ARCHIVERS = 4


@dataclass(frozen=True)
class Settings:
    env: str = "development"
    plane: str = "ap"
    redis_url: str = "redis://127.0.0.1:6390/0"
    redis_username: str | None = None
    redis_password: str | None = field(default=None, repr=False)
    # Redis's own TLS (rediss://): the CA that signed redis's certificate and this
    # plane's client certificate and key (PLAB_REDIS_TLS_{CA,CERT,KEY}_FILE).
    redis_tls_ca_file: Path | None = None
    redis_tls_cert_file: Path | None = None
    redis_tls_key_file: Path | None = None
    secret_key: str = field(default="", repr=False)
    token_key: str = field(default="", repr=False)
    audit_key: str = field(default="", repr=False)
    backup_key: str = field(default="", repr=False)
    durability: str = "everysec"
    # PLAB_DURABILITY=replicated: how long a write waits for a replica's
    # acknowledgement (WAIT) before it is answered 503 instead.
    replica_timeout_ms: int = 1000
    user_rate: str = "6000/minute"
    rate_limits_enabled: bool = True
    login_failures_per_minute: int = 10
    address_failures_per_minute: int = 100
    # Failed tokens (and other non-Basic credentials) per address a minute before 429;
    # counted apart from the Basic guard, so junk tokens never lock out passwords.
    token_failures_per_minute: int = 100
    # Authentication failures are audited in aggregate: one entry per address and
    # window with its count, at most ``auth_audit_addresses`` entries (+1 "other") a window.
    auth_audit_window: int = 60
    auth_audit_addresses: int = 100
    # Flask-Limiter limits on the control plane's routes (per address / per user).
    admin_route_rate: str = "600/minute"
    auth_address_rate: str = "60/minute"
    auth_user_rate: str = "30/minute"
    # At most this many argon2id verifications at once per process; past it 503.
    verify_concurrency: int = 4
    verify_retry_after: int = 1
    # Ranges of load balancers in front of the edge whose X-Forwarded-For nginx trusts.
    edge_trusted_proxies: tuple[str, ...] = ()
    max_body: int = 1024 * 1024
    max_path_value: int = 4096
    # GET /v1/kv?values=true: the values of one page hold at most this many bytes (issue 13).
    list_max_bytes: int = 1024 * 1024
    threads: int = 8
    watch_max_per_process: int = 128
    watch_prefix_keys: int = 10_000
    state_dir: Path = Path("var")
    htpasswd_path: Path | None = None
    verify_cache_seconds: float = 60.0
    trusted_proxy: str | None = "127.0.0.1"
    debug: bool = False
    token_key_previous: str = field(default="", repr=False)
    token_public_key: str = ""
    token_public_key_previous: str = ""
    token_key_rotated_at: float | None = None
    token_families_max: int = 10
    token_ttl: int = 15 * 60
    refresh_ttl: int = 7 * 24 * 3600
    audit_retention: int | None = None
    audit_checkpoint_key: str = field(default="", repr=False)
    audit_checkpoint_file: Path | None = None
    audit_archive_dir: Path | None = None
    audit_checkpoint_interval: int = 300
    audit_max_entries: int = 50_000
    tls_cert: Path | None = None
    backup_dir_override: Path | None = None
    console: bool = True
    console_idle: int = 15 * 60
    console_lifetime: int = 8 * 3600
    user_max_keys: int = DEFAULT_USER_MAX_KEYS
    user_max_bytes: int = DEFAULT_USER_MAX_BYTES
    redis_maxmemory: str = DEFAULT_REDIS_MAXMEMORY

    # The local stack (`make run`): where it listens, how many app-plane processes it
    # runs (their ports count up from ap_port), and PLAB_REDIS_TLS=on (redis speaks
    # TLS only).
    bind: str = "127.0.0.1"
    https_port: int = 8443
    http_port: int = 8080
    cp_port: int = 8201
    redis_port: int = 6390

    ap_port: int = 8101
    ap_workers: int = field(default_factory=lambda: max(1, os.cpu_count() or 1))
    stack_redis_tls: bool = False

    # The edge's nginx limits per client address (data routes; /admin/, /auth/, /ops/).
    edge_rate: int = 50
    edge_burst: int = 100
    admin_rate: int = 5
    admin_burst: int = 10
    # The watch routes' edge limits per user (issue 13): rate, burst and open watches.
    edge_watch_rate: int = 10
    edge_watch_burst: int = 50
    edge_watch_conns: int = 32

    # The edge's template (the images install it outside the package); in compose,
    # nginx's worker processes and the planes' service names.
    nginx_template: Path = DEFAULT_NGINX_TEMPLATE
    edge_workers: str = "2"
    ap_host: str = "ap"
    cp_host: str = "cp"

    @property
    def production(self) -> bool:
        return self.env == "production"

    @property
    def strict_durability(self) -> bool:
        return self.durability == "strict"

    @property
    def replicated_durability(self) -> bool:
        return self.durability == "replicated"

    @property
    def redis_pool_size(self) -> int:
        """One connection per Waitress thread (watches included), plus the two
        pub/sub listeners (user events, KV changes) and a spare, plus the one
        each ordinary thread keeps for the KV core's script (``PinnableRedis.execute_held``),
        plus one per chain the control plane's audit keeper archives at once."""
        return self.serving_threads + self.threads + 3 + AUDIT_ARCHIVERS

    @property
    def serving_threads(self) -> int:
        """Waitress's threads: PLAB_THREADS for ordinary requests, and one more
        per watch this process may hold (watch.py)."""
        return self.threads + self.watch_max_per_process

    @property
    def secrets_dir(self) -> Path:
        return self.state_dir / "secrets"

    @property
    def backup_dir(self) -> Path:
        return self.backup_dir_override or self.state_dir / "backups"

    @property
    def audit_checkpoint_path(self) -> Path:
        """Signed checkpoints, one JSON line each (``<file>.pub`` holds the public key)."""
        return self.audit_checkpoint_file or self.state_dir / "audit" / "checkpoints.jsonl"

    @property
    def audit_archive_path(self) -> Path:
        return self.audit_archive_dir or self.state_dir / "audit" / "archive"

    @property
    def tls_cert_path(self) -> Path:
        return self.tls_cert or self.state_dir / "tls" / "tls.crt"

    @classmethod
    def from_env(
        cls,
        environ: Mapping[str, str] | None = None,
        plane: str = "ap",
        concerns: Iterable[Concern] = PLANE_CONCERNS,
    ) -> Settings:
        """Read and check ``concerns`` (a plane's by default; the local supervisor and
        the compose tooling name the ones they use); the others keep their defaults."""
        environ = os.environ if environ is None else environ
        concerns = tuple(concerns)
        reader = EnvReader(environ)
        values: dict[str, object] = {}
        for concern in concerns:
            values.update(concern.read(reader, plane))
        settings = cls(plane=plane, **values)  # type: ignore[arg-type]
        settings.validate(extra_problems=reader.problems, concerns=concerns)
        return settings

    def validate(
        self,
        extra_problems: list[str] | None = None,
        concerns: Iterable[Concern] = PLANE_CONCERNS,
    ) -> None:
        """Refuse to start on any problem. Weak secrets are fatal in production only."""
        problems = list(extra_problems or [])
        warnings: list[str] = []
        for concern in concerns:
            concern.check(self, problems, warnings)
        if problems:
            raise ConfigError(problems)
        object.__setattr__(self, "_warnings", tuple(warnings))

    @property
    def redis_tls(self) -> bool:
        return self.redis_url.startswith("rediss://") or self.redis_tls_ca_file is not None

    @property
    def previous_token_key_retires_at(self) -> float | None:
        if self.token_key_rotated_at is None:
            return None
        return self.token_key_rotated_at + self.refresh_ttl

    @property
    def warnings(self) -> tuple[str, ...]:
        return getattr(self, "_warnings", ())
