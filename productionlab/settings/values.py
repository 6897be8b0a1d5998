"""Parsing ``PLAB_*`` values: the error every bad value becomes, the parsers of
sizes, ranges and numbers, and the reader that collects every problem at once."""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping

DEFAULT_REDIS_MAXMEMORY = "256mb"
_REDIS_SIZE_RE = re.compile(r"^(\d+)(b|k|kb|m|mb|g|gb)?$")
_SIZE_RE = re.compile(r"^(\d+)([kKmMgG]?)$")
_SIZE_UNITS = {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3}


class ConfigError(Exception):
    """Start-up configuration is unusable; the message lists every problem."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__("refusing to start:\n  - " + "\n  - ".join(problems))

    @property
    def one_line(self) -> str:
        """Every problem on one line, for a command that answers in one line."""
        return "refusing to start: " + "; ".join(self.problems)


def parse_size(text: str) -> int:
    """Parse an nginx-style size (``1m``, ``512k``, ``4096``) into bytes."""
    match = _SIZE_RE.match(text.strip())
    if not match:
        raise ValueError(f"not a size: {text!r} (expected e.g. 1m, 512k, 4096)")
    number, unit = int(match.group(1)), match.group(2).lower()
    return number * _SIZE_UNITS[unit]


def nginx_size(size: int) -> str:
    """Bytes as an nginx size, in the largest unit that divides them (``1m``, ``1500``)."""
    for unit in ("g", "m", "k"):
        if size and size % _SIZE_UNITS[unit] == 0:
            return f"{size // _SIZE_UNITS[unit]}{unit}"
    return str(size)


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


class EnvReader:
    """Reads ``PLAB_<NAME>`` variables; a value that does not parse is noted in
    ``problems`` (naming its variable) and its default used, so one start-up
    reports every bad value at once."""

    def __init__(self, environ: Mapping[str, str]):
        self.environ = environ
        self.problems: list[str] = []

    def get(self, name: str, default: str) -> str:
        return self.environ.get(f"PLAB_{name}", default)

    def integer(self, name: str, default: int) -> int:
        raw = self.get(name, str(default))
        try:
            return int(raw)
        except ValueError:
            self.problems.append(f"PLAB_{name}={raw!r} is not an integer")
            return default

    def size(self, name: str, default: str) -> int:
        """An nginx-style size in bytes (``1m``, ``512k``, ``4096``)."""
        try:
            return parse_size(self.get(name, default))
        except ValueError as exc:
            self.problems.append(f"PLAB_{name}: {exc}")
            return parse_size(default)

    def on_off(self, name: str, default: str) -> bool:
        raw = self.get(name, default).strip().lower()
        if raw not in ("on", "off"):
            self.problems.append(f"PLAB_{name}={raw!r} is on or off")
            return default == "on"
        return raw == "on"

    def cidrs(self, name: str) -> tuple[str, ...]:
        try:
            return parse_cidrs(self.get(name, ""))
        except ValueError as exc:
            self.problems.append(f"PLAB_{name}: {exc}")
            return ()
