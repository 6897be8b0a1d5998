"""The user pages: list, create (the new password shown once, in the answer to
that POST), show with token families, grants, disable/enable/revoke/rotate/
delete, and revoking one token family. Each calls the user store or the token
service as the signed-in admin, so every change is audited as through the API."""

from __future__ import annotations

from flask import Blueprint, Response, request

from productionlab import admin
from productionlab.auth import actor
from productionlab.console.common import back, render, signed_in
from productionlab.errors import MalformedRequest
from productionlab.services import services


def register(bp: Blueprint) -> None:
    """The user, grant and token pages, on the console blueprint."""

    @bp.get("/users")
    @signed_in
    def users() -> Response:
        return render("users.html", title="Users", users=services().users.all())

    @bp.post("/users")
    @signed_in
    def create_user() -> Response:
        user, password = services().users.create(
            request.form.get("name", ""),
            request.form.get("role", ""),
            prefixes_field(),
            actor(),
        )
        return render("password.html", title="User created", user=user, password=password)

    @bp.get("/users/<name>")
    @signed_in
    def show_user(name: str) -> Response:
        user = services().users.get(name)
        return render(
            "user.html",
            title=f"User {name}",
            user=user,
            families=services().tokens.families(name),
        )

    @bp.post("/users/<name>/grants")
    @signed_in
    def change_grants(name: str) -> Response:
        role = request.form.get("role", "")
        services().users.get(name)
        admin.refuse_self_harm(name, "grants", role)
        services().users.set_grants(name, role, prefixes_field(), actor())
        return back("console.show_user", f"Saved the grants of {name}.", name=name)

    @bp.post("/users/<name>/<action>")
    @signed_in
    def user_action(name: str, action: str) -> Response:
        store = services().users
        if action in ("disable", "delete"):
            admin.refuse_self_harm(name, action)
        if action == "disable":
            store.set_disabled(name, True, actor())
        elif action == "enable":
            store.set_disabled(name, False, actor())
        elif action == "revoke-tokens":
            store.revoke_tokens(name, actor())
        elif action == "rotate":
            user, password = store.rotate_password(name, actor())
            return render("password.html", title="Password rotated", user=user, password=password)
        elif action == "delete":
            store.delete(name, actor())
            return back("console.users", f"Deleted user {name}.")
        else:
            raise MalformedRequest(f"no user action {action!r}")
        return back("console.show_user", f"{name}: {action} done.", name=name)

    @bp.get("/users/<name>/delete")
    @signed_in
    def confirm_delete_user(name: str) -> Response:
        return render("confirm_user.html", title=f"Delete {name}", user=services().users.get(name))

    @bp.post("/tokens/<family>/revoke")
    @signed_in
    def revoke_family(family: str) -> Response:
        user = request.form.get("user", "")
        services().users.get(user)
        if not services().tokens.revoke_family(family, actor()):
            return back("console.show_user", f"No token family {family}.", name=user)
        return back("console.show_user", f"Revoked token family {family}.", name=user)


def prefixes_field() -> list[str]:
    raw = request.form.get("prefixes", "")
    return [p.strip() for p in raw.replace("\n", ",").split(",") if p.strip()]
