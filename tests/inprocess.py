"""The in-process test layer: both planes' Flask apps, built by their
``create_app``, over ONE real redis-server per xdist worker (AOF on, a password,
``redis_process.RedisProcess``), driven by Flask's test client.

A route test marked ``@pytest.mark.inprocess`` (or a module with
``pytestmark = pytest.mark.inprocess``; ``inprocess(False)`` keeps one test of
such a module on the edge) gets its ``admin``, ``anonymous`` and
``make_user`` fixtures (tests/conftest.py) from here instead of the edge: the
same calls (``admin.post(path, json=...)``), the same answers
(``response.status_code``, ``.json()``, ``.headers``, ``.content``), no nginx,
no Waitress, no process start-up per request. What only the edge does (TLS,
the key regex and the edge's own limits, request routing, body limits in
nginx) stays in the process-level suites (test_edge, test_hostile, ...).

Isolation: one redis for the whole worker session, and every test its own keys
(the ``key`` fixture) and users (``make_user``, random names) - the discipline the
session ``stack`` already asks of process-level tests, so the moved tests run
unchanged. No FLUSHALL + bootstrap between tests: that would hash a new admin
password with argon2id for every test (the slowest thing here) and drop the
state the planes build once (audit chain head, token keys).

Redis Cluster: with PLAB_TEST_REDIS=cluster (`make test-redis-cluster`) the
planes run over a real three-master cluster (tests/cluster_kit.py) instead, as
``PLAB_REDIS_URL=redis+cluster://...``; ``redis_client`` is then a cluster client.

Requests go where the edge would send them (nginx/nginx.conf.template): the
control plane for /ops/, /admin/, /auth/ and /console, the app plane otherwise.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import os
import secrets
import shutil
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import redis
from flask import Flask

from productionlab import ap, cp
from productionlab.redis_process import RedisProcess, RedisTLSFiles
from productionlab.secretgen import (
    REDIS_TLS_CA,
    REDIS_TLS_SERVER,
    TOKEN_PUBLIC_KEY,
    ensure_redis_tls,
    ensure_secrets,
    redis_client_files,
)
from productionlab.serve import bootstrap_control_plane
from productionlab.services import services_of
from productionlab.settings import CP_SECRET_NAMES, PLANE_SECRETS, Settings
from tests.cluster_kit import RedisClusterKit

TEST_REDIS = ("", "single", "cluster")

CONTROL_PLANE_PREFIXES = ("/ops/", "/admin/", "/auth/", "/console")


def park_watch(planes: Planes, client, path: str) -> tuple[threading.Thread, list]:
    """GET ``path`` (a watch) from a thread, and return once the app plane's change
    feed holds it and is subscribed (bounded), so a write after this wakes it.
    The answer lands in the returned list when the thread ends."""
    answers: list = []
    thread = threading.Thread(target=lambda: answers.append(client.get(path)))
    thread.start()
    feed = services_of(planes.ap).watches.feed
    for _ in range(400):  # bounded: until it is parked and the feed subscribed
        if feed.waiting >= 1 and feed.subscribed.is_set():
            break
        time.sleep(0.05)
    return thread, answers


def stop_listeners(apps: list[Flask]) -> None:
    """Stop the apps' user-event and change listeners and wait for them (before
    redis goes away)."""
    for app in apps:
        services_of(app).users.stop_listener()
        services_of(app).watches.feed.stop()
    for app in apps:
        services_of(app).users.events.join(10)
        services_of(app).watches.feed.changes.join(10)


class Response:
    """Flask's test response with the face of a ``requests.Response``."""

    def __init__(self, response) -> None:
        self.raw = response
        self.status_code: int = response.status_code
        self.headers = response.headers
        self.content: bytes = response.get_data()

    @property
    def text(self) -> str:
        return self.content.decode("utf-8", errors="replace")

    def json(self):
        return json.loads(self.content)


@dataclass
class InProcessClient:
    """A client of the two planes, as tests/conftest.py's ``Client`` is of the edge."""

    planes: Planes
    name: str | None = None
    password: str | None = None

    @property
    def auth(self) -> tuple[str, str] | None:
        return (self.name, self.password or "") if self.name is not None else None

    def request(self, method: str, path: str, **kwargs) -> Response:
        return self.planes.request(method, path, auth=kwargs.pop("auth", self.auth), **kwargs)

    def get(self, path: str, **kwargs) -> Response:
        return self.request("GET", path, **kwargs)

    def post(self, path: str, **kwargs) -> Response:
        return self.request("POST", path, **kwargs)

    def put(self, path: str, **kwargs) -> Response:
        return self.request("PUT", path, **kwargs)

    def delete(self, path: str, **kwargs) -> Response:
        return self.request("DELETE", path, **kwargs)

    def direct(self, method: str, plane: str, path: str, **kwargs) -> Response:
        """Straight to one plane ("ap" or "cp"), whatever the path (as ``Client.direct``
        goes to one Waitress process, bypassing the edge)."""
        return self.planes.request(
            method, path, auth=kwargs.pop("auth", self.auth), plane=plane, **kwargs
        )


