"""What the local stack runs: ports, process counts, the edge's limits and the
values handed to the planes, taken from the validated Settings (``from_env``)
or given directly (the tests' ``ephemeral`` stacks)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from productionlab.processes import free_port
from productionlab.settings import (
    LOCAL_STACK_CONCERNS,
    Settings,
    nginx_size,
)


class StackError(RuntimeError):
    """The local stack cannot start or run; the message says what to do."""


CONSOLE_VARIABLES = ("PLAB_CONSOLE", "PLAB_CONSOLE_IDLE", "PLAB_CONSOLE_LIFETIME")


# The defaults are the settings' own (settings/model.py): one place says 8443.
DEFAULTS = Settings()


@dataclass
class StackConfig:
    state_dir: Path = DEFAULTS.state_dir
    bind: str = DEFAULTS.bind
    https_port: int = DEFAULTS.https_port
    http_port: int = DEFAULTS.http_port
    ap_port: int = DEFAULTS.ap_port
    ap_workers: int = DEFAULTS.ap_workers
    cp_port: int = DEFAULTS.cp_port
    redis_port: int = DEFAULTS.redis_port
    env: str = DEFAULTS.env
    durability: str = DEFAULTS.durability
    edge_rate: int = DEFAULTS.edge_rate
    edge_burst: int = DEFAULTS.edge_burst
    admin_rate: int = DEFAULTS.admin_rate
    admin_burst: int = DEFAULTS.admin_burst
    edge_watch_rate: int = DEFAULTS.edge_watch_rate
    edge_watch_burst: int = DEFAULTS.edge_watch_burst
    edge_watch_conns: int = DEFAULTS.edge_watch_conns
    console_rate: int = 5  # the console's edge limit (not a setting)
    console_burst: int = 40
    user_rate: str = DEFAULTS.user_rate
    max_body: str = nginx_size(DEFAULTS.max_body)
    threads: int = DEFAULTS.threads
    watch_max_per_process: int = DEFAULTS.watch_max_per_process
    edge_trusted_proxies: str = ""  # CIDR list of load balancers in front of the edge
    restart_apps: bool = True
    restart_redis: bool = True
    ready_path: str = "/ready"
    redis_tls: bool = False  # PLAB_REDIS_TLS=on: redis speaks TLS only, mutually authenticated
    redis_maxmemory: str = DEFAULTS.redis_maxmemory
    extra_env: dict[str, str] = field(default_factory=dict)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> StackConfig:
        """The stack ``make run`` starts: every value from the validated Settings
        (ConfigError, naming the variable, when one is bad)."""
        environ = os.environ if environ is None else environ
        settings = Settings.from_env(environ, concerns=LOCAL_STACK_CONCERNS)
        if settings.replicated_durability:
            raise StackError(
                "PLAB_DURABILITY=replicated needs redis replicas (e.g. Sentinel, "
                "docs/RELIABILITY.md); the local stack runs one redis: use everysec or strict"
            )
        return cls.from_settings(
            settings,
            # the control plane's console settings pass through to it (PLAB_CONSOLE=off)
            extra_env={k: environ[k] for k in CONSOLE_VARIABLES if k in environ},
        )

    @classmethod
    def from_settings(cls, settings: Settings, **overrides: object) -> StackConfig:
        values: dict[str, object] = {
            "state_dir": settings.state_dir,
            "bind": settings.bind,
            "https_port": settings.https_port,
            "http_port": settings.http_port,
            "ap_port": settings.ap_port,
            "ap_workers": settings.ap_workers,
            "cp_port": settings.cp_port,
            "redis_port": settings.redis_port,
            "env": settings.env,
            "durability": settings.durability,
            "edge_rate": settings.edge_rate,
            "edge_burst": settings.edge_burst,
            "admin_rate": settings.admin_rate,
            "admin_burst": settings.admin_burst,
            "edge_watch_rate": settings.edge_watch_rate,
            "edge_watch_burst": settings.edge_watch_burst,
            "edge_watch_conns": settings.edge_watch_conns,
            "user_rate": settings.user_rate,
            "max_body": nginx_size(settings.max_body),
            "threads": settings.threads,
            "watch_max_per_process": settings.watch_max_per_process,
            "edge_trusted_proxies": " ".join(settings.edge_trusted_proxies),
            "redis_tls": settings.stack_redis_tls,
            "redis_maxmemory": settings.redis_maxmemory,
        }
        return cls(**{**values, **overrides})  # type: ignore[arg-type]

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
