"""``productionlab check-prod``: is this configuration fit for production?

It reads the same ``PLAB_*`` settings as the planes, looks at the TLS
certificate and asks the running redis, and reports one line per finding.
Unlike start-up validation it never stops at the first problem: it lists them
all, so one run tells an operator everything to fix.
"""

from __future__ import annotations

import datetime
import os
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path

import redis
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa

from productionlab.metrics import MEMORY_WARNING_RATIO, RedisMemory
from productionlab.settings import (
    CP_SECRET_NAMES,
    EDGE_LIMITS,
    SECRET_NAMES,
    ConfigError,
    Settings,
    secret_problem,
)
from productionlab.settings.deployment import EDGE_COUNTS, WATCH_COUNTS
from productionlab.store.connection import (
    REDIS_FAULTS,
    config_of_every_master,
    connect,
    info_of_every_master,
)

EXPIRY_WARNING_DAYS = 30


def load_settings(environ: Mapping[str, str]) -> tuple[Settings | None, list[str]]:
    """Settings as the planes would see them, or None and the reasons they cannot exist.

    Production validation refuses weak secrets outright; to inspect everything
    anyway the settings are built leniently (as development), then given their
    real environment back, and every check runs on them.
    """
    lenient = dict(environ)
    lenient["PLAB_ENV"] = "development"
    try:
        settings = Settings.from_env(lenient, plane="cp")
    except ConfigError as exc:
        return None, [f"config: {problem}" for problem in exc.problems]
    return replace(settings, env=environ.get("PLAB_ENV", "development")), []


def secret_findings(settings: Settings) -> list[str]:
    findings = []
    values = {name: getattr(settings, name) for name in SECRET_NAMES}
    values["redis_password"] = settings.redis_password
    values.update(
        {name: getattr(settings, name) for name in CP_SECRET_NAMES if getattr(settings, name)}
    )
    if settings.token_key_previous:
        values["token_key_previous"] = settings.token_key_previous
    for name, value in values.items():
        if name == "audit_checkpoint_key" and value and value.lstrip().startswith("-----BEGIN"):
            continue  # a PEM Ed25519 key: its own parser checked it at start-up
        problem = secret_problem(name, value)
        if problem:
            findings.append(f"secret: {problem}")
    present = [v for v in values.values() if v]
    if len(set(present)) < len(present):
        findings.append("secret: two secrets share one value; generate each separately")
    return findings


def tls_findings(cert_path: Path, production: bool, now: datetime.datetime) -> list[str]:
    try:
        cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    except FileNotFoundError:
        return [f"tls: certificate {cert_path} is missing (set PLAB_TLS_CERT)"]
    except OSError as exc:
        return [f"tls: certificate {cert_path} cannot be read here ({exc.strerror})"]
    except ValueError:
        return [f"tls: {cert_path} is not a PEM certificate"]
    findings = []
    expires = cert.not_valid_after_utc
    if expires <= now:
        findings.append(f"tls: certificate {cert_path} expired on {expires:%Y-%m-%d}")
    elif expires - now < datetime.timedelta(days=EXPIRY_WARNING_DAYS):
        days = (expires - now).days
        findings.append(
            f"tls: certificate {cert_path} expires in {days} days ({expires:%Y-%m-%d}); "
            f"renew it (warning threshold {EXPIRY_WARNING_DAYS} days)"
        )
    if production and is_self_signed(cert):
        findings.append(f"tls: certificate {cert_path} is self-signed; clients cannot verify it")
    return findings


def is_self_signed(cert: x509.Certificate) -> bool:
    if cert.issuer != cert.subject:
        return False
    key = cert.public_key()
    try:
        if isinstance(key, rsa.RSAPublicKey):
            key.verify(
                cert.signature,
                cert.tbs_certificate_bytes,
                padding.PKCS1v15(),
                cert.signature_hash_algorithm,
            )
        elif isinstance(key, ec.EllipticCurvePublicKey):
            key.verify(
                cert.signature, cert.tbs_certificate_bytes, ec.ECDSA(cert.signature_hash_algorithm)
            )
        else:
            key.verify(cert.signature, cert.tbs_certificate_bytes)  # type: ignore[call-arg]
    except (InvalidSignature, TypeError, ValueError):
        return False
    return True


def redis_findings(settings: Settings) -> list[str]:
    findings = []
    if not settings.redis_password:
        findings.append("redis: no password configured (PLAB_REDIS_PASSWORD[_FILE])")
    try:
        client = connect(settings, pool_size=2)
        persistence = info_of_every_master(client, "persistence")
        fsync = config_of_every_master(client, "appendfsync")
        findings += memory_findings(client)
    except REDIS_FAULTS as exc:
        return [*findings, f"redis: cannot inspect {settings.redis_url}: {type(exc).__name__}"]
    for node, info in sorted(persistence.items()):
        findings += _persistence_findings(_node_label(node), info, fsync.get(node))
    client.close()
    if _accepts_anonymous(settings):
        findings.append("redis: accepts commands without a password (default user is on)")
    return findings


