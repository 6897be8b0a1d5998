"""What the operator's audit commands do: verify, checkpoint, list, export, trim,
head (their arguments are in opscli.py; the shared wiring in opscommands.py)."""

from __future__ import annotations

import argparse
import json
import sys
from typing import TYPE_CHECKING

from productionlab.opscommands import operator, print_json, wired
from productionlab.settings import Settings

if TYPE_CHECKING:
    from productionlab.audit_keeper import AuditKeeper
    from productionlab.services import Services


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
        print_json(result.as_dict())
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
        shards = [c for name, c in result.chains.items() if name != result.chain]
        print(
            f"audit: the {len(shards)} shard chains verify too "
            f"({sum(c['checked'] for c in shards)} entries)"
        )
    else:
        where = (
            f" (position {result.first_bad_index})" if result.first_bad_index is not None else ""
        )
        print(
            f"audit: FAIL in chain {result.chain} at entry seq {result.first_bad_seq}{where}: "
            f"{result.reason}"
        )
        for problem in result.problems[1:10]:
            print(f"  also: {problem}")
    return 0 if result.ok else 1


def cmd_audit_checkpoint(args: argparse.Namespace) -> int:
    keeper = audit_keeper(wired())
    checkpoint = keeper.checkpoint(force=True)
    from productionlab.audit_keeper import checkpoint_summary

    print_json({**checkpoint_summary(checkpoint), "file": str(keeper.checkpoints.path)})
    return 0


def cmd_audit_list(args: argparse.Namespace) -> int:
    services = wired()
    close_failure_window(services)
    from productionlab.audit_listing import chain_page

    entries, next_since = chain_page(services.redis, args.chain, args.since, args.limit, args.actor)
    for entry in entries:
        print_json(entry)
    if next_since is not None and not args.quiet:
        print(f"# more: --since {next_since}", file=sys.stderr)
    return 0


def cmd_audit_export(args: argparse.Namespace) -> int:
    from productionlab.audit_listing import chain_log

    for entry in chain_log(wired().redis, args.chain).iter_all():
        if entry.get("seq", 0) >= args.since:
            print_json({**entry, "chain": args.chain})
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
    print_json(wired().audit.head())
    return 0
