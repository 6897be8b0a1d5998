"""What a secret must be: hex or base64 of at least 256 random-looking bits, never
a default; and where it is read from (``PLAB_<NAME>`` or ``PLAB_<NAME>_FILE``)."""

from __future__ import annotations

import base64
import binascii
import itertools
import re
from collections.abc import Mapping
from pathlib import Path

from productionlab.settings.values import ConfigError

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
MIN_SECRET_BITS = 256
KNOWN_DEFAULTS = frozenset(
    {"changeme", "change-me", "secret", "password", "default", "example", "test", "admin"}
)

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
