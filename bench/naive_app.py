"""The naive baseline, kept as the yardstick: one Flask app on one Waitress
process, plain HTTP, no auth, no limits, no audit. ``/read/<key>`` is one
redis GET and ``/write/<key>/<value>`` one redis SET.

Run: ``python bench/naive_app.py --port 8000 --redis-port 6379``.
"""

from __future__ import annotations

import app_args
import redis
import waitress
from flask import Flask, jsonify


def create_app(client: redis.Redis) -> Flask:
    app = Flask("naive")

    @app.get("/read/<key>")
    def read(key: str):
        value = client.get(key)
        if value is None:
            return jsonify({"error": "not found"}), 404
        return jsonify({"key": key, "value": value.decode()})

    @app.post("/write/<key>/<value>")
    @app.get("/write/<key>/<value>")
    def write(key: str, value: str):
        client.set(key, value)
        return jsonify({"key": key})

    return app


def main() -> None:
    args = app_args.parse("--redis-port")
    client = redis.Redis(host="127.0.0.1", port=args.redis_port)
    waitress.serve(create_app(client), host=args.host, port=args.port, ident=None)


if __name__ == "__main__":
    main()
