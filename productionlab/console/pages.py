"""The console's blueprint: its error page, signing in and out, and every
area's pages (``keys.py``, ``users.py``, ``operations.py``) registered on it.
Each action calls the same core the admin API and the ``/ops`` KV routes call
(the KV core, the user store, the token service, the audit log,
``admin.make_backup``/``run_drill``), as the signed-in admin, so every change is
audited exactly as through the API."""

from __future__ import annotations

import secrets
from collections.abc import Callable

from flask import Blueprint, Response, g, redirect, request, url_for

from productionlab.audit import Actor, clean
from productionlab.auth import Authenticator, actor
from productionlab.console import keys, operations, users
from productionlab.console.common import (
    TEMPLATES,
    clear_cookie,
    render,
    session,
    sessions,
    set_cookie,
    signed_in,
)
from productionlab.console.csrf import cross_site
from productionlab.console.sessions import COOKIE, LOGIN_COOKIE, tokens_equal
from productionlab.errors import PlabError
from productionlab.routelimits import client_address
from productionlab.services import services
from productionlab.settings import Settings


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

    keys.register(bp)
    users.register(bp)
    operations.register(bp)
    return bp


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
