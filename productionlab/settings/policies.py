"""The planes' policies: serving (threads, the per-user rate), authentication
limits, quotas, secrets, tokens, audit and the console. Each concern has a
``read_*`` (environment -> field values) and a ``check_*`` (what is wrong)."""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from productionlab.settings.deployment import Fields, optional_path
from productionlab.settings.secretcheck import (
    PLANE_SECRETS,
    SECRET_NAMES,
    read_secret,
    secret_problem,
)
from productionlab.settings.values import EnvReader

if TYPE_CHECKING:
    from productionlab.settings.model import Settings

TOKEN_FAMILIES_MAX_LIMIT = 1000
# Per-user quotas on what a user's writes keep in redis (see kv.py).
DEFAULT_USER_MAX_KEYS = 100_000
DEFAULT_USER_MAX_BYTES = 64 * 1024**2
_RATE_RE = re.compile(r"^\s*\d+\s*(/|per)\s*(\d+\s*)?(second|minute|hour|day)s?\s*$")
# A verified password stays cached at most this long: the cache is dropped on
# every user change, and the cap bounds the damage should an invalidation ever
# be missed.
MAX_VERIFY_CACHE_SECONDS = 300


# --- serving: threads, the per-user rate, rate limits on or off -----------------
def read_serving(env: EnvReader, plane: str) -> Fields:
    return {
        "threads": env.integer("THREADS", 8),
        "watch_max_per_process": env.integer("WATCH_MAX_PER_PROCESS", 128),
        "watch_prefix_keys": env.integer("WATCH_PREFIX_KEYS", 10_000),
        "user_rate": env.get("USER_RATE", "6000/minute"),
        "rate_limits_enabled": env.get("RATE_LIMITS", "on").lower() not in ("off", "0", "false"),
    }


def check_serving(s: Settings, problems: list[str], warnings: list[str]) -> None:
    if not _RATE_RE.match(s.user_rate):
        problems.append(f"PLAB_USER_RATE={s.user_rate!r} is not like '6000/minute'")
    if not 1 <= s.threads <= 256:
        problems.append(f"PLAB_THREADS={s.threads} must be between 1 and 256")
    if not 0 <= s.watch_max_per_process <= 1000:
        problems.append(
            f"PLAB_WATCH_MAX_PER_PROCESS={s.watch_max_per_process} must be between 0 and 1000"
        )
    if not 1 <= s.watch_prefix_keys <= 100_000:
        problems.append(
            f"PLAB_WATCH_PREFIX_KEYS={s.watch_prefix_keys} must be between 1 and 100000"
        )
    if s.production and not s.rate_limits_enabled:
        problems.append("PLAB_RATE_LIMITS is off in production")


# --- authentication limits: failures, audited failures, password verification ---
def read_auth_limits(env: EnvReader, plane: str) -> Fields:
    return {
        "login_failures_per_minute": env.integer("LOGIN_FAILURES", 10),
        "token_failures_per_minute": env.integer("TOKEN_FAILURES", 100),
        "auth_audit_window": env.integer("AUTH_AUDIT_WINDOW", 60),
        "auth_audit_addresses": env.integer("AUTH_AUDIT_ADDRESSES", 100),
        "admin_route_rate": env.get("ADMIN_ROUTE_RATE", "600/minute"),
        "auth_address_rate": env.get("AUTH_ADDRESS_RATE", "60/minute"),
        "auth_user_rate": env.get("AUTH_USER_RATE", "30/minute"),
        "verify_concurrency": env.integer("VERIFY_CONCURRENCY", 4),
        "verify_retry_after": env.integer("VERIFY_RETRY_AFTER", 1),
        "verify_cache_seconds": float(env.integer("VERIFY_CACHE_SECONDS", 60)),
    }


def check_auth_limits(s: Settings, problems: list[str], warnings: list[str]) -> None:
    if not 1 <= s.login_failures_per_minute <= 10_000:
        problems.append("PLAB_LOGIN_FAILURES must be between 1 and 10000")
    if not 1 <= s.token_failures_per_minute <= 100_000:
        problems.append("PLAB_TOKEN_FAILURES must be between 1 and 100000")
    if not 1 <= s.auth_audit_window <= 3600:
        problems.append("PLAB_AUTH_AUDIT_WINDOW must be 1..3600 seconds")
    if not 1 <= s.auth_audit_addresses <= 10_000:
        problems.append("PLAB_AUTH_AUDIT_ADDRESSES must be between 1 and 10000")
    for name in ("admin_route_rate", "auth_address_rate", "auth_user_rate"):
        if not _RATE_RE.match(getattr(s, name)):
            problems.append(f"PLAB_{name.upper()}={getattr(s, name)!r} is not like '60/minute'")
    if not 1 <= s.verify_concurrency <= 256:
        problems.append("PLAB_VERIFY_CONCURRENCY must be between 1 and 256")
    if not 1 <= s.verify_retry_after <= 60:
        problems.append("PLAB_VERIFY_RETRY_AFTER must be 1..60 seconds")
    if not 0 <= s.verify_cache_seconds <= MAX_VERIFY_CACHE_SECONDS:
        problems.append(f"PLAB_VERIFY_CACHE_SECONDS must be 0..{MAX_VERIFY_CACHE_SECONDS} seconds")


