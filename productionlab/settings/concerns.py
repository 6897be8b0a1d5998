"""Settings by concern: each concern reads its ``PLAB_*`` variables and checks
the values it read (``deployment.py``: environment, local stack, edge, redis,
files; ``policies.py``: serving, authentication limits, quotas, secrets, tokens,
audit, console). ``Settings.from_env`` runs all of them for a plane; the local
supervisor and the compose tooling run only the concerns they use (the ports and
counts of the stack, the edge's limits), so they parse nothing themselves and a
bad value is the same ConfigError, naming its variable, wherever it is read."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from productionlab.settings import deployment as d
from productionlab.settings import policies as p
from productionlab.settings.deployment import DURABILITY_MODES, ENVIRONMENTS, Fields
from productionlab.settings.policies import (
    DEFAULT_USER_MAX_BYTES,
    DEFAULT_USER_MAX_KEYS,
    MAX_VERIFY_CACHE_SECONDS,
    TOKEN_FAMILIES_MAX_LIMIT,
)
from productionlab.settings.values import EnvReader

if TYPE_CHECKING:
    from productionlab.settings.model import Settings

__all__ = [
    "DEFAULT_USER_MAX_BYTES",
    "DEFAULT_USER_MAX_KEYS",
    "DURABILITY_MODES",
    "ENVIRONMENTS",
    "MAX_VERIFY_CACHE_SECONDS",
    "TOKEN_FAMILIES_MAX_LIMIT",
]


@dataclass(frozen=True)
class Concern:
    """One group of settings: ``read`` turns the environment into field values
    (noting values that do not parse), ``check`` adds what is wrong with them
    (fatal problems, and warnings a development stack starts with)."""

    name: str
    read: Callable[[EnvReader, str], Fields]
    check: Callable[[Settings, list[str], list[str]], None]


ENVIRONMENT = Concern("environment", d.read_environment, d.check_environment)
STACK = Concern("stack", d.read_stack, d.check_stack)
EDGE = Concern("edge", d.read_edge, d.check_edge)
EDGE_LIMITS = Concern("edge limits", d.read_edge_limits, d.check_edge_limits)
REDIS = Concern("redis", d.read_redis, d.check_redis)
REDIS_MEMORY = Concern("redis memory", d.read_redis_memory, d.check_redis_memory)
FILES = Concern("files", d.read_files, d.check_files)
TEMPLATES = Concern("templates", d.read_templates, d.check_templates)
SERVING = Concern("serving", p.read_serving, p.check_serving)
AUTH_LIMITS = Concern("auth limits", p.read_auth_limits, p.check_auth_limits)
QUOTAS = Concern("quotas", p.read_quotas, p.check_quotas)
SECRETS = Concern("secrets", p.read_secrets, p.check_secrets)
TOKENS = Concern("tokens", p.read_tokens, p.check_tokens)
AUDIT = Concern("audit", p.read_audit, p.check_audit)
CONSOLE = Concern("console", p.read_console, p.check_console)

# What a plane reads (Settings.from_env's default): everything but the local
# stack's listeners and the edge's nginx limits, which no plane uses.
PLANE_CONCERNS = (
    ENVIRONMENT,
    REDIS,
    SERVING,
    AUTH_LIMITS,
    EDGE,
    QUOTAS,
    TOKENS,
    SECRETS,
    AUDIT,
    CONSOLE,
    FILES,
    REDIS_MEMORY,
)
# What `make run`'s supervisor reads itself: its listeners and counts, the edge it
# renders, redis.conf's memory bound and the values it hands both planes (the
# planes read the rest).
LOCAL_STACK_CONCERNS = (
    ENVIRONMENT,
    STACK,
    EDGE,
    EDGE_LIMITS,
    SERVING,
    CONSOLE,
    FILES,
    REDIS_MEMORY,
)
# What the compose edge-config step renders nginx.conf from.
COMPOSE_EDGE_CONCERNS = (EDGE, EDGE_LIMITS, STACK)
# The template renderer (configfiles.py) reads TEMPLATES once, at import.
ALL_CONCERNS = (*PLANE_CONCERNS, STACK, EDGE_LIMITS, TEMPLATES)