@dataclass
class Planes:
    redis: RedisProcess | RedisClusterKit
    ap: Flask
    cp: Flask
    state: Path
    admin_password: str
    variants: list[dict[str, Flask]] = dataclasses.field(default_factory=list)

    def app_for(self, path: str) -> Flask:
        return self.cp if path.startswith(CONTROL_PLANE_PREFIXES) else self.ap

    def request(
        self,
        method: str,
        path: str,
        *,
        auth: tuple[str, str] | None = None,
        plane: str | None = None,
        headers: dict | None = None,
        params: dict | None = None,
        **kwargs,
    ) -> Response:
        for ignored in ("timeout", "verify", "allow_redirects"):
            kwargs.pop(ignored, None)
        headers = dict(headers or {})
        if auth is not None:
            token = base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode()
            headers.setdefault("Authorization", f"Basic {token}")
        app = {"ap": self.ap, "cp": self.cp}[plane] if plane else self.app_for(path)
        with app.test_client(use_cookies=False) as client:
            answer = client.open(
                path, method=method, headers=headers, query_string=params, **kwargs
            )
            return Response(answer)

    def client(self, name: str | None = None, password: str | None = None) -> InProcessClient:
        return InProcessClient(self, name, password)

    def admin(self) -> InProcessClient:
        return self.client("admin", self.admin_password)

    @property
    def cluster(self) -> bool:
        """Over a Redis Cluster (PLAB_TEST_REDIS=cluster)?"""
        return isinstance(self.redis, RedisClusterKit)

    def redis_client(self, **overrides: object) -> redis.Redis:
        """A new client of the planes' redis (the caller closes it), as the stack's;
        ``overrides``: other client options (``username``, ``password``)."""
        if isinstance(self.redis, RedisClusterKit):
            return self.redis.client(**overrides)  # type: ignore[return-value]
        return redis.Redis(**{**self.redis.client_options(), "socket_timeout": 5, **overrides})

    def redis_nodes(self) -> list[redis.Redis]:
        """A new plain client of each redis-server (one, or each cluster master) for
        what is per server (ACL, CONFIG); the caller closes them."""
        if isinstance(self.redis, RedisClusterKit):
            servers = self.redis.nodes
        else:
            servers = [self.redis]
        return [redis.Redis(**{**s.client_options(), "socket_timeout": 5}) for s in servers]

    @property
    def htpasswd(self) -> Path:
        """The edge's htpasswd the control plane renders (no edge reads it here)."""
        return self.state / "htpasswd"

    def max_body_bytes(self) -> int:
        return services_of(self.ap).settings.max_body

    def variant(self, **extra_env: str) -> InProcessClient:
        """Both planes again with other settings (``PLAB_*`` values, e.g. a low user
        rate or quota) over the same redis, instead of a stack of their own; signed
        in as a new admin-role user, whose limits no other test has touched."""
        apps = create_apps(self.redis, self.state, extra_env)
        self.variants.append(apps)
        other = Planes(self.redis, apps["ap"], apps["cp"], self.state, self.admin_password)
        admin = self.admin()
        name = f"a{secrets.token_hex(6)}"
        created = admin.post(
            "/admin/users", json={"name": name, "role": "admin", "prefixes": ["*"]}
        )
        assert created.status_code == 201, created.text
        return other.client(name, created.json()["password"])

    def stop_variants(self) -> None:
        stop_listeners([app for apps in self.variants for app in apps.values()])
        self.variants.clear()

    def stop(self) -> None:
        self.stop_variants()
        stop_listeners([self.ap, self.cp])
        self.redis.stop()
        if os.environ.get("PLAB_KEEP_TEST_STATE") != "1":
            shutil.rmtree(self.state, ignore_errors=True)


