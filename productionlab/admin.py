"""The admin API under ``/admin/`` (admin role): users, grants, credentials,
tokens, the audit log, backups, the production check and stats. Every change
goes through the user store, the token service or the KV core, which write the
audit entry atomically with the change; actions that change nothing in redis
(backups, checks) get an entry of their own."""

from __future__ import annotations

import redis
from flask import Blueprint, Response, jsonify, request

from productionlab import backup, backup_format, checkprod, drill
from productionlab.audit_chains import chain_keys
from productionlab.audit_checkpoint import MAIN_CHAIN
from productionlab.audit_keeper import AuditKeeper, checkpoint_summary
from productionlab.audit_listing import chain_page, merged_page
from productionlab.auth import Authenticator, actor, current_user
from productionlab.errors import MalformedRequest, ResourceNotFound, StateConflict
from productionlab.kv import UNATTRIBUTED
from productionlab.kv_routes import int_arg
from productionlab.services import services
from productionlab.shardbackup import ShardStore
from productionlab.store.connection import info_of_every_master


def audit_keeper() -> AuditKeeper:
    """The control plane's custodian of the log (archive, checkpoints, verification):
    the one serve.py started, else one made on first use."""
    wired = services()
    if wired.audit_keeper is None:
        wired.audit_keeper = AuditKeeper(wired.settings, wired.redis)
    return wired.audit_keeper


def json_body() -> dict:
    body = request.get_json(force=True, silent=True)
    if not isinstance(body, dict):
        raise MalformedRequest("the body must be a JSON object")
    return body


def refuse_self_harm(name: str, action: str, role: str | None = None) -> None:
    """What an admin may not do to their own account, from the API or the console."""
    if name != current_user().name:
        return
    if action == "disable":
        raise MalformedRequest("you cannot disable yourself")
    if action == "delete":
        raise MalformedRequest("you cannot delete yourself")
    if action == "grants" and role not in (None, "admin"):
        raise MalformedRequest("you cannot take the admin role from yourself")


def make_backup() -> backup.Summary:
    """Write a backup now and audit it (the API's ``POST /admin/backups``, the console)."""
    wired = services()
    config = wired.settings
    summary = backup.create_backup(
        wired.redis, config.backup_key, config.backup_dir, progress=False
    )
    wired.audit.append(actor(), "backup.create", summary.path.name, "ok")
    return summary


def run_drill() -> drill.DrillReport:
    """Back up, restore into a scratch redis-server, compare; audited with its verdict."""
    wired = services()
    config = wired.settings
    try:
        report = drill.drill(wired.redis, config.backup_key, config.backup_dir, progress=False)
    except backup_format.BackupError:
        wired.audit.append(actor(), "backup.drill", "-", "failed")
        raise
    wired.audit.append(actor(), "backup.drill", report.backup, "ok" if report.ok else "failed")
    return report


def close_failure_window() -> None:
    """Append the aggregate failure entries of a window that has ended (see loginguard.py)."""
    services().guard.close_window(actor())


def redis_masters(client: redis.Redis) -> list[dict]:
    """Memory and AOF state of the redis, or of every master of a cluster (a
    cluster client's INFO reaches one node only; any master may be the full one
    or the one whose AOF is off)."""
    memory = info_of_every_master(client, "memory")
    persistence = info_of_every_master(client, "persistence")
    return [
        {
            "node": node or None,
            "used_memory": memory[node].get("used_memory"),
            "maxmemory": memory[node].get("maxmemory"),
            "aof_enabled": bool(persistence[node].get("aof_enabled")),
            "aof_last_write_status": persistence[node].get("aof_last_write_status"),
        }
        for node in sorted(memory)
    ]


def fill(master: dict) -> tuple[float, int]:
    """How full a master is: ``used_memory`` over ``maxmemory`` (0 unbounded), then bytes."""
    used, bound = int(master["used_memory"] or 0), int(master["maxmemory"] or 0)
    return (used / bound if bound > 0 else 0.0, used)