# --- quotas: what one page and one user may hold --------------------------------
def read_quotas(env: EnvReader, plane: str) -> Fields:
    return {
        "list_max_bytes": env.size("LIST_MAX_BYTES", "1m"),
        "user_max_keys": env.integer("USER_MAX_KEYS", DEFAULT_USER_MAX_KEYS),
        "user_max_bytes": env.size("USER_MAX_BYTES", "64m"),
    }


def check_quotas(s: Settings, problems: list[str], warnings: list[str]) -> None:
    if not 1 <= s.list_max_bytes <= 1024**3:
        problems.append("PLAB_LIST_MAX_BYTES must be between 1 byte and 1g")
    if not 1 <= s.user_max_keys <= 10**9:
        problems.append("PLAB_USER_MAX_KEYS must be between 1 and 1000000000")
    if not 1024 <= s.user_max_bytes <= 1024**4:
        problems.append("PLAB_USER_MAX_BYTES must be between 1k and 1024g")


# --- secrets: each plane's own, strong and distinct ------------------------------
def _previous_of(environ: Mapping[str, str], var: str) -> str:
    """What `productionlab tokens rotate-key` leaves next to a key file."""
    key_file = environ.get(var)
    if key_file and Path(key_file + ".previous").is_file():
        return Path(key_file + ".previous").read_text(encoding="utf-8").strip()
    return ""


def read_secrets(env: EnvReader, plane: str) -> Fields:
    control = plane == "cp"
    return {
        "secret_key": read_secret(env.environ, "secret_key") or "",
        "token_key": read_secret(env.environ, "token_key") or "",
        "audit_key": (read_secret(env.environ, "audit_key") or "") if control else "",
        "backup_key": read_secret(env.environ, "backup_key") or "",
        "token_key_previous": read_secret(env.environ, "token_key_previous")
        or _previous_of(env.environ, "PLAB_TOKEN_KEY_FILE"),
    }


def check_secrets(s: Settings, problems: list[str], warnings: list[str]) -> None:
    """Weak secrets are fatal in production only; a missing one always is."""
    secrets = {name: getattr(s, name) for name in PLANE_SECRETS.get(s.plane, SECRET_NAMES)}
    if s.production:
        secrets["redis_password"] = s.redis_password
    if s.plane == "cp" and s.audit_key:
        # optional: only verifies the previous release's entries
        secrets["audit_key"] = s.audit_key
    if s.token_key_previous:
        # Tokens signed with it are still accepted: it must be as strong as the key.
        secrets["token_key_previous"] = s.token_key_previous
    for name, value in secrets.items():
        if not value:
            problems.append(f"PLAB_{name.upper()} is missing (set it or PLAB_{name.upper()}_FILE)")
            continue
        issue = secret_problem(name, value)
        if issue:
            (problems if s.production else warnings).append(issue)
    given = [v for v in secrets.values() if v]
    if len(set(given)) < len(given):
        (problems if s.production else warnings).append(
            "two secrets share one value; each must be generated separately"
        )


# --- tokens: the public keys, lifetimes and the rotation's overlap ---------------
def _rotated_at(env: EnvReader, *key_files: str | None) -> float | None:
    """When the token key was last rotated: ``PLAB_TOKEN_KEY_ROTATED_AT`` (unix
    seconds), else the modification time of the previous key's file
    (``<key file>.previous``, which ``productionlab tokens rotate-key`` writes at
    the rotation, or ``PLAB_TOKEN_*_PREVIOUS_FILE``)."""
    raw = env.get("TOKEN_KEY_ROTATED_AT", "").strip()
    if raw:
        try:
            value = float(raw)
        except ValueError:
            value = math.nan
        if not math.isfinite(value) or value < 0:
            env.problems.append(f"PLAB_TOKEN_KEY_ROTATED_AT={raw!r} is not unix seconds")
            return None
        return value
    candidates = [Path(f + ".previous") for f in key_files if f] + [
        Path(env.environ[var])
        for var in ("PLAB_TOKEN_KEY_PREVIOUS_FILE", "PLAB_TOKEN_PUBLIC_KEY_PREVIOUS_FILE")
        if env.environ.get(var)
    ]
    times = [p.stat().st_mtime for p in candidates if p.is_file()]
    return max(times) if times else None


def read_tokens(env: EnvReader, plane: str) -> Fields:
    environ = env.environ
    return {
        "token_public_key": read_secret(environ, "token_public_key") or "",
        "token_public_key_previous": read_secret(environ, "token_public_key_previous")
        or _previous_of(environ, "PLAB_TOKEN_PUBLIC_KEY_FILE"),
        "token_key_rotated_at": _rotated_at(
            env, environ.get("PLAB_TOKEN_KEY_FILE"), environ.get("PLAB_TOKEN_PUBLIC_KEY_FILE")
        ),
        "token_families_max": env.integer("TOKEN_FAMILIES_MAX", 10),
        "token_ttl": env.integer("TOKEN_TTL", 15 * 60),
        "refresh_ttl": env.integer("REFRESH_TTL", 7 * 24 * 3600),
    }


