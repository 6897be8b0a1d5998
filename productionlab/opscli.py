"""Operator commands: users, tokens, audit, backup, check-prod.

Each command reads the same ``PLAB_*`` settings as the control plane and talks
to redis as its user; changes are audited with the actor ``cli:<login>``.
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

from productionlab.contract import ROLES
from productionlab.settings import Settings


def _settings() -> Settings:
    return Settings.from_env(plane="cp")


def _client(settings: Settings):
    from productionlab.store.connection import connect

    return connect(settings, pool_size=4)


def operator():
    from productionlab.audit import Actor

    return Actor(f"cli:{getpass.getuser()}")


def _print(data: object) -> None:
    print(json.dumps(data))


# --- users ------------------------------------------------------------------------
def user_store():
    from productionlab.users import UserStore

    settings = _settings()
    return UserStore(
        _client(settings),
        settings.secret_key.encode(),
        htpasswd_path=settings.htpasswd_path,
    )


def cmd_users_list(args: argparse.Namespace) -> int:
    for user in user_store().all():
        _print(user.public())
    return 0


def cmd_users_review(args: argparse.Namespace) -> int:
    from productionlab.lastused import review

    service = token_service()
    rows = review(user_store().all(), service.client, service.families)
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


def register_users(commands: argparse._SubParsersAction) -> None:
    users = commands.add_parser(
        "users", help="list, create, disable, enable, delete users; grants; rotate passwords"
    ).add_subparsers(dest="users_command", required=True, metavar="ACTION")
    users.add_parser("list", help="list users (never their secrets)").set_defaults(
        handler=cmd_users_list
    )
    review_cmd = users.add_parser(
        "review",
        help="access review: role, grants, created, last used, live token families; "
        "flags admins, wildcard grants, accounts unused for 90 days",
    )
    review_cmd.add_argument("--json", action="store_true", help="one JSON object per user")
    review_cmd.set_defaults(handler=cmd_users_review)
    for action, handler, text in (
        ("show", cmd_users_show, "show one user"),
        ("disable", cmd_users_disable, "disable a user (refused everywhere within a second)"),
        ("enable", cmd_users_enable, "re-enable a user"),
        ("rotate", cmd_users_rotate, "generate a new password; prints it once"),
        ("revoke-tokens", cmd_users_revoke_tokens, "revoke every token of a user"),
        ("delete", cmd_users_delete, "delete a user"),
    ):
        sub = users.add_parser(action, help=text)
        sub.add_argument("name")
        sub.set_defaults(handler=handler)
    create = users.add_parser("create", help="create a user; prints its password once")
    create.add_argument("name")
    create.add_argument("--role", required=True, choices=ROLES)
    create.add_argument("--prefix", action="append", help="a key prefix grant (repeatable)")
    create.set_defaults(handler=cmd_users_create)
    grants = users.add_parser("grants", help="change a user's role and/or key-prefix grants")
    grants.add_argument("name")
    grants.add_argument("--role", choices=ROLES)
    grants.add_argument(
        "--prefix", action="append", help="a key prefix grant (repeatable; replaces all)"
    )
    grants.set_defaults(handler=cmd_users_grants)


# --- tokens -----------------------------------------------------------------------
def token_service():
    from productionlab.tokens import build_service

    settings = _settings()
    client = _client(settings)
    from productionlab.users import UserStore

    users = UserStore(client, settings.secret_key.encode())
    return build_service(settings, client, users)


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
    from productionlab.tokens import SigningKey
    from productionlab.users import write_atomic

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


def register_tokens(commands: argparse._SubParsersAction) -> None:
    tokens = commands.add_parser(
        "tokens", help="list and revoke token families; rotate the signing key"
    ).add_subparsers(dest="tokens_command", required=True, metavar="ACTION")
    listing = tokens.add_parser("list", help="a user's live token families")
    listing.add_argument("--user", required=True)
    listing.set_defaults(handler=cmd_tokens_list)
    revoke = tokens.add_parser("revoke", help="revoke one token family (refresh and access)")
    revoke.add_argument("family")
    revoke.set_defaults(handler=cmd_tokens_revoke)
    tokens.add_parser("keys", help="the ids of the signing keys in use").set_defaults(
        handler=cmd_tokens_keys
    )
    rotate = tokens.add_parser(
        "rotate-key", help="generate a new signing key; the old one stays verify-only"
    )
    rotate.add_argument("--file", help="the token key file (default: PLAB_TOKEN_KEY_FILE)")
    rotate.add_argument("--force", action="store_true", help="rotate inside an overlap window")
    rotate.set_defaults(handler=cmd_tokens_rotate_key)


# --- audit ------------------------------------------------------------------------
def audit_log():
    from productionlab.audit import AuditLog

    return AuditLog(_client(_settings()))


def audit_keeper():
    from productionlab.audit_keeper import AuditKeeper

    settings = _settings()
    return AuditKeeper(settings, _client(settings))


def close_failure_window() -> None:
    """Append the aggregate auth-failure entries of a window that has ended (issue 9)."""
    from productionlab.ratelimit import failure_guard

    settings = _settings()
    failure_guard(settings, _client(settings)).close_window(operator())


def cmd_audit_verify(args: argparse.Namespace) -> int:
    close_failure_window()
    result = audit_keeper().verify()
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
    keeper = audit_keeper()
    checkpoint = keeper.checkpoint(force=True)
    _print({**checkpoint.as_dict(), "file": str(keeper.checkpoints.path)})
    return 0


def cmd_audit_list(args: argparse.Namespace) -> int:
    close_failure_window()
    entries, next_since = audit_log().page(args.since, args.limit, args.actor)
    for entry in entries:
        _print(entry)
    if next_since is not None and not args.quiet:
        print(f"# more: --since {next_since}", file=sys.stderr)
    return 0


def cmd_audit_export(args: argparse.Namespace) -> int:
    for entry in audit_log().iter_all():
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
    keeper = audit_keeper()
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
    _print(audit_log().head())
    return 0


def register_audit(commands: argparse._SubParsersAction) -> None:
    audit = commands.add_parser(
        "audit", help="verify, checkpoint, page, export and trim the tamper-evident audit log"
    ).add_subparsers(dest="audit_command", required=True, metavar="ACTION")
    verify = audit.add_parser(
        "verify", help="check archive, chain and signed checkpoints; non-zero if bad"
    )
    verify.add_argument("--json", action="store_true")
    verify.set_defaults(handler=cmd_audit_verify)
    audit.add_parser(
        "checkpoint", help="sign the current head now (appended to the checkpoint file)"
    ).set_defaults(handler=cmd_audit_checkpoint)
    listing = audit.add_parser("list", help="entries from --since, oldest first (JSON lines)")
    listing.add_argument("--since", type=int, default=1)
    listing.add_argument("--limit", type=int, default=100)
    listing.add_argument("--actor")
    listing.add_argument("--quiet", action="store_true")
    listing.set_defaults(handler=cmd_audit_list)
    export = audit.add_parser("export", help="every entry in redis as JSON lines")
    export.add_argument("--since", type=int, default=1)
    export.set_defaults(handler=cmd_audit_export)
    trim = audit.add_parser(
        "trim",
        help="archive, then keep the newest N entries in redis (--keep or PLAB_AUDIT_RETENTION)",
    )
    trim.add_argument("--keep", type=int)
    trim.add_argument("--archive", help="also append the dropped entries to this file (JSON lines)")
    trim.set_defaults(handler=cmd_audit_trim)
    audit.add_parser("head", help="the last seq and its hash").set_defaults(handler=cmd_audit_head)


# --- backup -----------------------------------------------------------------------
def _backup_dir(args: argparse.Namespace, settings: Settings) -> Path:
    from productionlab.admin import backup_dir

    return Path(args.dir) if getattr(args, "dir", None) else backup_dir(settings)


def _audit(settings: Settings, client, action: str, target: str, outcome: str) -> None:
    from productionlab.audit import AuditLog

    AuditLog(client).append(operator(), action, target, outcome)


def cmd_backup_create(args: argparse.Namespace) -> int:
    from productionlab.backup import create_backup

    settings = _settings()
    client = _client(settings)
    summary = create_backup(
        client, settings.backup_key, _backup_dir(args, settings), progress=not args.quiet
    )
    _audit(settings, client, "backup.create", summary.path.name, "ok")
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

    settings = _settings()
    client = _client(settings)
    restored = restore_backup(
        client,
        Path(args.file),
        settings.backup_key,
        operator(),
        overwrite=args.overwrite,
        progress=not args.quiet,
    )
    _audit(settings, client, "backup.restore", Path(args.file).name, "ok")
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

    settings = _settings()
    client = _client(settings)
    report = drill(
        client,
        _backup_key(args, settings),
        _backup_dir(args, settings),
        path=Path(args.file) if args.file else None,
        progress=not args.quiet,
    )
    _audit(settings, client, "backup.drill", report.backup, "ok" if report.ok else "failed")
    print("\n".join(report.lines()))
    return 0 if report.ok else 1


def _keys_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--keys",
        metavar="FILE",
        help="use the backup key of a `keys export` file, not the live one",
    )
    parser.add_argument("--passphrase-file", help="its passphrase (default: ask on the terminal)")


def register_backup(commands: argparse._SubParsersAction) -> None:
    backup = commands.add_parser(
        "backup", help="encrypted backups: create, list, verify, restore, drill"
    ).add_subparsers(dest="backup_command", required=True, metavar="ACTION")
    create = backup.add_parser("create", help="write one encrypted backup file")
    create.add_argument("--dir", help="default: PLAB_BACKUP_DIR or <PLAB_STATE_DIR>/backups")
    create.add_argument("--quiet", action="store_true", help="no progress bar")
    create.set_defaults(handler=cmd_backup_create)
    listing = backup.add_parser("list", help="the backup files and their key ids")
    listing.add_argument("--dir")
    listing.set_defaults(handler=cmd_backup_list)
    verify = backup.add_parser("verify", help="authenticate and check a backup file")
    verify.add_argument("file")
    _keys_options(verify)
    verify.set_defaults(handler=cmd_backup_verify)
    restore = backup.add_parser("restore", help="load a backup into an empty store")
    restore.add_argument("file")
    restore.add_argument(
        "--overwrite", action="store_true", help="allow a non-empty store; backup keys win"
    )
    restore.add_argument("--quiet", action="store_true", help="no progress bar")
    restore.set_defaults(handler=cmd_backup_restore)
    drill_cmd = backup.add_parser(
        "drill", help="back up, restore into a temporary redis-server, compare, clean up"
    )
    drill_cmd.add_argument("--file", help="drill this backup instead of making a new one")
    drill_cmd.add_argument("--dir")
    drill_cmd.add_argument("--quiet", action="store_true", help="no progress bar")
    _keys_options(drill_cmd)
    drill_cmd.set_defaults(handler=cmd_backup_drill)


# --- check-prod ---------------------------------------------------------------------
def cmd_check_prod(args: argparse.Namespace) -> int:
    from productionlab.checkprod import check

    findings = check(with_redis=not args.no_redis)
    for finding in findings:
        print(finding)
    if not findings:
        print("check-prod: no findings; fit for production")
    return 1 if findings else 0


def register_check_prod(commands: argparse._SubParsersAction) -> None:
    check = commands.add_parser(
        "check-prod", help="list what keeps this configuration from production; non-zero if any"
    )
    check.add_argument("--no-redis", action="store_true", help="skip the checks that ask redis")
    check.set_defaults(handler=cmd_check_prod)


REGISTRARS = (register_users, register_tokens, register_audit, register_backup, register_check_prod)
