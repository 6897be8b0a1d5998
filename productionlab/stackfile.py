"""The local stack's descriptor, ``<state dir>/stack.json``: how operator commands
find a ``make run`` stack without the operator exporting its settings.

``Supervisor.start()`` writes it (mode 0600) once the state dir is prepared. It
holds the control plane's ``PLAB_*`` environment — secrets only as
``PLAB_<NAME>_FILE`` paths, never their values — the edge URL and the
supervisor's pid. It stays after the stack stops, so commands that need no
running stack (``backup verify``, ``tokens rotate-key``) still find it.

Where the commands look, first match wins:

1. the environment configures a stack (``PLAB_REDIS_URL``, the redis user or
   password, or any secret, directly or as ``_FILE``): no descriptor is read;
   that is compose and production;
2. ``PLAB_STATE_DIR`` is set: ``$PLAB_STATE_DIR/stack.json``;
3. ``var/stack.json`` in the current directory or the nearest parent holding one;
4. ``var/stack.json`` in the checkout the ``productionlab`` package is imported
   from (``make venv`` installs it in editable mode).

Variables set in the environment always win over the descriptor's.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, MutableMapping
from dataclasses import dataclass
from pathlib import Path

from productionlab.settings import SECRET_NAMES, ConfigError

FILE_NAME = "stack.json"
FORMAT_VERSION = 1
CHECKOUT = Path(__file__).resolve().parent.parent

# Secrets the settings read as PLAB_<NAME> or PLAB_<NAME>_FILE: only the latter
# may appear in a descriptor.
_SECRET_VARS = tuple(
    f"PLAB_{name.upper()}" for name in (*SECRET_NAMES, "redis_password", "token_key_previous")
)
# Variables that say which stack to talk to: any of them set means "not the local one".
STACK_VARS = (
    "PLAB_REDIS_URL",
    "PLAB_REDIS_USERNAME",
    *_SECRET_VARS,
    *(f"{var}_FILE" for var in _SECRET_VARS),
)


def descriptor_env(plane_env: Mapping[str, str]) -> dict[str, str]:
    """The ``PLAB_*`` part of a plane's environment, without any inline secret."""
    return {
        key: value
        for key, value in sorted(plane_env.items())
        if key.startswith("PLAB_") and key not in _SECRET_VARS
    }


def write(state_dir: Path, plane_env: Mapping[str, str], url: str, pid: int) -> Path:
    """Write ``<state_dir>/stack.json`` atomically, mode 0600."""
    from productionlab.files import write_atomic

    body = {
        "version": FORMAT_VERSION,
        "state_dir": str(state_dir),
        "url": url,
        "supervisor_pid": pid,
        "env": descriptor_env(plane_env),
    }
    path = state_dir / FILE_NAME
    write_atomic(path, json.dumps(body, indent=2) + "\n", mode=0o600)
    return path


@dataclass(frozen=True)
class Descriptor:
    path: Path
    state_dir: Path
    url: str
    supervisor_pid: int | None
    env: dict[str, str]

    @property
    def running(self) -> bool:
        if not self.supervisor_pid:
            return False
        try:
            os.kill(self.supervisor_pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True

    def banner(self) -> str:
        state = "" if self.running else ", its supervisor is not running"
        return f"using the local stack in {self.state_dir} ({self.url}{state})"


def configures_stack(environ: Mapping[str, str]) -> bool:
    return any(environ.get(var) for var in STACK_VARS)


def candidates(environ: Mapping[str, str], cwd: Path | None = None) -> list[Path]:
    """Where a descriptor may be, in the order of the module docstring."""
    explicit = environ.get("PLAB_STATE_DIR")
    if explicit:
        return [Path(explicit) / FILE_NAME]
    cwd = (cwd or Path.cwd()).resolve()
    found = [d / "var" / FILE_NAME for d in (cwd, *cwd.parents)]
    if (CHECKOUT / "pyproject.toml").is_file():
        found.append(CHECKOUT / "var" / FILE_NAME)
    return found


class StackFileError(ConfigError):
    """A one-line configuration error about the local stack (no "refusing to start")."""

    def __init__(self, message: str):
        self.problems = [message]
        Exception.__init__(self, message)


def load(path: Path) -> Descriptor:
    try:
        body = json.loads(path.read_text(encoding="utf-8"))
        env = {str(k): str(v) for k, v in body["env"].items() if str(k).startswith("PLAB_")}
        state_dir = Path(body.get("state_dir") or path.parent)
        return Descriptor(path, state_dir, str(body["url"]), body.get("supervisor_pid"), env)
    except OSError as exc:
        raise StackFileError(f"{path} cannot be read: {exc.strerror}") from exc
    except (ValueError, KeyError, AttributeError, TypeError) as exc:
        raise StackFileError(
            f"{path} is not a stack descriptor ({type(exc).__name__}: {exc}); "
            "run `make run` again to rewrite it"
        ) from exc


def find(environ: Mapping[str, str], cwd: Path | None = None) -> Descriptor | None:
    for path in candidates(environ, cwd):
        if path.is_file():
            return load(path)
    return None


class NoStackFound(StackFileError):
    """Neither the environment nor a descriptor says which stack to talk to."""

    def __init__(self, environ: Mapping[str, str]):
        if environ.get("PLAB_STATE_DIR"):
            where = f"no {Path(environ['PLAB_STATE_DIR']) / FILE_NAME}"
        else:
            where = f"no var/{FILE_NAME} here, in a parent directory or in {CHECKOUT}"
        super().__init__(
            f"no local stack found ({where}): run `make run` first, "
            "or set the PLAB_* variables (README.md, Configuration)"
        )


def apply(environ: MutableMapping[str, str], cwd: Path | None = None) -> Descriptor | None:
    """Fill ``environ`` from the local stack's descriptor unless it configures a stack.

    Returns the descriptor used (None when the environment configures the stack);
    raises NoStackFound when there is neither. Explicit variables are kept.
    """
    if configures_stack(environ):
        return None
    descriptor = find(environ, cwd)
    if descriptor is None:
        raise NoStackFound(environ)
    for key, value in descriptor.env.items():
        environ.setdefault(key, value)
    return descriptor
