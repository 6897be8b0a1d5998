"""The console's pages. Each action calls the same core the admin API and the
``/ops`` KV routes call (the KV core, the user store, the token service, the
audit log, ``admin.make_backup``/``run_drill``), as the signed-in admin, so
every change is audited exactly as through the API.

Secrets: no page shows a password, token or key, except a password created or
rotated, shown once in the answer to that POST (never in a URL, never stored
for a later page); values travel in form bodies, never in URLs.
"""

from __future__ import annotations

import base64
import binascii
import secrets
from collections.abc import Callable
from functools import wraps
from pathlib import Path
from typing import Any

from flask import (
    Blueprint,
    Response,
    g,
    make_response,
    redirect,
    render_template,
    request,
    url_for,
)

from productionlab import admin, checkprod, contract
from productionlab.audit import Actor, clean
from productionlab.auth import Authenticator, actor
from productionlab.backup import list_backups
from productionlab.backup_format import BackupError
from productionlab.console.csrf import cross_site
from productionlab.console.sessions import (
    COOKIE,
    LOGIN_COOKIE,
    ConsoleSession,
    SessionStore,
    tokens_equal,
)
from productionlab.contract import KEY_RE, KEY_RULE, MAX_TTL, PREFIX_PATTERN, PREFIX_RE
from productionlab.errors import KeyNotFound, MalformedRequest, PlabError, VersionConflict
from productionlab.health import ready_problem
from productionlab.kv import ITEM, KVStore, effective_prefixes
from productionlab.kv_routes import decode_cursor, encode_cursor
from productionlab.ratelimit import client_address
from productionlab.services import services
from productionlab.settings import Settings

TEMPLATES = Path(__file__).resolve().parent.parent / "templates"
PAGE = 50


def sessions() -> SessionStore:
    return services().console_sessions


def kv() -> KVStore:
    return services().kv


def session() -> ConsoleSession:
    return g.console


def render(template: str, status: int = 200, **context: Any) -> Response:
    console = g.get("console")
    flash = context.pop("flash", None) or (console.flash if console else "")
    response = make_response(
        render_template(
            f"console/{template}",
            me=console.user if console else None,
            csrf=console.csrf if console else "",
            flash=flash,
            contract=contract,
            **context,
        ),
        status,
    )
    response.headers["Cache-Control"] = "no-store"
    return response


def back(endpoint: str, message: str = "", **values: Any) -> Response:
    """Post/redirect/get: the message rides in the session record, not the URL."""
    if message:
        sessions().flash(session().id, message)
    return redirect(url_for(endpoint, **values), code=303)


def set_cookie(response: Response, name: str, value: str, max_age: int) -> None:
    """``__Host-``: Secure, Path=/, no Domain; never readable by scripts or sent cross-site."""
    response.set_cookie(
        name, value, max_age=max_age, path="/", secure=True, httponly=True, samesite="Strict"
    )


def clear_cookie(response: Response, name: str) -> None:
    response.set_cookie(
        name, "", max_age=0, expires=0, path="/", secure=True, httponly=True, samesite="Strict"
    )


def signed_in(view: Callable) -> Callable:
    """A live session; for POSTs also a same-site request with the session's CSRF token."""

    @wraps(view)
    def wrapper(*args: Any, **kwargs: Any) -> Response:
        store = sessions()
        found = store.load(store.unsign(request.cookies.get(COOKIE)))
        if found is None:
            if request.method == "POST":
                return render("login.html", 401, error="Your session ended; sign in again.")
            response = redirect(url_for("console.login"), code=303)
            clear_cookie(response, COOKIE)
            return response
        g.console = found
        g.user = found.user  # what auth.actor() and auth.current_user() read
        if request.method == "POST":
            reason = cross_site()
            if reason or not tokens_equal(request.form.get("csrf"), found.csrf):
                return render("error.html", 403, message="Refused: a cross-site or stale form.")
        return view(*args, **kwargs)

    return wrapper


def valid_key(key: str) -> str:
    if not KEY_RE.match(key):
        raise MalformedRequest(KEY_RULE)
    return key


def form_value() -> bytes:
    raw = request.form.get("value", "")
    encoding = request.form.get("encoding", "text")
    if encoding == "base64":
        try:
            return base64.b64decode(raw.strip(), validate=True)
        except (binascii.Error, ValueError):
            raise MalformedRequest("the value is not valid base64") from None
    if encoding != "text":
        raise MalformedRequest("encoding is text or base64")
    return raw.replace("\r\n", "\n").encode("utf-8")


