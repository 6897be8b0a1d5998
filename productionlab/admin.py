"""The admin API under ``/admin/`` (admin role): users, grants, credentials,
the audit log and stats. Every change goes through the user store or the KV
core, which write the audit entry atomically with the change."""

from __future__ import annotations

from flask import Blueprint, Response, current_app, g, jsonify, request

from productionlab.audit import Actor, AuditLog
from productionlab.auth import Authenticator, current_user
from productionlab.errors import BadRequest
from productionlab.kv import INDEX
from productionlab.users import UserStore


def users() -> UserStore:
    return current_app.extensions["plab_users"]


def audit_log() -> AuditLog:
    return current_app.extensions["plab_audit"]


def actor() -> Actor:
    return Actor(current_user().name, request.remote_addr or "", g.get("request_id", ""))


def json_body() -> dict:
    body = request.get_json(force=True, silent=True)
    if not isinstance(body, dict):
        raise BadRequest("the body must be a JSON object")
    return body


def int_arg(name: str, default: int, low: int, high: int) -> int:
    raw = request.args.get(name, str(default))
    if not raw.isdigit() or not low <= int(raw) <= high:
        raise BadRequest(f"{name} is a whole number from {low} to {high}")
    return int(raw)


def admin_blueprint(auth: Authenticator) -> Blueprint:
    bp = Blueprint("admin", __name__, url_prefix="/admin")
    admin_only = auth.require("admin")

    @bp.post("/users")
    @admin_only
    def create_user() -> Response:
        body = json_body()
        unknown = set(body) - {"name", "role", "prefixes"}
        if unknown:
            raise BadRequest(f"unknown fields: {', '.join(sorted(unknown))}")
        user, password = users().create(
            body.get("name"), body.get("role"), body.get("prefixes", []), actor()
        )
        response = jsonify({**user.public(), "password": password})
        response.status_code = 201
        response.headers["Location"] = f"/admin/users/{user.name}"
        return response

    @bp.get("/users")
    @admin_only
    def list_users() -> Response:
        return jsonify({"users": [u.public() for u in users().all()]})

    @bp.get("/users/<name>")
    @admin_only
    def show_user(name: str) -> Response:
        return jsonify(users().get(name).public())

    @bp.route("/users/<name>", methods=["PATCH"])
    @admin_only
    def change_grants(name: str) -> Response:
        body = json_body()
        unknown = set(body) - {"role", "prefixes"}
        if unknown or not body:
            raise BadRequest("give role and/or prefixes")
        current = users().get(name)
        user = users().set_grants(
            name,
            body.get("role", current.role),
            body.get("prefixes", list(current.prefixes)),
            actor(),
        )
        return jsonify(user.public())

    @bp.post("/users/<name>/disable")
    @admin_only
    def disable_user(name: str) -> Response:
        if name == current_user().name:
            raise BadRequest("you cannot disable yourself")
        return jsonify(users().set_disabled(name, True, actor()).public())

    @bp.post("/users/<name>/enable")
    @admin_only
    def enable_user(name: str) -> Response:
        return jsonify(users().set_disabled(name, False, actor()).public())

    @bp.post("/users/<name>/rotate")
    @admin_only
    def rotate_password(name: str) -> Response:
        user, password = users().rotate_password(name, actor())
        return jsonify({**user.public(), "password": password})

    @bp.delete("/users/<name>")
    @admin_only
    def delete_user(name: str) -> Response:
        if name == current_user().name:
            raise BadRequest("you cannot delete yourself")
        users().delete(name, actor())
        return Response(status=204)

    @bp.get("/audit")
    @admin_only
    def read_audit() -> Response:
        since = int_arg("since", 1, 1, 2**62)
        limit = int_arg("limit", 100, 1, 1000)
        actor_name = request.args.get("actor") or None
        entries = audit_log().entries(since=since, limit=limit, actor=actor_name)
        next_since = entries[-1]["seq"] + 1 if len(entries) == limit else None
        return jsonify({"entries": entries, "next_since": next_since})

    @bp.post("/audit/verify")
    @admin_only
    def verify_audit() -> Response:
        result = audit_log().verify()
        response = jsonify(result.as_dict())
        response.status_code = 200 if result.ok else 409
        return response

    @bp.get("/stats")
    @admin_only
    def stats() -> Response:
        client = current_app.extensions["plab_redis"]
        memory = client.info("memory")
        persistence = client.info("persistence")
        return jsonify(
            {
                "keys": client.zcard(INDEX),
                "users": len(users().all()),
                "audit_entries": client.llen("{plab}:audit"),
                "redis_used_memory": memory.get("used_memory"),
                "aof_enabled": bool(persistence.get("aof_enabled")),
                "aof_last_write_status": persistence.get("aof_last_write_status"),
            }
        )

    return bp
