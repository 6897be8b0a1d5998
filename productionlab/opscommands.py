"""What the operator commands do: users, tokens, audit, backup, check-prod
(their arguments are in opscli.py).

Each command reads the same ``PLAB_*`` settings as the control plane and works
through the control plane's services, built by the same wiring
(:func:`productionlab.wiring.build_services`); changes are audited with the
actor ``cli:<login>``.
"""

from __future__ import annotations

import argparse
import datetime
import getpass
import json
import os
import secrets
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from productionlab.audit import Actor
from productionlab.settings import Settings

if TYPE_CHECKING:
    from productionlab.audit_keeper import AuditKeeper
    from productionlab.services import Services
    from productionlab.tokens import TokenService
    from productionlab.users import UserStore


def _settings() -> Settings:
    return Settings.from_env(plane="cp")


def wired(settings: Settings | None = None) -> Services:
    """The control plane's services for one command (one thread: a small pool)."""
    from productionlab.wiring import build_services

    return build_services(settings or _settings(), pool_size=4)


def operator() -> Actor:
    return Actor(f"cli:{getpass.getuser()}")


def _print(data: object) -> None:
    print(json.dumps(data))


# --- users ------------------------------------------------------------------------
def user_store() -> UserStore:
    return wired().users


def cmd_users_list(args: argparse.Namespace) -> int:
    for user in user_store().all():
        _print(user.public())
    return 0


def cmd_users_review(args: argparse.Namespace) -> int:
    from productionlab.lastused import review

    services = wired()
    rows = review(services.users.all(), services.redis, services.tokens.families)
    if args.json:
        for row in rows:
            _print(row)
        return 0
    print(
        f"{'user':<20} {'role':<7} {'created':<10} {'last used':<16} {'tokens':>6}  flags / grants"
    )
    for row in rows:
        created = datetime.datetime.fromtimestamp(row["created"], datetime.UTC)
        last = row["last_used"]
        used = (
            datetime.datetime.fromtimestamp(last, datetime.UTC).strftime("%Y-%m-%d %H:%M")
            if last
            else "never"
        )
        print(
            f"{row['name']:<20} {row['role']:<7} {created:%Y-%m-%d} {used:<16} "
            f"{len(row['token_families']):>6}  {','.join(row['flags']) or '-'} "
            f"[{' '.join(row['grants']) or '-'}]"
        )
    return 0


def cmd_users_show(args: argparse.Namespace) -> int:
    _print(user_store().get(args.name).public())
    return 0


def cmd_users_create(args: argparse.Namespace) -> int:
    user, password = user_store().create(args.name, args.role, args.prefix or [], operator())
    _print({**user.public(), "password": password})
    return 0


def cmd_users_disable(args: argparse.Namespace) -> int:
    _print(user_store().set_disabled(args.name, True, operator()).public())
    return 0


def cmd_users_enable(args: argparse.Namespace) -> int:
    _print(user_store().set_disabled(args.name, False, operator()).public())
    return 0


def cmd_users_grants(args: argparse.Namespace) -> int:
    store = user_store()
    current = store.get(args.name)
    prefixes = list(current.prefixes) if args.prefix is None else args.prefix
    _print(store.set_grants(args.name, args.role or current.role, prefixes, operator()).public())
    return 0


def cmd_users_rotate(args: argparse.Namespace) -> int:
    user, password = user_store().rotate_password(args.name, operator())
    _print({**user.public(), "password": password})
    return 0


def cmd_users_revoke_tokens(args: argparse.Namespace) -> int:
    _print(user_store().revoke_tokens(args.name, operator()).public())
    return 0


def cmd_users_delete(args: argparse.Namespace) -> int:
    user_store().delete(args.name, operator())
    _print({"name": args.name, "deleted": True})
    return 0


# --- tokens -----------------------------------------------------------------------
def token_service() -> TokenService:
    return wired().tokens


def cmd_tokens_list(args: argparse.Namespace) -> int:
    for family in token_service().families(args.user):
        _print(family)
    return 0


def cmd_tokens_revoke(args: argparse.Namespace) -> int:
    if not token_service().revoke_family(args.family, operator()):
        print(f"productionlab: no token family {args.family!r}", file=sys.stderr)
        return 1
    _print({"family": args.family, "revoked": True})
    return 0


def cmd_tokens_keys(args: argparse.Namespace) -> int:
    _print(token_service().key_ids())
    return 0