def admin_blueprint(auth: Authenticator) -> Blueprint:
    bp = Blueprint("admin", __name__, url_prefix="/admin")
    required = auth.require("admin")
    limits = auth.route_limits

    def admin_only(view):
        """Flask-Limiter's per-address limit (before authentication), then the admin role."""
        guarded = required(view)
        return limits.admin(guarded) if limits is not None else guarded

    @bp.post("/users")
    @admin_only
    def create_user() -> Response:
        body = json_body()
        unknown = set(body) - {"name", "role", "prefixes"}
        if unknown:
            raise MalformedRequest(f"unknown fields: {', '.join(sorted(unknown))}")
        user, password = services().users.create(
            body.get("name"), body.get("role"), body.get("prefixes", []), actor()
        )
        response = jsonify({**user.public(), "password": password})
        response.status_code = 201
        response.headers["Location"] = f"/admin/users/{user.name}"
        return response

    @bp.get("/users")
    @admin_only
    def list_users() -> Response:
        return jsonify({"users": [u.public() for u in services().users.all()]})

    @bp.get("/users/review")
    @admin_only
    def review_users() -> Response:
        """The quarterly access review (lastused.py); ``/users/<name>`` for a user
        named "review"."""
        from productionlab.lastused import review

        wired = services()
        return jsonify({"users": review(wired.users.all(), wired.redis, wired.tokens.families)})

    @bp.get("/users/<name>")
    @admin_only
    def show_user(name: str) -> Response:
        user = services().users.get(name)
        usage = services().kv.usage(user.name)
        return jsonify({**user.public(), "usage": usage.as_dict()})

    @bp.route("/users/<name>", methods=["PATCH"])
    @admin_only
    def change_grants(name: str) -> Response:
        body = json_body()
        unknown = set(body) - {"role", "prefixes"}
        if unknown or not body:
            raise MalformedRequest("give role and/or prefixes")
        current = services().users.get(name)
        refuse_self_harm(name, "grants", body.get("role", "admin"))
        user = services().users.set_grants(
            name,
            body.get("role", current.role),
            body.get("prefixes", list(current.prefixes)),
            actor(),
        )
        return jsonify(user.public())

    @bp.post("/users/<name>/disable")
    @admin_only
    def disable_user(name: str) -> Response:
        refuse_self_harm(name, "disable")
        return jsonify(services().users.set_disabled(name, True, actor()).public())

    @bp.post("/users/<name>/enable")
    @admin_only
    def enable_user(name: str) -> Response:
        return jsonify(services().users.set_disabled(name, False, actor()).public())

    @bp.post("/users/<name>/rotate")
    @admin_only
    def rotate_password(name: str) -> Response:
        user, password = services().users.rotate_password(name, actor())
        return jsonify({**user.public(), "password": password})

    @bp.post("/users/<name>/revoke-tokens")
    @admin_only
    def revoke_user_tokens(name: str) -> Response:
        return jsonify(services().users.revoke_tokens(name, actor()).public())

    @bp.get("/tokens")
    @admin_only
    def list_tokens() -> Response:
        name = request.args.get("user", "")
        services().users.get(name)
        return jsonify({"families": services().tokens.families(name)})

    @bp.post("/tokens/<family>/revoke")
    @admin_only
    def revoke_family(family: str) -> Response:
        if not services().tokens.revoke_family(family, actor()):
            raise ResourceNotFound(f"no token family {family!r}")
        return jsonify({"family": family, "revoked": True})

    @bp.get("/tokens/keys")
    @admin_only
    def token_keys() -> Response:
        return jsonify(services().tokens.key_ids())

    @bp.delete("/users/<name>")
    @admin_only
    def delete_user(name: str) -> Response:
        refuse_self_harm(name, "delete")
        services().users.delete(name, actor())
        return Response(status=204)

    @bp.get("/audit")
    @admin_only
    def read_audit() -> Response:
        since = int_arg("since", 1, 1, 2**62)
        limit = int_arg("limit", 100, 1, 1000)
        actor_name = request.args.get("actor") or None
        chain = request.args.get("chain")
        close_failure_window()
        client = services().redis
        if chain is None and "since" in request.args:
            chain = MAIN_CHAIN  # paging by seq is one chain's: the main one, as before the shards
        if chain is not None:
            entries, next_since = chain_page(client, chain, since, limit, actor_name)
            return jsonify({"entries": entries, "next_since": next_since, "next_cursor": None})
        entries, cursor = merged_page(client, request.args.get("cursor"), limit, actor_name)
        return jsonify({"entries": entries, "next_since": None, "next_cursor": cursor})

    @bp.post("/audit/verify")
    @admin_only
    def verify_audit() -> Response:
        close_failure_window()
        result = audit_keeper().verify()
        response = jsonify(result.as_dict())
        response.status_code = 200 if result.ok else 409
        return response

    @bp.post("/audit/checkpoint")
    @admin_only
    def checkpoint_audit() -> Response:
        checkpoint = audit_keeper().checkpoint(force=True)
        response = jsonify(checkpoint_summary(checkpoint))
        response.status_code = 201
        return response

    @bp.get("/audit/head")
    @admin_only
    def audit_head() -> Response:
        close_failure_window()
        return jsonify(services().audit.head())

    @bp.post("/audit/trim")
    @admin_only
    def trim_audit() -> Response:
        body = json_body()
        keep = body.get("keep")
        if not isinstance(keep, int) or isinstance(keep, bool) or keep < 1:
            raise MalformedRequest('give {"keep": N} with N at least 1')
        dropped, first, segment = audit_keeper().trim(actor(), keep)
        return jsonify(
            {
                "dropped": dropped,
                "first": first or None,
                "archived": segment.name if segment else None,
            }
        )

    @bp.get("/backups")
    @admin_only
    def list_backups() -> Response:
        return jsonify({"backups": backup.list_backups(services().settings.backup_dir)})

    @bp.post("/backups")
    @admin_only
    def create_backup() -> Response:
        response = jsonify(make_backup().as_dict())
        response.status_code = 201
        return response

    @bp.post("/backups/<name>/verify")
    @admin_only
    def verify_backup(name: str) -> Response:
        config = services().settings
        try:
            path = backup.backup_path(config.backup_dir, name)
        except (backup_format.BackupError, FileNotFoundError):
            raise ResourceNotFound(f"no backup {name!r}") from None
        try:
            contents = backup.verify_backup(path, config.backup_key)
        except backup_format.BackupError as exc:
            services().audit.append(actor(), "backup.verify", name, "failed")
            raise StateConflict(str(exc)) from None
        services().audit.append(actor(), "backup.verify", name, "ok")
        return jsonify({"name": name, "ok": True, "keys": contents.keys, "digest": contents.digest})

    @bp.get("/check-prod")
    @admin_only
    def check_prod() -> Response:
        findings = checkprod.check(settings=services().settings)
        return jsonify({"ok": not findings, "findings": findings})

    @bp.get("/stats")
    @admin_only
    def stats() -> Response:
        client = services().redis
        masters = redis_masters(client)
        fullest = max(masters, key=fill)
        failing = [m for m in masters if m["aof_last_write_status"] != "ok"]
        return jsonify(
            {
                "keys": ShardStore().key_count(client),
                "users": len(services().users.all()),
                "audit_entries": sum(client.llen(lst) for lst, _ in chain_keys().values()),
                "redis_used_memory": fullest["used_memory"],
                "redis_maxmemory": fullest["maxmemory"],
                "usage_unattributed": services().kv.usage(UNATTRIBUTED).as_dict(with_quota=False),
                "aof_enabled": all(m["aof_enabled"] for m in masters),
                "aof_last_write_status": (failing or masters)[0]["aof_last_write_status"],
                "redis_masters": masters,
            }
        )

    return bp
