"""Cross-site request forgery defences for the console's forms.

Three layers, each enough on its own against a browser: the session cookie is
``SameSite=Strict`` (a cross-site request carries none); every state-changing
form carries a per-session token (per-login-attempt for the login form) that a
foreign page cannot read; and a request whose ``Sec-Fetch-Site`` or ``Origin``
says it came from another site is refused before anything else runs.
"""

from __future__ import annotations

from flask import request

SAME_SITE = ("same-origin", "none")


def cross_site() -> str | None:
    """Why this request looks cross-site, or None."""
    site = request.headers.get("Sec-Fetch-Site")
    if site is not None and site not in SAME_SITE:
        return f"Sec-Fetch-Site is {site}"
    origin = request.headers.get("Origin")
    if origin is not None and origin != f"{request.scheme}://{request.host}":
        return "the Origin is not this console"
    return None