def form_ttl() -> int | None:
    raw = request.form.get("ttl", "").strip()
    if not raw:
        return None
    if not (raw.isascii() and raw.isdigit()) or not 1 <= int(raw) <= MAX_TTL:
        raise MalformedRequest(f"TTL is a whole number of seconds from 1 to {MAX_TTL}")
    return int(raw)


def form_version() -> list[str]:
    raw = request.form.get("version", "")
    if not (raw.isascii() and raw.isdigit()):
        raise MalformedRequest("the form lost the version it was opened at; reload the key")
    return [raw]


def stale(exc: VersionConflict, key: str) -> str:
    now = exc.headers.get("ETag", "").strip('"')
    return (
        f"Stale edit refused: {key} changed since you opened it"
        + (f" (it is now version {now})" if now else " (it was deleted)")
        + ". Nothing was written; review the current value and edit again."
    )


def console_blueprint(auth: Authenticator, config: Settings) -> Blueprint:
    bp = Blueprint(
        "console",
        __name__,
        url_prefix="/console",
        template_folder=str(TEMPLATES),
        static_folder="static",
    )

    @bp.errorhandler(PlabError)
    def api_error(exc: PlabError) -> Response:
        response = render("error.html", exc.code or 500, message=exc.message)
        for name, value in exc.headers.items():
            if name.lower() == "retry-after":
                response.headers[name] = value
        return response

    # --- signing in and out ------------------------------------------------
    @bp.get("/login")
    def login() -> Response:
        nonce = sessions().signer.sign(secrets.token_urlsafe(24).encode()).decode()
        response = render("login.html", login_csrf=nonce)
        set_cookie(response, LOGIN_COOKIE, nonce, 600)
        return response

    @bp.post("/login")
    @login_limits(auth, config)
    def login_submit() -> Response:
        store = sessions()
        nonce = request.cookies.get(LOGIN_COOKIE, "")
        reason = cross_site()
        if reason or not store.unsign(nonce) or not tokens_equal(request.form.get("csrf"), nonce):
            return render("error.html", 403, message="Refused: a cross-site or stale login form.")
        name = request.form.get("name", "")[:64]
        password = request.form.get("password", "")[:1024]
        address = request.remote_addr or "-"
        auth.guard.check(address, name)  # 429 after too many failures (per pair, per address)
        user = auth.users.verify(name, password)
        if user is None or user.role != "admin":
            auth.guard.failed(address, name, "bad_credentials" if user is None else "not_admin")
            message = (
                "Wrong name or password."
                if user is None
                else "The console is for admin users only."
            )
            return render(
                "login.html", 401 if user is None else 403, login_csrf=nonce, error=message
            )
        store.revoke(store.unsign(request.cookies.get(COOKIE)))  # never adopt a presented id
        session_id, _ = store.create(user)
        services().audit.append(
            Actor(user.name, address, g.get("request_id", "")), "console.login", user.name, "ok"
        )
        response = redirect(url_for("console.keys"), code=303)
        set_cookie(response, COOKIE, store.cookie_value(session_id), store.lifetime)
        clear_cookie(response, LOGIN_COOKIE)
        return response

    @bp.post("/logout")
    @signed_in
    def logout() -> Response:
        sessions().revoke(session().id)
        services().audit.append(actor(), "console.logout", session().user.name, "ok")
        g.console = None
        response = render("login.html", login_csrf="", done="You are signed out.")
        clear_cookie(response, COOKIE)
        return response

    @bp.get("/")
    @signed_in
    def home() -> Response:
        return redirect(url_for("console.keys"), code=303)

    # --- keys -------------------------------------------------------------
    @bp.get("/keys")
    @signed_in
    def keys() -> Response:
        prefix = request.args.get("prefix", "")
        if not PREFIX_RE.match(prefix):
            raise MalformedRequest(f"a prefix matches {PREFIX_PATTERN}")
        cursor = request.args.get("cursor", "")
        found, last = kv().list_keys(
            effective_prefixes(session().user.grants, prefix), decode_cursor(cursor), PAGE
        )
        return render(
            "keys.html",
            title="Keys",
            prefix=prefix,
            keys=found,
            next_cursor=encode_cursor(last) if last else None,
            paged=bool(cursor),
        )

    @bp.post("/keys")
    @signed_in
    def create_key() -> Response:
        key = valid_key(request.form.get("key", ""))
        try:
            kv().put(key, form_value(), actor(), ttl=form_ttl(), if_absent=True)
        except VersionConflict:
            return back("console.show_key", f"{key} already exists; edit it here.", key=key)
        return back("console.show_key", f"Created {key}.", key=key)

    @bp.get("/kv/<key>")
    @signed_in
    def show_key(key: str) -> Response:
        return key_page(valid_key(key))

    @bp.post("/kv/<key>")
    @signed_in
    def edit_key(key: str) -> Response:
        valid_key(key)
        try:
            result = kv().put(key, form_value(), actor(), ttl=form_ttl(), if_match=form_version())
        except VersionConflict as exc:
            # Say so, show what is there now, and keep the operator's draft.
            try:
                return key_page(
                    key, status=409, flash=stale(exc, key), draft=request.form.get("value")
                )
            except KeyNotFound:
                return back("console.keys", stale(exc, key))
        return back("console.show_key", f"Saved {key} (version {result.version}).", key=key)

    @bp.post("/kv/<key>/ttl")
    @signed_in
    def set_ttl(key: str) -> Response:
        """Rewrite the value as it was at the form's version, with a TTL (one CAS write)."""
        ttl = form_ttl()
        if ttl is None:
            raise MalformedRequest("give a TTL in seconds")
        item = kv().get(valid_key(key))
        try:
            kv().put(key, item.value, actor(), ttl=ttl, if_match=form_version())
        except VersionConflict as exc:
            return back("console.show_key", stale(exc, key), key=key)
        return back("console.show_key", f"{key} now expires in {ttl} s.", key=key)

    @bp.get("/kv/<key>/delete")
    @signed_in
    def confirm_delete(key: str) -> Response:
        item = kv().get(valid_key(key))
        return render("confirm_delete.html", title=f"Delete {key}", item=item)

    @bp.post("/kv/<key>/delete")
    @signed_in
    def delete_key(key: str) -> Response:
        valid_key(key)
        try:
            kv().delete(key, actor(), if_match=form_version())
        except VersionConflict as exc:
            return back("console.show_key", stale(exc, key), key=key)
        return back("console.keys", f"Deleted {key}.")

    # --- users, grants, tokens ---------------------------------------------
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

    # --- audit, backups, status --------------------------------------------
    @bp.get("/audit")
    @signed_in
    def audit() -> Response:
        raw = request.args.get("since", "1")
        if not (raw.isascii() and raw.isdigit()) or not 1 <= int(raw) <= 2**62:
            raise MalformedRequest("since is a whole number from 1")
        admin.close_failure_window()
        entries, next_since = services().audit.page(since=int(raw), limit=PAGE)
        head = services().audit.head()
        return render(
            "audit.html",
            title="Audit log",
            entries=entries,
            next_since=next_since,
            newest=max(head["first"], head["seq"] - PAGE + 1),
            since=int(raw),
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

    return bp


def key_page(key: str, status: int = 200, flash: str = "", draft: str | None = None) -> Response:
    """A key as it is now: text, or hex and base64 when the value is not UTF-8."""
    item = kv().get(key)
    ttl = services().redis.pttl(ITEM + key)
    try:
        text: str | None = item.value.decode("utf-8")
    except UnicodeDecodeError:
        text = None
    b64 = base64.b64encode(item.value).decode() if text is None else ""
    return render(
        "key.html",
        status,
        flash=flash,
        title=key,
        item=item,
        text=text,
        hex=item.value[:4096].hex(" ", 1) if text is None else "",
        b64=b64,
        draft=draft if draft is not None else (text if text is not None else b64),
        ttl=max(0, int(ttl) // 1000) if ttl and int(ttl) > 0 else None,
    )


def login_limits(auth: Authenticator, config: Settings) -> Callable:
    """Flask-Limiter on the login form, on top of the control plane's RouteLimits:
    every attempt per address (``PLAB_AUTH_ADDRESS_RATE``), and sign-ins per user
    (``PLAB_AUTH_USER_RATE``, counting only successes, so someone who merely knows
    a name cannot spend its budget; failures per address and user are the
    LoginGuard's, which the view applies)."""
    route_limits = auth.route_limits
    if route_limits is None:
        return lambda view: view
    per_address = route_limits.limiter.shared_limit(
        config.auth_address_rate, scope="console-login-address", key_func=client_address
    )
    per_user = route_limits.limiter.shared_limit(
        config.auth_user_rate,
        scope="console-login-user",
        key_func=lambda: "user:" + clean(request.form.get("name", ""), 64),
        deduct_when=lambda response: response.status_code == 303,
    )
    return lambda view: per_address(per_user(view))


def prefixes_field() -> list[str]:
    raw = request.form.get("prefixes", "")
    return [p.strip() for p in raw.replace("\n", ",").split(",") if p.strip()]
