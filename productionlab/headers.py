"""Security headers (Flask-Talisman) and a no-store cache policy on every answer."""

from __future__ import annotations

from flask import Flask, Response
from flask_talisman import Talisman

CSP = {"default-src": "'none'", "frame-ancestors": "'none'", "base-uri": "'none'"}


def init_app(app: Flask) -> None:
    # TLS ends at the edge; Talisman must not redirect the edge's plain-HTTP
    # hop or the probes, but HSTS is sent whenever the edge says the client
    # used HTTPS (X-Forwarded-Proto from the trusted proxy).
    Talisman(
        app,
        force_https=False,
        strict_transport_security=True,
        strict_transport_security_max_age=63072000,
        strict_transport_security_include_subdomains=True,
        content_security_policy=CSP,
        frame_options="DENY",
        referrer_policy="no-referrer",
        session_cookie_secure=True,
        x_content_type_options=True,
    )

    @app.after_request
    def no_store(response: Response) -> Response:
        response.headers.setdefault("Cache-Control", "no-store")
        response.headers["X-Content-Type-Options"] = "nosniff"
        return response
