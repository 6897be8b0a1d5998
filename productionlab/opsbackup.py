"""What the operator's backup commands do: create, list, verify, restore, drill
(their arguments are in opscli.py; the shared wiring in opscommands.py)."""

from __future__ import annotations

import argparse
from pathlib import Path

from productionlab.opscommands import cp_settings, operator, print_json, wired
from productionlab.settings import Settings


def _backup_dir(args: argparse.Namespace, settings: Settings) -> Path:
    """``--dir``, else ``PLAB_BACKUP_DIR``, else ``<PLAB_STATE_DIR>/backups``."""
    return Path(args.dir) if getattr(args, "dir", None) else settings.backup_dir


def cmd_backup_create(args: argparse.Namespace) -> int:
    from productionlab.backup import create_backup

    services = wired()
    settings = services.settings
    summary = create_backup(
        services.redis, settings.backup_key, _backup_dir(args, settings), progress=not args.quiet
    )
    services.audit.append(operator(), "backup.create", summary.path.name, "ok")
    print(
        f"backup: {summary.path} ({summary.keys} keys, {summary.size} bytes, digest "
        f"{summary.digest[:16]}, key id {summary.key_id})"
    )
    return 0


def cmd_backup_list(args: argparse.Namespace) -> int:
    from productionlab.backup import list_backups

    for entry in list_backups(_backup_dir(args, cp_settings())):
        print_json(entry)
    return 0


def cmd_backup_verify(args: argparse.Namespace) -> int:
    from productionlab.backup import verify_backup

    contents = verify_backup(Path(args.file), _backup_key(args, cp_settings()))
    print(f"backup: {args.file} OK ({contents.keys} keys, digest {contents.digest[:16]})")
    return 0


def cmd_backup_restore(args: argparse.Namespace) -> int:
    from productionlab.backup import restore_backup

    services = wired()
    restored = restore_backup(
        services.redis,
        Path(args.file),
        services.settings.backup_key,
        operator(),
        overwrite=args.overwrite,
        progress=not args.quiet,
    )
    services.audit.append(operator(), "backup.restore", Path(args.file).name, "ok")
    print(f"restore: {restored} keys loaded from {args.file}")
    return 0


def _backup_key(args: argparse.Namespace, settings: Settings) -> str:
    """The live backup key, or the one in ``--keys`` (a ``keys export`` file)."""
    if not getattr(args, "keys", None):
        return settings.backup_key
    from productionlab.keyexport import passphrase, read_export

    return read_export(Path(args.keys), passphrase(args.passphrase_file, confirm=False))[
        "backup_key"
    ]


def cmd_backup_drill(args: argparse.Namespace) -> int:
    from productionlab.drill import drill

    services = wired()
    settings = services.settings
    report = drill(
        services.redis,
        _backup_key(args, settings),
        _backup_dir(args, settings),
        path=Path(args.file) if args.file else None,
        progress=not args.quiet,
    )
    services.audit.append(
        operator(), "backup.drill", report.backup, "ok" if report.ok else "failed"
    )
    print("\n".join(report.lines()))
    return 0 if report.ok else 1
