"""``productionlab`` — one command line for running and operating the store.

Operator commands read the same ``PLAB_*`` settings as the planes and talk to
redis directly as the control plane's user. When the environment does not
configure a stack they take the local stack's settings from its descriptor
(``productionlab/stackfile.py`` says where they look) and say so on stderr.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
from collections.abc import Callable, Mapping
from pathlib import Path

import redis

from productionlab.backup_format import BackupError
from productionlab.errors import PlabError
from productionlab.settings import ConfigError, Settings
from productionlab.store.connection import REDIS_FAULTS

Handler = Callable[[argparse.Namespace], int]


def _settings(plane: str = "cp") -> Settings:
    return Settings.from_env(plane=plane)


def cmd_serve(args: argparse.Namespace) -> int:
    from productionlab.requestlog import configure_logging
    from productionlab.serve import serve

    configure_logging()
    serve(args.plane, args.host, args.port, run_as=args.run_as)
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from productionlab.supervisor import StackConfig, StackError, Supervisor

    # Every start-up failure a newcomer can meet is one line saying what to do.
    try:
        config = StackConfig.from_env()
    except ConfigError as exc:
        print(f"productionlab: {exc.one_line}", file=sys.stderr)
        return 2
    try:
        Supervisor(config).run_forever()
    except StackError as exc:
        print(f"productionlab: {exc}", file=sys.stderr)
        return 1
    except PermissionError as exc:
        print(
            f"productionlab: permission denied on {exc.filename}: run as its owner, or set "
            "PLAB_STATE_DIR to a directory you own",
            file=sys.stderr,
        )
        return 1
    except OSError as exc:
        print(f"productionlab: {exc}", file=sys.stderr)
        return 1
    return 0


def cmd_secrets(args: argparse.Namespace) -> int:
    from productionlab.secretgen import ensure_secrets, ensure_tls

    directory = Path(args.dir)
    paths = ensure_secrets(directory)
    cert, key = ensure_tls(directory, hostnames=tuple(args.hostname))
    for path in [*paths.values(), cert, key]:
        print(path)
    return 0


def cmd_render_nginx(args: argparse.Namespace) -> int:
    from productionlab.configfiles import EdgeConfig

    values = json.loads(Path(args.values).read_text()) if args.values else {}
    print(EdgeConfig(**values).render(), end="")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="productionlab", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = commands.add_parser("serve", help="run one plane under Waitress")
    serve.add_argument("plane", choices=["ap", "cp"])
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, required=True)
    serve.add_argument(
        "--run-as", metavar="USER", help="when started as root: become USER before serving"
    )
    serve.set_defaults(handler=cmd_serve)

    run = commands.add_parser("run", help="run the whole local stack in the foreground")
    run.set_defaults(handler=cmd_run)

    secrets = commands.add_parser("secrets", help="generate missing secrets and a TLS certificate")
    secrets.add_argument("--dir", default="secrets")
    secrets.add_argument("--hostname", action="append", default=["localhost"])
    secrets.set_defaults(handler=cmd_secrets)

    render = commands.add_parser("render-nginx", help="print the edge config for given values")
    render.add_argument("--values", help="JSON file of EdgeConfig fields")
    render.set_defaults(handler=cmd_render_nginx)

    from productionlab.deploy import register as register_deploy
    from productionlab.keyexport import register as register_keys
    from productionlab.opscli import REGISTRARS
    from productionlab.tlsrotate import register as register_tls

    for register in (*REGISTRARS, register_deploy, register_tls, register_keys, *EXTRA_COMMANDS):
        register(commands)
    return parser


# Other modules add their commands here (audit, backup, tokens, check-prod).
EXTRA_COMMANDS: list[Callable[[argparse._SubParsersAction], None]] = []


# Commands that talk to a stack as the control plane (users, tokens, audit,
# backup, check-prod): they find the local stack's settings on their own.
OPERATOR_COMMANDS = frozenset({"users", "tokens", "audit", "backup", "check-prod", "keys"})


def use_local_stack_if_unconfigured() -> bool:
    """Fill ``os.environ`` from the local stack's descriptor when it configures no stack.

    Explicit ``PLAB_*`` variables (compose, production) always win; the line on
    stderr says which stack the command talks to when it was not given. True when
    the local stack's descriptor was used.
    """
    from productionlab import stackfile

    descriptor = stackfile.apply(os.environ)
    if descriptor is not None:
        print(f"productionlab: {descriptor.banner()}", file=sys.stderr, flush=True)
    return descriptor is not None


def service_owned_dirs(environ: Mapping[str, str]) -> list[Path]:
    """The local stack's directories that its planes write after dropping to the
    service user: the audit archive and checkpoints, backups, the htpasswd."""
    state = Path(environ.get("PLAB_STATE_DIR", "var"))
    dirs = [state / "audit", state / "backups"]
    for var in ("PLAB_AUDIT_ARCHIVE_DIR", "PLAB_BACKUP_DIR"):
        if environ.get(var):
            dirs.append(Path(environ[var]))
    for var in ("PLAB_AUDIT_CHECKPOINT_FILE", "PLAB_HTPASSWD"):
        if environ.get(var):
            dirs.append(Path(environ[var]).parent)
    return dirs


def hand_back_files(environ: Mapping[str, str]) -> None:
    """Give the files an operator command made as root to the owner of their directory.

    As root, ``make run`` runs the planes as an unprivileged service user; a
    command run as root (archive segments, checkpoints, lock files, backups, the
    htpasswd) must leave its files to that user, as if the control plane had
    written them, or the planes could no longer append to or replace them.
    """
    for directory in service_owned_dirs(environ):
        try:
            owner = directory.stat()
        except OSError:
            continue
        if owner.st_uid == 0:
            continue
        for root, subdirs, files in os.walk(directory):
            for name in (*subdirs, *files):
                path = os.path.join(root, name)
                with contextlib.suppress(OSError):
                    if os.lstat(path).st_uid == 0:
                        os.chown(path, owner.st_uid, -1, follow_symlinks=False)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    local = False
    try:
        if args.command in OPERATOR_COMMANDS:
            local = use_local_stack_if_unconfigured()
        try:
            return int(args.handler(args) or 0)
        finally:
            if args.command in OPERATOR_COMMANDS and os.geteuid() == 0:
                hand_back_files(os.environ)
    except ConfigError as exc:
        print(f"productionlab: {exc}", file=sys.stderr)
        return 2
    except (PlabError, BackupError) as exc:
        print(f"productionlab: {exc}", file=sys.stderr)
        return 1
    except FileNotFoundError as exc:
        print(f"productionlab: no such file: {exc.filename or exc}", file=sys.stderr)
        return 1
    except REDIS_FAULTS as exc:  # a cluster with no node answering too
        hint = ""
        if local and isinstance(exc, redis.ConnectionError):
            hint = " (is the local stack up? start it with `make run`)"
        print(f"productionlab: redis: {type(exc).__name__}: {exc}{hint}", file=sys.stderr)
        return 3


if __name__ == "__main__":
    raise SystemExit(main())
