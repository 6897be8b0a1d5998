"""Security headers and a no-store cache policy on every answer.

The same set Flask-Talisman produced for our configuration, precomputed once
and appended by a small WSGI middleware at ``start_response``: Talisman
rebuilt them per request and werkzeug's ``Headers.set`` scans the list on
each call, both visible in the profile. Being WSGI-level, they also cover
every error page. The edge sets its own copy (and hides these), so these
protect direct access to a plane. The one exception is the operator console
(``/console/``): a response there that carries a CSP (Flask-Talisman's, with
a per-request nonce) keeps its headers, and the edge passes them through.
TLS ends at the edge: HSTS is sent whenever the trusted edge says the client
used HTTPS (``X-Forwarded-Proto`` sets ``wsgi.url_scheme``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from flask import Flask

CSP = {"default-src": "'none'", "frame-ancestors": "'none'", "base-uri": "'none'"}
HSTS = ("Strict-Transport-Security", "max-age=63072000; includeSubDomains")
NO_STORE = ("Cache-Control", "no-store")
SECURITY_HEADERS = (
    ("Permissions-Policy", "browsing-topics=()"),
    ("X-Frame-Options", "DENY"),
    ("X-Content-Type-Options", "nosniff"),
    ("Content-Security-Policy", "; ".join(f"{k} {v}" for k, v in CSP.items())),
    ("Referrer-Policy", "no-referrer"),
)
_OURS = frozenset(name.lower() for name, _ in (*SECURITY_HEADERS, HSTS))
CONSOLE = "/console/"


class SecurityHeaders:
    """WSGI middleware: our security headers replace any the app set; no-store by default."""

    def __init__(self, app: Callable):
        self.app = app

    def __call__(self, environ: dict, start_response: Callable) -> Iterable[bytes]:
        secure = environ.get("wsgi.url_scheme") == "https"
        path = environ.get("PATH_INFO", "")

        def start(status: str, headers: list[tuple[str, str]], exc_info=None):
            names = {name.lower() for name, _ in headers}
            if "content-security-policy" in names and path.startswith(CONSOLE):
                # The console's own set (Talisman: a nonce CSP): keep it, fill in the rest.
                headers.extend(h for h in SECURITY_HEADERS if h[0].lower() not in names)
                if secure and HSTS[0].lower() not in names:
                    headers.append(HSTS)
                if "cache-control" not in names:
                    headers.append(NO_STORE)
                return start_response(status, headers, exc_info)
            if names & _OURS:
                headers = [(n, v) for n, v in headers if n.lower() not in _OURS]
            headers.extend(SECURITY_HEADERS)
            if secure:
                headers.append(HSTS)
            if "cache-control" not in names:
                headers.append(NO_STORE)
            return start_response(status, headers, exc_info)

        return self.app(environ, start)


def init_app(app: Flask) -> None:
    app.wsgi_app = SecurityHeaders(app.wsgi_app)  # type: ignore[method-assign]
