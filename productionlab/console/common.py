"""What every console page shares: the accessors, ``render()`` and ``back()``,
the ``__Host-`` cookies, and ``signed_in`` (a live session; for POSTs also a
same-site request with the session's CSRF token).

Secrets: no page shows a password, token or key, except a password created or
rotated, shown once in the answer to that POST (never in a URL, never stored
for a later page); values travel in form bodies, never in URLs.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import wraps
from pathlib import Path
from typing import Any

from flask import (
    Response,
    g,
    make_response,
    redirect,
    render_template,
    request,
    url_for,
)

from productionlab import contract
from productionlab.console.csrf import cross_site
from productionlab.console.sessions import COOKIE, ConsoleSession, SessionStore, tokens_equal
from productionlab.services import services
from productionlab.shardkv import ShardedKV

TEMPLATES = Path(__file__).resolve().parent.parent / "templates"
PAGE = 50


def sessions() -> SessionStore:
    return services().console_sessions


def kv() -> ShardedKV:
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
