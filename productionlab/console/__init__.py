"""The operator console: server-rendered pages on the control plane at ``/console/``.

Flask-Talisman sets the console's headers (a CSP with a per-request script
nonce, frame denial, nosniff, a same-origin referrer policy, HSTS over HTTPS); the apps' header
middleware (``headers.py``) leaves a console response that carries a CSP as it
is and gives every other response its strict ``default-src 'none'`` set.
``PLAB_CONSOLE=off`` registers nothing: ``/console/*`` is a JSON 404.
"""

from __future__ import annotations

from flask import Flask
from flask_talisman import Talisman

from productionlab.auth import Authenticator
from productionlab.console.pages import console_blueprint
from productionlab.settings import Settings

CSP = {
    "default-src": "'none'",
    "script-src": "",  # only scripts carrying this response's nonce
    "style-src": "'self'",
    "img-src": "'self'",
    "form-action": "'self'",
    "frame-ancestors": "'none'",
    "base-uri": "'none'",
}


def init_app(app: Flask, settings: Settings, auth: Authenticator) -> None:
    """The console's headers and pages (its session store is built by wiring.py)."""
    if not settings.console:
        return
    Talisman(
        app,
        force_https=False,  # TLS ends at the edge; HSTS is still sent over HTTPS
        strict_transport_security=True,
        strict_transport_security_max_age=63072000,
        frame_options="DENY",
        content_security_policy=CSP,
        content_security_policy_nonce_in=["script-src"],
        # Not no-referrer: under it the browser sends "Origin: null" on the console's
        # own form posts, and the Origin check is one of the CSRF defences.
        # same-origin still sends nothing to another site.
        referrer_policy="same-origin",
        session_cookie_secure=True,
        permissions_policy={"browsing-topics": "()"},
    )
    app.register_blueprint(console_blueprint(auth, settings))
