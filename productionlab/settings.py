"""Settings: built from the environment once, validated once, passed in.

Every variable is prefixed ``PLAB_``; every secret may instead be given as
``PLAB_<NAME>_FILE`` naming a file (the compose-secrets convention).
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import itertools
import math
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

SECRET_NAMES = ("secret_key", "token_key", "backup_key")
# Secrets only the control plane is given: the key that signs audit checkpoints,
# and the previous release's audit MAC key (kept to verify pre-upgrade entries).
CP_SECRET_NAMES = ("audit_key", "audit_checkpoint_key")
# Least privilege: the secrets each plane needs (and is given). The app plane
# verifies tokens with the public key only (PLAB_TOKEN_PUBLIC_KEY) and never
# sees the token-signing key, the backup key or any audit key.
PLANE_SECRETS = {
    "ap": ("secret_key",),
    "cp": ("secret_key", "token_key", "backup_key"),
}
TOKEN_FAMILIES_MAX_LIMIT = 1000
MIN_SECRET_BITS = 256
KNOWN_DEFAULTS = frozenset(
    {"changeme", "change-me", "secret", "password", "default", "example", "test", "admin"}
)
DURABILITY_MODES = ("everysec", "strict")
# Per-user quotas on what a user's writes keep in redis (see kv.py).
DEFAULT_USER_MAX_KEYS = 100_000
DEFAULT_USER_MAX_BYTES = 64 * 1024**2
# redis.conf's maxmemory for `make run` (compose sets its own with --redis-maxmemory).
DEFAULT_REDIS_MAXMEMORY = "256mb"
_REDIS_SIZE_RE = re.compile(r"^(\d+)(b|k|kb|m|mb|g|gb)?$")
ENVIRONMENTS = ("development", "production", "test")
_RATE_RE = re.compile(r"^\s*\d+\s*(/|per)\s*(\d+\s*)?(second|minute|hour|day)s?\s*$")
_SIZE_RE = re.compile(r"^(\d+)([kKmMgG]?)$")
# A verified password stays cached at most this long: the cache is dropped on
# every user change, and the cap bounds the damage should an invalidation ever
# be missed.
MAX_VERIFY_CACHE_SECONDS = 300


class ConfigError(Exception):
    """Start-up configuration is unusable; the message lists every problem."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__("refusing to start:\n  - " + "\n  - ".join(problems))


def parse_size(text: str) -> int:
    """Parse an nginx-style size (``1m``, ``512k``, ``4096``) into bytes."""
    match = _SIZE_RE.match(text.strip())
    if not match:
        raise ValueError(f"not a size: {text!r} (expected e.g. 1m, 512k, 4096)")
    number, unit = int(match.group(1)), match.group(2).lower()
    return number * {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3}[unit]


def parse_cidrs(text: str) -> tuple[str, ...]:
    """Parse a comma- or space-separated list of addresses/CIDR ranges (empty: none)."""
    ranges: list[str] = []
    for item in re.split(r"[\s,]+", text.strip()):
        if not item:
            continue
        try:
            network = ipaddress.ip_network(item, strict=False)
        except ValueError:
            raise ValueError(f"{item!r} is not an IP address or CIDR range") from None
        if network.prefixlen == 0:
            # Trusting every address lets any client choose the address it is limited as.
            raise ValueError(f"{item!r} trusts every address; name the load balancers' ranges")
        ranges.append(str(network))
    return tuple(ranges)


MIN_SECRET_BYTES = MIN_SECRET_BITS // 8
_HEX_RE = re.compile(r"\A[0-9a-fA-F]+\Z")
_B64_RE = re.compile(r"\A[A-Za-z0-9+/_-]+={0,2}\Z")
MAX_ARITHMETIC_RUN = 8  # P(a run this long in 32 random bytes) is about 32 * 256**-6


