"""The operator commands' arguments: ``productionlab users|tokens|audit|backup|
check-prod ...``. What each command does is in opscommands.py (users, tokens,
check-prod), opsaudit.py and opsbackup.py."""

from __future__ import annotations

import argparse

from productionlab.contract import ROLES
from productionlab.opsaudit import (
    cmd_audit_checkpoint,
    cmd_audit_export,
    cmd_audit_head,
    cmd_audit_list,
    cmd_audit_trim,
    cmd_audit_verify,
)
from productionlab.opsbackup import (
    cmd_backup_create,
    cmd_backup_drill,
    cmd_backup_list,
    cmd_backup_restore,
    cmd_backup_verify,
)
from productionlab.opscommands import (
    cmd_check_prod,
    cmd_tokens_keys,
    cmd_tokens_list,
    cmd_tokens_revoke,
    cmd_tokens_rotate_key,
    cmd_users_create,
    cmd_users_delete,
    cmd_users_disable,
    cmd_users_enable,
    cmd_users_grants,
    cmd_users_list,
    cmd_users_review,
    cmd_users_revoke_tokens,
    cmd_users_rotate,
    cmd_users_show,
)


def command_group(commands: argparse._SubParsersAction, name: str, text: str):
    """``productionlab <name> <ACTION> ...``: a command whose actions are sub-commands."""
    return commands.add_parser(name, help=text).add_subparsers(
        dest=f"{name.replace('-', '_')}_command", required=True, metavar="ACTION"
    )


def register_users(commands: argparse._SubParsersAction) -> None:
    users = command_group(
        commands, "users", "list, create, disable, enable, delete users; grants; rotate passwords"
    )
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


def register_tokens(commands: argparse._SubParsersAction) -> None:
    tokens = command_group(
        commands, "tokens", "list and revoke token families; rotate the signing key"
    )
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


def register_audit(commands: argparse._SubParsersAction) -> None:
    audit = command_group(
        commands, "audit", "verify, checkpoint, page, export and trim the tamper-evident audit log"
    )
    verify = audit.add_parser(
        "verify", help="check archive, chain and signed checkpoints; non-zero if bad"
    )
    verify.add_argument("--json", action="store_true")
    verify.set_defaults(handler=cmd_audit_verify)
    audit.add_parser(
        "checkpoint", help="sign the current head now (appended to the checkpoint file)"
    ).set_defaults(handler=cmd_audit_checkpoint)
    listing = audit.add_parser(
        "list", help="one chain's entries from --since, oldest first (JSON lines)"
    )
    listing.add_argument("--chain", default="main", help="main (default) or s00 .. s15")
    listing.add_argument("--since", type=int, default=1)
    listing.add_argument("--limit", type=int, default=100)
    listing.add_argument("--actor")
    listing.add_argument("--quiet", action="store_true")
    listing.set_defaults(handler=cmd_audit_list)
    export = audit.add_parser("export", help="one chain's entries in redis as JSON lines")
    export.add_argument("--chain", default="main", help="main (default) or s00 .. s15")
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


def _keys_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--keys",
        metavar="FILE",
        help="use the backup key of a `keys export` file, not the live one",
    )
    parser.add_argument("--passphrase-file", help="its passphrase (default: ask on the terminal)")


def register_backup(commands: argparse._SubParsersAction) -> None:
    backup = command_group(
        commands, "backup", "encrypted backups: create, list, verify, restore, drill"
    )
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


def register_check_prod(commands: argparse._SubParsersAction) -> None:
    check = commands.add_parser(
        "check-prod", help="list what keeps this configuration from production; non-zero if any"
    )
    check.add_argument("--no-redis", action="store_true", help="skip the checks that ask redis")
    check.set_defaults(handler=cmd_check_prod)


REGISTRARS = (register_users, register_tokens, register_audit, register_backup, register_check_prod)
