"""The operations pages: the audit log and its verification, backups and the
restore drill (``admin.make_backup``/``run_drill``), and the status page
(readiness and ``checkprod`` findings)."""

from __future__ import annotations

from flask import Blueprint, Response, request

from productionlab import admin, checkprod
from productionlab.audit_chains import chain_keys
from productionlab.audit_checkpoint import MAIN_CHAIN
from productionlab.audit_listing import chain_log, chain_page
from productionlab.backup import list_backups
from productionlab.backup_format import BackupError
from productionlab.console.common import PAGE, back, render, signed_in
from productionlab.contract import whole_number
from productionlab.errors import MalformedRequest
from productionlab.health import ready_problem
from productionlab.services import services


def register(bp: Blueprint) -> None:
    """The audit, backup and status pages, on the console blueprint."""

    @bp.get("/audit")
    @signed_in
    def audit() -> Response:
        since = whole_number(request.args.get("since", "1"), 1, 2**62)
        if since is None:
            raise MalformedRequest("since is a whole number from 1")
        chain = request.args.get("chain", MAIN_CHAIN)
        admin.close_failure_window()
        client = services().redis
        entries, next_since = chain_page(client, chain, since, PAGE, None)
        head = chain_log(client, chain).head()
        return render(
            "audit.html",
            title="Audit log",
            entries=entries,
            next_since=next_since,
            newest=max(head["first"], head["seq"] - PAGE + 1),
            since=since,
            chain=chain,
            chains=list(chain_keys()),
            # the main chain's links stay as they were (no chain parameter)
            chain_arg=None if chain == MAIN_CHAIN else chain,
        )

    @bp.post("/audit/verify")
    @signed_in
    def verify_audit() -> Response:
        admin.close_failure_window()
        result = admin.audit_keeper().verify().as_dict()
        return render("verify.html", 200, title="Audit verification", result=result)

    @bp.get("/backups")
    @signed_in
    def backups() -> Response:
        found = list_backups(services().settings.backup_dir)
        return render("backups.html", title="Backups", backups=found)

    @bp.post("/backups")
    @signed_in
    def create_backup() -> Response:
        summary = admin.make_backup()
        return back("console.backups", f"Backup written: {summary.path.name}.")

    @bp.post("/backups/drill")
    @signed_in
    def drill() -> Response:
        try:
            report = admin.run_drill()
        except BackupError as exc:
            return back("console.backups", f"Drill failed to run: {exc}")
        return render("drill.html", title="Backup drill", report=report.as_dict())

    @bp.get("/status")
    @signed_in
    def status() -> Response:
        problem = ready_problem()
        findings = checkprod.check(settings=services().settings)
        return render("status.html", title="Status", problem=problem, findings=findings)