def decode_secret(value: str) -> bytes | None:
    """The bytes a secret encodes: hex (even length) first, else base64 or base64url
    (padding optional); None when it is neither."""
    text = value.strip()
    if _HEX_RE.match(text) and len(text) % 2 == 0:
        return bytes.fromhex(text)
    mixed = ("-" in text or "_" in text) and ("+" in text or "/" in text)
    if not _B64_RE.match(text) or mixed:
        return None
    body = text.rstrip("=")
    if len(body) % 4 == 1:
        return None
    try:
        return base64.urlsafe_b64decode(
            body.replace("+", "-").replace("/", "_") + "=" * (-len(body) % 4)
        )
    except (binascii.Error, ValueError):
        return None


def repetition_problem(data: bytes) -> str | None:
    """Why ``data`` looks patterned rather than random, or None.

    Three shapes that random bytes practically never take: few distinct byte
    values (a repeated byte or short block), a whole sequence that repeats
    itself with a period up to half its length, and a long arithmetic run
    (ascending or descending bytes, ``0123...`` in hex decodes to one).
    """
    if len(set(data)) < min(16, len(data) // 2):
        return "it repeats a few byte values"
    for period in range(1, len(data) // 2 + 1):
        if data[period:] == data[:-period]:
            return f"it repeats a block of {period} bytes"
    run = 2
    for i in range(2, len(data)):
        if (data[i] - data[i - 1]) % 256 == (data[i - 1] - data[i - 2]) % 256:
            run += 1
            if run >= MAX_ARITHMETIC_RUN:
                return "it holds an ascending or descending run"
        else:
            run = 2
    return None


def _text_run_problem(text: str) -> str | None:
    """An ascending or descending run of characters (``abcdefgh``, ``98765432``)."""
    run, last = 1, 0
    for before, after in itertools.pairwise(text):
        step = ord(after) - ord(before)
        if abs(step) == 1:
            run = run + 1 if step == last else 2
        else:
            run = 1
        last = step
        if run >= MAX_ARITHMETIC_RUN:
            return "it holds an ascending or descending run"
    return None


def secret_problem(name: str, value: str | None) -> str | None:
    """Why ``value`` is not acceptable as the secret ``name``, or None.

    A secret must be hex or base64 that decodes to at least 32 bytes and is not
    an obvious repetition: ``openssl rand -hex 32``, ``openssl rand -base64 32``
    and :mod:`productionlab.secretgen` pass; ``"0123456789abcdef" * 4``, one
    repeated byte and dictionary words do not.
    """
    var = f"PLAB_{name.upper()}"
    if value is None or value == "":
        return f"{var} is missing (set it or {var}_FILE)"
    lowered = value.strip().lower()
    if lowered in KNOWN_DEFAULTS or any(lowered.startswith(d) for d in KNOWN_DEFAULTS):
        return f"{var} is a default or example value"
    advice = "use e.g. `openssl rand -hex 32` or `openssl rand -base64 32`"
    data = decode_secret(value)
    if data is None:
        return f"{var} is weak (not hex or base64; {advice})"
    if len(data) < MIN_SECRET_BYTES:
        return (
            f"{var} is weak ({len(data)} bytes once decoded; at least "
            f"{MIN_SECRET_BYTES} random bytes are required; {advice})"
        )
    pattern = repetition_problem(data) or _text_run_problem(value.strip())
    if pattern:
        return f"{var} is weak ({pattern}; {advice})"
    return None


def parse_redis_size(text: str) -> int:
    """Bytes in a redis.conf size (``256mb``, ``1gb``, ``1048576``; ``k``/``m``/``g``
    are powers of 1000 and ``kb``/``mb``/``gb`` of 1024, as redis reads them)."""
    match = _REDIS_SIZE_RE.match(text.strip().lower())
    if not match:
        raise ValueError(f"not a redis size: {text!r} (expected e.g. 256mb, 1gb)")
    unit = match.group(2) or "b"
    scale = {"b": 1, "k": 10**3, "kb": 1024, "m": 10**6, "mb": 1024**2, "g": 10**9}
    return int(match.group(1)) * scale.get(unit, 1024**3)


def redis_maxmemory(environ: Mapping[str, str]) -> str:
    """``PLAB_REDIS_MAXMEMORY`` validated for redis.conf: 0 (no bound) or at least 4mb."""
    raw = environ.get("PLAB_REDIS_MAXMEMORY", DEFAULT_REDIS_MAXMEMORY).strip().lower()
    try:
        size = parse_redis_size(raw)
    except ValueError as exc:
        raise ConfigError([f"PLAB_REDIS_MAXMEMORY: {exc}"]) from None
    if size != 0 and size < 4 * 1024**2:
        raise ConfigError(["PLAB_REDIS_MAXMEMORY must be 0 (no bound) or at least 4mb"])
    return raw


def read_secret(environ: Mapping[str, str], name: str) -> str | None:
    """Return ``PLAB_<NAME>`` or the contents of the file ``PLAB_<NAME>_FILE``."""
    var = f"PLAB_{name.upper()}"
    direct, file_path = environ.get(var), environ.get(var + "_FILE")
    if direct and file_path:
        raise ConfigError([f"both {var} and {var}_FILE are set; give one"])
    if file_path:
        try:
            return Path(file_path).read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise ConfigError([f"{var}_FILE={file_path} cannot be read: {exc.strerror}"]) from exc
    return direct


def _rotated_at(
    environ: Mapping[str, str], problems: list[str], *key_files: str | None
) -> float | None:
    """When the token key was last rotated: ``PLAB_TOKEN_KEY_ROTATED_AT`` (unix
    seconds), else the modification time of the previous key's file
    (``<key file>.previous``, which ``productionlab tokens rotate-key`` writes at
    the rotation, or ``PLAB_TOKEN_*_PREVIOUS_FILE``)."""
    raw = environ.get("PLAB_TOKEN_KEY_ROTATED_AT", "").strip()
    if raw:
        try:
            value = float(raw)
        except ValueError:
            problems.append(f"PLAB_TOKEN_KEY_ROTATED_AT={raw!r} is not unix seconds")
            return None
        if not math.isfinite(value) or value < 0:
            problems.append(f"PLAB_TOKEN_KEY_ROTATED_AT={raw!r} is not unix seconds")
            return None
        return value
    candidates = [Path(f + ".previous") for f in key_files if f] + [
        Path(environ[var])
        for var in ("PLAB_TOKEN_KEY_PREVIOUS_FILE", "PLAB_TOKEN_PUBLIC_KEY_PREVIOUS_FILE")
        if environ.get(var)
    ]
    times = [p.stat().st_mtime for p in candidates if p.is_file()]
    return max(times) if times else None


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

    @property
    def production(self) -> bool:
        return self.env == "production"

    @property
    def strict_durability(self) -> bool:
        return self.durability == "strict"

    @property
    def redis_pool_size(self) -> int:
        """One connection per Waitress thread, plus the pub/sub listener and a spare."""
        return self.threads + 2

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
    def from_env(cls, environ: Mapping[str, str] | None = None, plane: str = "ap") -> Settings:
        environ = os.environ if environ is None else environ
        problems: list[str] = []

        def get(name: str, default: str) -> str:
            return environ.get(f"PLAB_{name}", default)

        def integer(name: str, default: int) -> int:
            raw = get(name, str(default))
            try:
                return int(raw)
            except ValueError:
                problems.append(f"PLAB_{name}={raw!r} is not an integer")
                return default

        try:
            max_body = parse_size(get("MAX_BODY", "1m"))
        except ValueError as exc:
            problems.append(f"PLAB_MAX_BODY: {exc}")
            max_body = 1024 * 1024
        try:
            list_max_bytes = parse_size(get("LIST_MAX_BYTES", "1m"))
        except ValueError as exc:
            problems.append(f"PLAB_LIST_MAX_BYTES: {exc}")
            list_max_bytes = 1024 * 1024
        try:
            user_max_bytes = parse_size(get("USER_MAX_BYTES", "64m"))
        except ValueError as exc:
            problems.append(f"PLAB_USER_MAX_BYTES: {exc}")
            user_max_bytes = DEFAULT_USER_MAX_BYTES
        try:
            maxmemory = redis_maxmemory(environ)
        except ConfigError as exc:
            problems.extend(exc.problems)
            maxmemory = DEFAULT_REDIS_MAXMEMORY
        htpasswd = get("HTPASSWD", "")
        previous = read_secret(environ, "token_key_previous") or ""
        key_file = environ.get("PLAB_TOKEN_KEY_FILE")
        if not previous and key_file and Path(key_file + ".previous").is_file():
            # What `productionlab tokens rotate-key` leaves next to the new key.
            previous = Path(key_file + ".previous").read_text(encoding="utf-8").strip()
        public = read_secret(environ, "token_public_key") or ""
        public_previous = read_secret(environ, "token_public_key_previous") or ""
        public_file = environ.get("PLAB_TOKEN_PUBLIC_KEY_FILE")
        if not public_previous and public_file and Path(public_file + ".previous").is_file():
            public_previous = Path(public_file + ".previous").read_text(encoding="utf-8").strip()
        rotated_at = _rotated_at(environ, problems, key_file, public_file)
        retention = integer("AUDIT_RETENTION", 0)
        try:
            edge_proxies = parse_cidrs(get("EDGE_TRUSTED_PROXIES", ""))
        except ValueError as exc:
            problems.append(f"PLAB_EDGE_TRUSTED_PROXIES: {exc}")
            edge_proxies = ()
        tls_cert, backup_dir = get("TLS_CERT", ""), get("BACKUP_DIR", "")
        console = get("CONSOLE", "on").lower()
        if console not in ("on", "off"):
            problems.append(f"PLAB_CONSOLE={console!r} is on or off")
        checkpoint_file, archive_dir = (
            get("AUDIT_CHECKPOINT_FILE", ""),
            get("AUDIT_ARCHIVE_DIR", ""),
        )
        control = plane == "cp"
        redis_tls = {
            part: Path(value) if (value := get(f"REDIS_TLS_{part.upper()}_FILE", "")) else None
            for part in ("ca", "cert", "key")
        }
        settings = cls(
            env=get("ENV", "development"),
            plane=plane,
            redis_url=get("REDIS_URL", "redis://127.0.0.1:6390/0"),
            redis_username=get("REDIS_USERNAME", "") or None,
            redis_password=read_secret(environ, "redis_password"),
            redis_tls_ca_file=redis_tls["ca"],
            redis_tls_cert_file=redis_tls["cert"],
            redis_tls_key_file=redis_tls["key"],
            secret_key=read_secret(environ, "secret_key") or "",
            token_key=read_secret(environ, "token_key") or "",
            audit_key=(read_secret(environ, "audit_key") or "") if control else "",
            backup_key=read_secret(environ, "backup_key") or "",
            durability=get("DURABILITY", "everysec"),
            user_rate=get("USER_RATE", "6000/minute"),
            rate_limits_enabled=get("RATE_LIMITS", "on").lower() not in ("off", "0", "false"),
            login_failures_per_minute=integer("LOGIN_FAILURES", 10),
            token_failures_per_minute=integer("TOKEN_FAILURES", 100),
            auth_audit_window=integer("AUTH_AUDIT_WINDOW", 60),
            auth_audit_addresses=integer("AUTH_AUDIT_ADDRESSES", 100),
            admin_route_rate=get("ADMIN_ROUTE_RATE", "600/minute"),
            auth_address_rate=get("AUTH_ADDRESS_RATE", "60/minute"),
            auth_user_rate=get("AUTH_USER_RATE", "30/minute"),
            verify_concurrency=integer("VERIFY_CONCURRENCY", 4),
            verify_retry_after=integer("VERIFY_RETRY_AFTER", 1),
            edge_trusted_proxies=edge_proxies,
            max_body=max_body,
            list_max_bytes=list_max_bytes,
            threads=integer("THREADS", 8),
            state_dir=Path(get("STATE_DIR", "var")),
            htpasswd_path=Path(htpasswd) if htpasswd else None,
            verify_cache_seconds=float(integer("VERIFY_CACHE_SECONDS", 60)),
            trusted_proxy=get("TRUSTED_PROXY", "127.0.0.1") or None,
            debug=get("DEBUG", "0").lower() in ("1", "true", "on"),
            token_key_previous=previous,
            token_public_key=public,
            token_public_key_previous=public_previous,
            token_key_rotated_at=rotated_at,
            token_families_max=integer("TOKEN_FAMILIES_MAX", 10),
            token_ttl=integer("TOKEN_TTL", 15 * 60),
            refresh_ttl=integer("REFRESH_TTL", 7 * 24 * 3600),
            audit_retention=retention or None,
            audit_checkpoint_key=(
                (read_secret(environ, "audit_checkpoint_key") or "") if control else ""
            ),
            audit_checkpoint_file=Path(checkpoint_file) if checkpoint_file else None,
            audit_archive_dir=Path(archive_dir) if archive_dir else None,
            audit_checkpoint_interval=integer("AUDIT_CHECKPOINT_INTERVAL", 300),
            audit_max_entries=integer("AUDIT_MAX_ENTRIES", 50_000),
            tls_cert=Path(tls_cert) if tls_cert else None,
            backup_dir_override=Path(backup_dir) if backup_dir else None,
            console=console != "off",
            console_idle=integer("CONSOLE_IDLE", 15 * 60),
            console_lifetime=integer("CONSOLE_LIFETIME", 8 * 3600),
            user_max_keys=integer("USER_MAX_KEYS", DEFAULT_USER_MAX_KEYS),
            user_max_bytes=user_max_bytes,
            redis_maxmemory=maxmemory,
        )
        settings.validate(extra_problems=problems)
        return settings

    def validate(self, extra_problems: list[str] | None = None) -> None:
        """Refuse to start on any problem. Weak secrets are fatal in production only."""
        problems = list(extra_problems or [])
        warnings: list[str] = []
        if self.env not in ENVIRONMENTS:
            problems.append(f"PLAB_ENV={self.env!r} is not one of {', '.join(ENVIRONMENTS)}")
        if self.plane not in ("ap", "cp"):
            problems.append(f"plane {self.plane!r} is not ap or cp")
        if self.durability not in DURABILITY_MODES:
            problems.append(
                f"PLAB_DURABILITY={self.durability!r} is not one of {', '.join(DURABILITY_MODES)}"
            )
        if not _RATE_RE.match(self.user_rate):
            problems.append(f"PLAB_USER_RATE={self.user_rate!r} is not like '6000/minute'")
        if not self.redis_url.startswith(
            ("redis://", "rediss://", "unix://", "redis+sentinel://", "redis+cluster://")
        ):
            problems.append(f"PLAB_REDIS_URL={self.redis_url!r} has an unknown scheme")
        problems += self._redis_tls_problems()
        if not 1 <= self.threads <= 256:
            problems.append(f"PLAB_THREADS={self.threads} must be between 1 and 256")
        if not 1 <= self.login_failures_per_minute <= 10_000:
            problems.append("PLAB_LOGIN_FAILURES must be between 1 and 10000")
        if not 1 <= self.token_failures_per_minute <= 100_000:
            problems.append("PLAB_TOKEN_FAILURES must be between 1 and 100000")
        if not 1 <= self.auth_audit_window <= 3600:
            problems.append("PLAB_AUTH_AUDIT_WINDOW must be 1..3600 seconds")
        if not 1 <= self.auth_audit_addresses <= 10_000:
            problems.append("PLAB_AUTH_AUDIT_ADDRESSES must be between 1 and 10000")
        for name in ("admin_route_rate", "auth_address_rate", "auth_user_rate"):
            if not _RATE_RE.match(getattr(self, name)):
                problems.append(
                    f"PLAB_{name.upper()}={getattr(self, name)!r} is not like '60/minute'"
                )
        if not 1 <= self.verify_concurrency <= 256:
            problems.append("PLAB_VERIFY_CONCURRENCY must be between 1 and 256")
        if not 1 <= self.verify_retry_after <= 60:
            problems.append("PLAB_VERIFY_RETRY_AFTER must be 1..60 seconds")
        if not 0 <= self.verify_cache_seconds <= MAX_VERIFY_CACHE_SECONDS:
            problems.append(
                f"PLAB_VERIFY_CACHE_SECONDS must be 0..{MAX_VERIFY_CACHE_SECONDS} seconds"
            )
        try:
            parse_cidrs(" ".join(self.edge_trusted_proxies))
        except ValueError as exc:
            problems.append(f"PLAB_EDGE_TRUSTED_PROXIES: {exc}")
        if not 1 <= self.list_max_bytes <= 1024**3:
            problems.append("PLAB_LIST_MAX_BYTES must be between 1 byte and 1g")
        if not 1 <= self.max_body <= 1024**3:
            problems.append("PLAB_MAX_BODY must be between 1 byte and 1g")
        if not 10 <= self.token_ttl <= 24 * 3600 or not (
            self.token_ttl < self.refresh_ttl <= 90 * 24 * 3600
        ):
            problems.append(
                "PLAB_TOKEN_TTL must be 10s..1d and below PLAB_REFRESH_TTL (at most 90d)"
            )
        if not 5 <= self.console_idle <= 24 * 3600 or not (
            self.console_idle <= self.console_lifetime <= 7 * 24 * 3600
        ):
            problems.append(
                "PLAB_CONSOLE_IDLE must be 5s..1d and at most PLAB_CONSOLE_LIFETIME (at most 7d)"
            )
        if not 1 <= self.user_max_keys <= 10**9:
            problems.append("PLAB_USER_MAX_KEYS must be between 1 and 1000000000")
        if not 1024 <= self.user_max_bytes <= 1024**4:
            problems.append("PLAB_USER_MAX_BYTES must be between 1k and 1024g")
        if self.audit_retention is not None and self.audit_retention < 0:
            problems.append("PLAB_AUDIT_RETENTION is a number of entries (0: keep all)")
        if not 1 <= self.audit_checkpoint_interval <= 86_400:
            problems.append("PLAB_AUDIT_CHECKPOINT_INTERVAL must be 1..86400 seconds")
        if not 10 <= self.audit_max_entries <= 100_000_000:
            problems.append(
                "PLAB_AUDIT_MAX_ENTRIES must be 10..100000000 (entries kept in redis "
                "before the oldest are archived and trimmed)"
            )
        problems += self._token_key_problems()
        secrets = {
            name: getattr(self, name) for name in PLANE_SECRETS.get(self.plane, SECRET_NAMES)
        }
        if self.production:
            secrets["redis_password"] = self.redis_password
        if self.plane == "cp":
            problems += self._checkpoint_key_problems()
            if self.audit_key:  # optional: only verifies the previous release's entries
                secrets["audit_key"] = self.audit_key
        if self.token_key_previous:
            # Tokens signed with it are still accepted: it must be as strong as the key.
            secrets["token_key_previous"] = self.token_key_previous
        for name, value in secrets.items():
            if not value:
                problems.append(
                    f"PLAB_{name.upper()} is missing (set it or PLAB_{name.upper()}_FILE)"
                )
                continue
            issue = secret_problem(name, value)
            if issue:
                (problems if self.production else warnings).append(issue)
        if len({v for v in secrets.values() if v}) < len([v for v in secrets.values() if v]):
            (problems if self.production else warnings).append(
                "two secrets share one value; each must be generated separately"
            )
        if self.production and self.debug:
            problems.append("PLAB_DEBUG is on in production")
        if self.production and not self.rate_limits_enabled:
            problems.append("PLAB_RATE_LIMITS is off in production")
        if problems:
            raise ConfigError(problems)
        object.__setattr__(self, "_warnings", tuple(warnings))

    @property
    def redis_tls(self) -> bool:
        return self.redis_url.startswith("rediss://") or self.redis_tls_ca_file is not None

    def _redis_tls_problems(self) -> list[str]:
        """rediss:// needs the CA (the server is verified, never trusted blindly);
        a client certificate comes with its key; every file named must be readable;
        certificate files with a plain redis:// URL are a mistake, not a silent downgrade."""
        problems = []
        files = {
            "PLAB_REDIS_TLS_CA_FILE": self.redis_tls_ca_file,
            "PLAB_REDIS_TLS_CERT_FILE": self.redis_tls_cert_file,
            "PLAB_REDIS_TLS_KEY_FILE": self.redis_tls_key_file,
        }
        if self.redis_url.startswith("rediss://") and self.redis_tls_ca_file is None:
            problems.append(
                "PLAB_REDIS_URL is rediss:// but PLAB_REDIS_TLS_CA_FILE is not set "
                "(the CA that signed redis's certificate)"
            )
        if (self.redis_tls_cert_file is None) != (self.redis_tls_key_file is None):
            problems.append("PLAB_REDIS_TLS_CERT_FILE and PLAB_REDIS_TLS_KEY_FILE go together")
        if any(files.values()) and self.redis_url.startswith(("redis://", "unix://")):
            problems.append(
                "PLAB_REDIS_TLS_*_FILE is set but PLAB_REDIS_URL is not rediss:// "
                "(use rediss://host:port/db for TLS)"
            )
        for variable, path in files.items():
            if path is not None and not (path.is_file() and os.access(path, os.R_OK)):
                problems.append(f"{variable}={path} is not a readable file")
        return problems

    def _checkpoint_key_problems(self) -> list[str]:
        if not self.audit_checkpoint_key:
            return [
                "PLAB_AUDIT_CHECKPOINT_KEY is missing (set it or PLAB_AUDIT_CHECKPOINT_KEY_FILE; "
                "`productionlab secrets` or `make secrets` generates it)"
            ]
        from productionlab.audit_checkpoint import parse_signing_key

        try:
            parse_signing_key(self.audit_checkpoint_key)
        except ValueError as exc:
            return [f"PLAB_AUDIT_CHECKPOINT_KEY is unusable: {exc}"]
        return []

    def _token_key_problems(self) -> list[str]:
        """The app plane needs the token public key; the control plane derives it
        from its private key (and, if given one, it must match); a previous key
        needs the time of the rotation, from which it retires by itself."""
        from productionlab.tokens import is_public_half, parse_public_key

        problems = []
        if not 1 <= self.token_families_max <= TOKEN_FAMILIES_MAX_LIMIT:
            problems.append(
                f"PLAB_TOKEN_FAMILIES_MAX must be between 1 and {TOKEN_FAMILIES_MAX_LIMIT}"
            )
        for name in ("token_public_key", "token_public_key_previous"):
            value = getattr(self, name)
            if value:
                try:
                    parse_public_key(value)
                except ValueError as exc:
                    problems.append(f"PLAB_{name.upper()}: {exc}")
                    return problems
        if self.plane == "ap" and not self.token_public_key:
            problems.append(
                "PLAB_TOKEN_PUBLIC_KEY is missing (set it or PLAB_TOKEN_PUBLIC_KEY_FILE; "
                "the generator writes secrets/token_public_key)"
            )
        if (
            self.plane == "cp"
            and self.token_key
            and self.token_public_key
            and not is_public_half(self.token_key, self.token_public_key)
        ):
            problems.append("PLAB_TOKEN_PUBLIC_KEY is not the public half of PLAB_TOKEN_KEY")
        has_previous = self.token_key_previous or self.token_public_key_previous
        if has_previous and self.token_key_rotated_at is None:
            problems.append(
                "a previous token key is set but not when the rotation happened: set "
                "PLAB_TOKEN_KEY_ROTATED_AT (unix seconds) or give the key as a "
                "<key file>.previous file, whose modification time is the rotation"
            )
        return problems

    @property
    def previous_token_key_retires_at(self) -> float | None:
        if self.token_key_rotated_at is None:
            return None
        return self.token_key_rotated_at + self.refresh_ttl

    @property
    def warnings(self) -> tuple[str, ...]:
        return getattr(self, "_warnings", ())