def cmd_tokens_rotate_key(args: argparse.Namespace) -> int:
    """Make a new signing key; the old one becomes ``<file>.previous`` (verify-only)."""
    from productionlab.files import write_atomic
    from productionlab.token_keys import SigningKey

    settings = Settings.from_env(plane="cp")
    path = Path(
        args.file or os.environ.get("PLAB_TOKEN_KEY_FILE") or settings.secrets_dir / "token_key"
    )
    if not path.is_file():
        print(f"productionlab: {path} does not exist (give --file)", file=sys.stderr)
        return 1
    previous = Path(f"{path}.previous")
    refresh_ttl = settings.refresh_ttl
    now = datetime.datetime.now(datetime.UTC)
    if previous.exists() and not args.force:
        age = now.timestamp() - previous.stat().st_mtime
        if age < refresh_ttl:
            print(
                f"productionlab: {previous} is still in its overlap window "
                f"({int((refresh_ttl - age) // 3600)}h left); rotating again would cut off "
                "tokens it signed. Wait, or pass --force.",
                file=sys.stderr,
            )
            return 1
    old = path.read_text(encoding="utf-8").strip()
    new = secrets.token_hex(32)
    write_atomic(previous, old + "\n", mode=0o600)
    write_atomic(path, new + "\n", mode=0o600)
    from productionlab.secretgen import write_token_public_keys

    public = write_token_public_keys(path)
    until = now + datetime.timedelta(seconds=refresh_ttl)
    print(
        f"""new token-signing key: {path} (key id {SigningKey(new).kid})
its public key, for the app plane: {public}
previous key, now verify-only: {previous} (key id {SigningKey(old).kid}),
  public half {public}.previous; the rotation time is these files' modification time

Next steps:
  1. Restart the control plane and every app-plane process (make run: restart it;
     compose: `make secrets` (re-renders nothing it does not own), then
     `docker compose up -d --force-recreate ap cp`). They sign with the new key and
     still accept tokens signed with the previous one.
  2. The previous key retires by itself at {until:%Y-%m-%d %H:%M} UTC (the
     refresh-token lifetime after the rotation): from then on tokens it signed are
     refused, and check-prod says to delete {previous} and {public}.previous."""
    )
    return 0


# --- audit ------------------------------------------------------------------------
def audit_keeper(services: Services) -> AuditKeeper:
    from productionlab.audit_keeper import AuditKeeper

    return AuditKeeper(services.settings, services.redis)


def close_failure_window(services: Services) -> None:
    """Append the aggregate auth-failure entries of a window that has ended (issue 9)."""
    services.guard.close_window(operator())


def cmd_audit_verify(args: argparse.Namespace) -> int:
    services = wired()
    close_failure_window(services)
    result = audit_keeper(services).verify()
    if args.json:
        _print(result.as_dict())
    elif result.ok:
        latest = result.latest_checkpoint
        anchored = (
            f"checkpoint at seq {latest['seq']} ({result.checkpoints} checkpoints)"
            if latest
            else "no checkpoint yet: only the chain is checked"
        )
        print(
            f"audit: OK, {result.checked} entries (seq {result.first}..{result.last}, "
            f"{result.archived} archived); {anchored}"
            + (f"; {result.legacy}" if result.legacy else "")
        )
    else:
        where = (
            f" (position {result.first_bad_index})" if result.first_bad_index is not None else ""
        )
        print(f"audit: FAIL at entry seq {result.first_bad_seq}{where}: {result.reason}")
        for problem in result.problems[1:10]:
            print(f"  also: {problem}")
    return 0 if result.ok else 1


def cmd_audit_checkpoint(args: argparse.Namespace) -> int:
    keeper = audit_keeper(wired())
    checkpoint = keeper.checkpoint(force=True)
    _print({**checkpoint.as_dict(), "file": str(keeper.checkpoints.path)})
    return 0


def cmd_audit_list(args: argparse.Namespace) -> int:
    services = wired()
    close_failure_window(services)
    entries, next_since = services.audit.page(args.since, args.limit, args.actor)
    for entry in entries:
        _print(entry)
    if next_since is not None and not args.quiet:
        print(f"# more: --since {next_since}", file=sys.stderr)
    return 0


def cmd_audit_export(args: argparse.Namespace) -> int:
    for entry in wired().audit.iter_all():
        if entry.get("seq", 0) >= args.since:
            _print(entry)
    return 0


def retention_from_env() -> int | None:
    return Settings.from_env(plane="cp").audit_retention


def cmd_audit_trim(args: argparse.Namespace) -> int:
    keep = args.keep if args.keep is not None else retention_from_env()
    if keep is None:
        print("audit: no retention set (give --keep N or PLAB_AUDIT_RETENTION); kept all")
        return 0
    if keep < 1:
        print("productionlab: --keep must be at least 1", file=sys.stderr)
        return 2
    keeper = audit_keeper(wired())
    dropped, first, segment = keeper.trim(operator(), keep)
    if args.archive and segment is not None:
        from productionlab.audit import parse_entry
        from productionlab.audit_archive import Segment

        raws = Segment(0, 0, segment).raws()
        with open(args.archive, "a", encoding="utf-8") as archive:
            for raw in raws:
                archive.write(json.dumps(parse_entry(raw)) + "\n")
    where = f" (archived to {segment})" if segment else ""
    print(
        f"audit: dropped {dropped} entries{where}; the log now starts at seq {first or 'unchanged'}"
    )
    return 0


def cmd_audit_head(args: argparse.Namespace) -> int:
    _print(wired().audit.head())
    return 0


# --- backup -----------------------------------------------------------------------
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

    for entry in list_backups(_backup_dir(args, _settings())):
        _print(entry)
    return 0


def cmd_backup_verify(args: argparse.Namespace) -> int:
    from productionlab.backup import verify_backup

    contents = verify_backup(Path(args.file), _backup_key(args, _settings()))
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


# --- check-prod ---------------------------------------------------------------------
def cmd_check_prod(args: argparse.Namespace) -> int:
    from productionlab.checkprod import check

    findings = check(with_redis=not args.no_redis)
    for finding in findings:
        print(finding)
    if not findings:
        print("check-prod: no findings; fit for production")
    return 1 if findings else 0
