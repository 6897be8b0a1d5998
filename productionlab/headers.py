"""Security headers and a no-store cache policy on every answer.

The same set Flask-Talisman produced for our configuration, precomputed once:
Talisman rebuilt them on every request, which showed up in the profile. The
edge sets its own copy (and hides these), so these protect direct access to a
plane. TLS ends at the edge: HSTS is sent whenever the trusted edge says the
client used HTTPS (``X-Forwarded-Proto`` makes ``request.is_secure`` true).
"""

from __future__ import annotations

from flask import Flask, Response, request

CSP = {"default-src": "'none'", "frame-ancestors": "'none'", "base-uri": "'none'"}
HSTS = "max-age=63072000; includeSubDomains"
SECURITY_HEADERS = (
    ("Permissions-Policy", "browsing-topics=()"),
    ("X-Frame-Options", "DENY"),
    ("X-Content-Type-Options", "nosniff"),
    ("Content-Security-Policy", "; ".join(f"{k} {v}" for k, v in CSP.items())),
    ("Referrer-Policy", "no-referrer"),
)


def init_app(app: Flask) -> None:
    @app.after_request
    def security_headers(response: Response) -> Response:
        headers = response.headers
        for name, value in SECURITY_HEADERS:
            headers[name] = value
        if request.is_secure:
            headers["Strict-Transport-Security"] = HSTS
        if "Cache-Control" not in headers:
            headers["Cache-Control"] = "no-store"
        return response