def _node_label(node: str) -> str:
    return f"redis {node}" if node else "redis"


def _persistence_findings(label: str, info: dict, fsync: str | None) -> list[str]:
    """AOF off, AOF writes failing or ``appendfsync no`` on one redis (one master)."""
    if not info.get("aof_enabled"):
        return [f"{label}: AOF persistence is off (appendonly no)"]
    findings = []
    if info.get("aof_last_write_status") not in (None, "ok"):
        findings.append(f"{label}: AOF writes are failing")
    if fsync == "no":
        findings.append(f"{label}: appendfsync is 'no'; acknowledged writes can be lost")
    return findings


def memory_findings(client: redis.Redis) -> list[str]:
    """maxmemory unset, an evicting policy, or memory from 80 % of the bound."""
    findings = []
    memory = RedisMemory.read(client)
    policy = client.config_get("maxmemory-policy").get("maxmemory-policy")
    if memory.maximum <= 0:
        findings.append("redis: maxmemory is 0 (unbounded); the OOM killer decides (set maxmemory)")
    elif memory.ratio >= MEMORY_WARNING_RATIO:
        state = "refuses writes" if memory.refuses_writes else "writes will soon be refused"
        findings.append(
            f"redis: memory at {memory.ratio:.0%} of maxmemory ({memory.maximum} bytes); "
            f"{state} (warning from {MEMORY_WARNING_RATIO:.0%})"
        )
    if policy not in (None, "noeviction"):
        findings.append(f"redis: maxmemory-policy is {policy!r}; it would evict stored keys")
    return findings


def _accepts_anonymous(settings: Settings) -> bool:
    anonymous = replace(settings, redis_username=None, redis_password=None)
    try:
        client = connect(anonymous, pool_size=1)
        client.ping()
    except redis.AuthenticationError:
        return False
    except redis.ResponseError as exc:
        return "NOAUTH" not in str(exc) and "NOPERM" not in str(exc)
    except REDIS_FAULTS:
        # A cluster client that cannot even discover the masters without a
        # password raises RedisClusterException (not a RedisError).
        return False
    client.close()
    return True


def token_key_findings(settings: Settings, now: float) -> list[str]:
    """The previous token key retires by itself a refresh lifetime after the
    rotation; past that its files are dead weight and should go."""
    if not (settings.token_key_previous or settings.token_public_key_previous):
        return []
    retires = settings.previous_token_key_retires_at
    if retires is None or now < retires:
        return []
    when = datetime.datetime.fromtimestamp(retires, datetime.UTC)
    return [
        f"tokens: the previous token key retired on {when:%Y-%m-%d %H:%M} UTC (tokens "
        "signed with it are refused); delete token_key.previous and "
        "token_public_key.previous (or PLAB_TOKEN_*_PREVIOUS) and restart"
    ]


EDGE_LIMIT_NAMES = (*EDGE_COUNTS, *WATCH_COUNTS)


def rate_findings(settings: Settings, environ: Mapping[str, str]) -> list[str]:
    findings = []
    if not settings.rate_limits_enabled:
        findings.append("rate limits: PLAB_RATE_LIMITS is off")
    try:  # the edge's limits, checked as the edge's own start-up checks them
        Settings.from_env(environ, concerns=(EDGE_LIMITS,))
    except ConfigError as exc:
        for name in EDGE_LIMIT_NAMES:
            if any(problem.startswith(f"PLAB_{name}=") for problem in exc.problems):
                raw = environ[f"PLAB_{name}"]
                findings.append(
                    f"rate limits: PLAB_{name}={raw!r} disables or breaks the edge limit"
                )
    return findings


def check(
    environ: Mapping[str, str] | None = None,
    *,
    with_redis: bool = True,
    settings: Settings | None = None,
) -> list[str]:
    """Every finding, one line each; an empty list means fit for production.

    A running control plane passes its own ``settings``: it read its secrets at
    start-up and, started by root, may no longer be able to read their files.
    """
    environ = os.environ if environ is None else environ
    findings: list[str] = []
    if settings is None:
        settings, findings = load_settings(environ)
        if settings is None:
            return findings
    if settings.env != "production":
        findings.append(f"env: PLAB_ENV is {settings.env!r}, not 'production'")
    if settings.debug:
        findings.append("debug: PLAB_DEBUG is on")
    findings += secret_findings(settings)
    cert = settings.tls_cert_path
    findings += tls_findings(cert, settings.production, datetime.datetime.now(datetime.UTC))
    findings += rate_findings(settings, environ)
    findings += token_key_findings(settings, datetime.datetime.now(datetime.UTC).timestamp())
    if with_redis:
        findings += redis_findings(settings)
    return list(dict.fromkeys(findings))
