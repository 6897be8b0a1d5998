"""What the operator commands do: users, tokens, check-prod, and what every
command shares (the wiring, the operator actor, JSON output); the audit commands
are in opsaudit.py, the backup commands in opsbackup.py (the arguments of all of
them are in opscli.py).

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
    from productionlab.services import Services
    from productionlab.tokens import TokenService
    from productionlab.users import UserStore


def cp_settings() -> Settings:
    return Settings.from_env(plane="cp")


def wired(settings: Settings | None = None) -> Services:
    """The control plane's services for one command (one thread: a small pool)."""
    from productionlab.wiring import build_services

    return build_services(settings or cp_settings(), pool_size=4)


def operator() -> Actor:
    return Actor(f"cli:{getpass.getuser()}")


def print_json(data: object) -> None:
    print(json.dumps(data))


# --- users ------------------------------------------------------------------------
def user_store() -> UserStore:
    return wired().users


def cmd_users_list(args: argparse.Namespace) -> int:
    for user in user_store().all():
        print_json(user.public())
    return 0


def cmd_users_review(args: argparse.Namespace) -> int:
    from productionlab.lastused import review

    services = wired()
    rows = review(services.users.all(), services.redis, services.tokens.families)
    if args.json:
        for row in rows:
            print_json(row)
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
    print_json(user_store().get(args.name).public())
    return 0


def cmd_users_create(args: argparse.Namespace) -> int:
    user, password = user_store().create(args.name, args.role, args.prefix or [], operator())
    print_json({**user.public(), "password": password})
    return 0


def cmd_users_disable(args: argparse.Namespace) -> int:
    print_json(user_store().set_disabled(args.name, True, operator()).public())
    return 0


def cmd_users_enable(args: argparse.Namespace) -> int:
    print_json(user_store().set_disabled(args.name, False, operator()).public())
    return 0


def cmd_users_grants(args: argparse.Namespace) -> int:
    store = user_store()
    current = store.get(args.name)
    prefixes = list(current.prefixes) if args.prefix is None else args.prefix
    print_json(
        store.set_grants(args.name, args.role or current.role, prefixes, operator()).public()
    )
    return 0


def cmd_users_rotate(args: argparse.Namespace) -> int:
    user, password = user_store().rotate_password(args.name, operator())
    print_json({**user.public(), "password": password})
    return 0


def cmd_users_revoke_tokens(args: argparse.Namespace) -> int:
    print_json(user_store().revoke_tokens(args.name, operator()).public())
    return 0


def cmd_users_delete(args: argparse.Namespace) -> int:
    user_store().delete(args.name, operator())
    print_json({"name": args.name, "deleted": True})
    return 0


# --- tokens -----------------------------------------------------------------------
def token_service() -> TokenService:
    return wired().tokens


def cmd_tokens_list(args: argparse.Namespace) -> int:
    for family in token_service().families(args.user):
        print_json(family)
    return 0


def cmd_tokens_revoke(args: argparse.Namespace) -> int:
    if not token_service().revoke_family(args.family, operator()):
        print(f"productionlab: no token family {args.family!r}", file=sys.stderr)
        return 1
    print_json({"family": args.family, "revoked": True})
    return 0


def cmd_tokens_keys(args: argparse.Namespace) -> int:
    print_json(token_service().key_ids())
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


# --- check-prod ---------------------------------------------------------------------
def cmd_check_prod(args: argparse.Namespace) -> int:
    from productionlab.checkprod import check

    findings = check(with_redis=not args.no_redis)
    for finding in findings:
        print(finding)
    if not findings:
        print("check-prod: no findings; fit for production")
    return 1 if findings else 0
