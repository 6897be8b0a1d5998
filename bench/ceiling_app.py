"""The ceiling's app (issue 16): an empty Flask route on Waitress, nothing else.

``GET /read/<key>`` and ``POST /write/<key>/<value>`` (the paths the workloads hit)
return a small JSON dict without touching redis, auth, limits, logs or metrics: what
Flask on Waitress gives at most, the ceiling of any design that keeps both on the
request path. Waitress runs with the app plane's settings (``productionlab/serve.py``)
except the proxy-headers step, which is the plane's work, not Flask's.

Run: ``python bench/ceiling_app.py --port 8000 --threads 8``.
"""

from __future__ import annotations

import app_args
import waitress
from flask import Flask


def create_app() -> Flask:
    app = Flask("ceiling")

    @app.get("/read/<key>")
    def read(key: str) -> dict:
        return {"key": key, "value": "value"}

    @app.post("/write/<key>/<value>")
    def write(key: str, value: str) -> dict:
        return {"key": key, "version": 1}

    return app


def main() -> None:
    args = app_args.parse("--threads")
    waitress.serve(
        create_app(),
        host=args.host,
        port=args.port,
        threads=args.threads,
        ident=None,
        channel_timeout=30,
        connection_limit=1000,
        expose_tracebacks=False,
        asyncore_use_poll=True,
    )


if __name__ == "__main__":
    main()