def plane_settings(
    server: RedisProcess | RedisClusterKit,
    state: Path,
    plane: str,
    extra_env: dict[str, str] | None = None,
) -> Settings:
    """What the local supervisor gives each plane (its own secrets only), over
    ``server`` with its default user and password instead of the per-plane ACL
    users (those are proven by the process-level test_acl.py)."""
    secrets_dir = state / "secrets"
    env = {
        "PLAB_REDIS_URL": server.url,
        "PLAB_REDIS_PASSWORD": server.password or "",
        "PLAB_STATE_DIR": str(state),
        "PLAB_TRUSTED_PROXY": "127.0.0.1",
    }
    for name in PLANE_SECRETS[plane] + (CP_SECRET_NAMES if plane == "cp" else ()):
        env[f"PLAB_{name.upper()}_FILE"] = str(secrets_dir / name)
    if server.tls is not None:
        cert, key = redis_client_files(plane)
        tls_dir = server.tls.ca.parent
        env["PLAB_REDIS_TLS_CA_FILE"] = str(server.tls.ca)
        env["PLAB_REDIS_TLS_CERT_FILE"] = str(tls_dir / cert)
        env["PLAB_REDIS_TLS_KEY_FILE"] = str(tls_dir / key)
    if plane == "ap":
        env["PLAB_TOKEN_PUBLIC_KEY_FILE"] = str(secrets_dir / TOKEN_PUBLIC_KEY)
    else:
        env["PLAB_HTPASSWD"] = str(state / "htpasswd")
    env.update(extra_env or {})
    return Settings.from_env(env, plane=plane)


def create_apps(
    server: RedisProcess | RedisClusterKit, state: Path, extra_env: dict[str, str] | None = None
) -> dict[str, Flask]:
    apps = {}
    for plane, module in (("cp", cp), ("ap", ap)):
        app = module.create_app(plane_settings(server, state, plane, extra_env))
        # What serve.py does for a served app: follow user events (the
        # verification cache is on only while subscribed); create_app starts nothing.
        services_of(app).users.start_listener()
        apps[plane] = app
    return apps


def redis_tls_if_asked(directory: Path) -> RedisTLSFiles | None:
    """With PLAB_TEST_REDIS_TLS=1 (`make test-redis-tls`) the planes' redis speaks
    TLS only, with a private CA and one client certificate per plane, as every
    test stack's redis does then."""
    if os.environ.get("PLAB_TEST_REDIS_TLS") != "1":
        return None
    files = ensure_redis_tls(directory)
    cert, key = redis_client_files("cp")
    return RedisTLSFiles(
        ca=files[REDIS_TLS_CA],
        server_cert=files[REDIS_TLS_SERVER[0]],
        server_key=files[REDIS_TLS_SERVER[1]],
        client_cert=files[cert],
        client_key=files[key],
    )


def redis_kind() -> str:
    """PLAB_TEST_REDIS: "cluster" runs the planes over a three-master Redis Cluster
    (`make test-redis-cluster`); unset or "single", one redis-server."""
    kind = os.environ.get("PLAB_TEST_REDIS", "")
    if kind not in TEST_REDIS:
        raise ValueError(f"PLAB_TEST_REDIS={kind!r} is not one of single, cluster")
    return kind or "single"


def start_server(state: Path, kind: str) -> RedisProcess | RedisClusterKit:
    """The planes' redis: one redis-server (TLS if asked), or the cluster."""
    if kind == "cluster":
        return RedisClusterKit(root=state / "cluster").start()
    server = RedisProcess(directory=state / "redis", tls=redis_tls_if_asked(state / "redis-tls"))
    server.start()
    return server


def start_planes(server: RedisProcess | RedisClusterKit | None = None) -> Planes:
    """Both planes, bootstrapped, with an admin, over ``server`` (started; the
    planes stop it) or a new redis of PLAB_TEST_REDIS's kind."""
    state = Path(tempfile.mkdtemp(prefix="plab-inprocess-"))
    try:
        server = server or start_server(state, redis_kind())
    except BaseException:
        shutil.rmtree(state, ignore_errors=True)
        raise
    try:
        ensure_secrets(state / "secrets")
        apps = create_apps(server, state)
        bootstrap_control_plane(services_of(apps["cp"]))
        password = (state / "secrets" / "admin.password").read_text().strip()
    except BaseException:
        server.stop()
        shutil.rmtree(state, ignore_errors=True)
        raise
    return Planes(server, apps["ap"], apps["cp"], state, password)


def with_user(client, name: str, password: str):
    """The same kind of client (edge or in-process) signed in as another user."""
    return dataclasses.replace(client, name=name, password=password)
