"""Settings: built from the environment once, validated once, passed in.

Every variable is prefixed ``PLAB_``; every secret may instead be given as
``PLAB_<NAME>_FILE`` naming a file (the compose-secrets convention).

- ``values.py``: ConfigError and the parsers of sizes, ranges and numbers;
- ``secretcheck.py``: what a secret must be, and where it is read from;
- ``concerns.py``: each group of settings, read and checked on its own;
- ``model.py``: the ``Settings`` every part is given.
"""

from productionlab.settings.concerns import (
    ALL_CONCERNS,
    COMPOSE_EDGE_CONCERNS,
    DEFAULT_USER_MAX_BYTES,
    DEFAULT_USER_MAX_KEYS,
    DURABILITY_MODES,
    EDGE_LIMITS,
    ENVIRONMENTS,
    LOCAL_STACK_CONCERNS,
    MAX_VERIFY_CACHE_SECONDS,
    PLANE_CONCERNS,
    TEMPLATES,
    TOKEN_FAMILIES_MAX_LIMIT,
    Concern,
)
from productionlab.settings.model import Settings
from productionlab.settings.secretcheck import (
    CP_SECRET_NAMES,
    KNOWN_DEFAULTS,
    MIN_SECRET_BITS,
    MIN_SECRET_BYTES,
    PLANE_SECRETS,
    SECRET_NAMES,
    decode_secret,
    read_secret,
    repetition_problem,
    secret_problem,
)
from productionlab.settings.values import (
    DEFAULT_REDIS_MAXMEMORY,
    ConfigError,
    EnvReader,
    nginx_size,
    parse_cidrs,
    parse_redis_size,
    parse_size,
    redis_maxmemory,
)

__all__ = [
    "ALL_CONCERNS",
    "COMPOSE_EDGE_CONCERNS",
    "CP_SECRET_NAMES",
    "DEFAULT_REDIS_MAXMEMORY",
    "DEFAULT_USER_MAX_BYTES",
    "DEFAULT_USER_MAX_KEYS",
    "DURABILITY_MODES",
    "EDGE_LIMITS",
    "ENVIRONMENTS",
    "KNOWN_DEFAULTS",
    "LOCAL_STACK_CONCERNS",
    "MAX_VERIFY_CACHE_SECONDS",
    "MIN_SECRET_BITS",
    "MIN_SECRET_BYTES",
    "PLANE_CONCERNS",
    "PLANE_SECRETS",
    "SECRET_NAMES",
    "TEMPLATES",
    "TOKEN_FAMILIES_MAX_LIMIT",
    "Concern",
    "ConfigError",
    "EnvReader",
    "Settings",
    "decode_secret",
    "nginx_size",
    "parse_cidrs",
    "parse_redis_size",
    "parse_size",
    "read_secret",
    "redis_maxmemory",
    "repetition_problem",
    "secret_problem",
]