def check_tokens(s: Settings, problems: list[str], warnings: list[str]) -> None:
    """The app plane needs the token public key; the control plane derives it
    from its private key (and, if given one, it must match); a previous key
    needs the time of the rotation, from which it retires by itself."""
    from productionlab.token_keys import is_public_half, parse_public_key

    if not 10 <= s.token_ttl <= 24 * 3600 or not (s.token_ttl < s.refresh_ttl <= 90 * 24 * 3600):
        problems.append("PLAB_TOKEN_TTL must be 10s..1d and below PLAB_REFRESH_TTL (at most 90d)")
    if not 1 <= s.token_families_max <= TOKEN_FAMILIES_MAX_LIMIT:
        problems.append(f"PLAB_TOKEN_FAMILIES_MAX must be between 1 and {TOKEN_FAMILIES_MAX_LIMIT}")
    for name in ("token_public_key", "token_public_key_previous"):
        value = getattr(s, name)
        if value:
            try:
                parse_public_key(value)
            except ValueError as exc:
                problems.append(f"PLAB_{name.upper()}: {exc}")
                return
    if s.plane == "ap" and not s.token_public_key:
        problems.append(
            "PLAB_TOKEN_PUBLIC_KEY is missing (set it or PLAB_TOKEN_PUBLIC_KEY_FILE; "
            "the generator writes secrets/token_public_key)"
        )
    if (
        s.plane == "cp"
        and s.token_key
        and s.token_public_key
        and not is_public_half(s.token_key, s.token_public_key)
    ):
        problems.append("PLAB_TOKEN_PUBLIC_KEY is not the public half of PLAB_TOKEN_KEY")
    if (s.token_key_previous or s.token_public_key_previous) and s.token_key_rotated_at is None:
        problems.append(
            "a previous token key is set but not when the rotation happened: set "
            "PLAB_TOKEN_KEY_ROTATED_AT (unix seconds) or give the key as a "
            "<key file>.previous file, whose modification time is the rotation"
        )


# --- audit: retention, checkpoints, the archive ----------------------------------
def read_audit(env: EnvReader, plane: str) -> Fields:
    control = plane == "cp"
    return {
        "audit_retention": env.integer("AUDIT_RETENTION", 0) or None,
        "audit_checkpoint_key": (
            (read_secret(env.environ, "audit_checkpoint_key") or "") if control else ""
        ),
        "audit_checkpoint_file": optional_path(env.get("AUDIT_CHECKPOINT_FILE", "")),
        "audit_archive_dir": optional_path(env.get("AUDIT_ARCHIVE_DIR", "")),
        "audit_checkpoint_interval": env.integer("AUDIT_CHECKPOINT_INTERVAL", 300),
        "audit_max_entries": env.integer("AUDIT_MAX_ENTRIES", 50_000),
    }


def check_audit(s: Settings, problems: list[str], warnings: list[str]) -> None:
    if s.audit_retention is not None and s.audit_retention < 0:
        problems.append("PLAB_AUDIT_RETENTION is a number of entries (0: keep all)")
    if not 1 <= s.audit_checkpoint_interval <= 86_400:
        problems.append("PLAB_AUDIT_CHECKPOINT_INTERVAL must be 1..86400 seconds")
    if not 40 <= s.audit_max_entries <= 100_000_000:
        # At least two entries per chain and room: a trim leaves half the bound plus
        # one audit.trim entry in each of the 17 chains, and must end under the bound.
        problems.append(
            "PLAB_AUDIT_MAX_ENTRIES must be 40..100000000 (entries kept in redis, all "
            "chains together, before the oldest are archived and trimmed)"
        )
    if s.plane == "cp":
        problems += _checkpoint_key_problems(s.audit_checkpoint_key)


def _checkpoint_key_problems(key: str) -> list[str]:
    if not key:
        return [
            "PLAB_AUDIT_CHECKPOINT_KEY is missing (set it or PLAB_AUDIT_CHECKPOINT_KEY_FILE; "
            "`productionlab secrets` or `make secrets` generates it)"
        ]
    from productionlab.audit_checkpoint import parse_signing_key

    try:
        parse_signing_key(key)
    except ValueError as exc:
        return [f"PLAB_AUDIT_CHECKPOINT_KEY is unusable: {exc}"]
    return []


# --- console: the operator console's switch and session lifetimes ----------------
def read_console(env: EnvReader, plane: str) -> Fields:
    return {
        "console": env.on_off("CONSOLE", "on"),
        "console_idle": env.integer("CONSOLE_IDLE", 15 * 60),
        "console_lifetime": env.integer("CONSOLE_LIFETIME", 8 * 3600),
    }


def check_console(s: Settings, problems: list[str], warnings: list[str]) -> None:
    if not 5 <= s.console_idle <= 24 * 3600 or not (
        s.console_idle <= s.console_lifetime <= 7 * 24 * 3600
    ):
        problems.append(
            "PLAB_CONSOLE_IDLE must be 5s..1d and at most PLAB_CONSOLE_LIFETIME (at most 7d)"
        )
