"""Redis over its own TLS, mutually authenticated (issue 15, item 6).

A stack with ``redis_tls=True`` (``PLAB_REDIS_TLS=on`` under ``make run``) has no
plain redis port; only a client holding a certificate from the stack's redis CA
gets in, and both planes work through the edge. Compose's redis.conf is started
for real on loopback and spoken to with the compose client certificates.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess  # nosec B404
import sys
import time
from collections.abc import Iterator

import pytest
import redis
from cryptography import x509

from productionlab import deploy
from productionlab.secretgen import REDIS_TLS_CA, ensure_redis_tls, redis_client_files
from productionlab.settings import ConfigError, Settings
from productionlab.store.connection import connect
from productionlab.store.layout import SHARDS
from productionlab.supervisor import StackConfig, Supervisor, free_port
from tests.conftest import admin_of, create_user, start_stack, stop_stack
from tests.layout_kit import counters, item_of
from tests.test_settings import strong_env


@pytest.fixture(scope="module")
def tls_stack() -> Iterator[Supervisor]:
    stack = start_stack(redis_tls=True, edge_rate=5000, edge_burst=5000)
    yield stack
    stop_stack(stack)


def plain_options(stack: Supervisor, plane: str = "cp") -> dict:
    return {
        "host": stack.config.bind,
        "port": stack.config.redis_port,
        "username": f"plab-{plane}",
        "password": stack.secret(f"redis_{plane}_password"),
        "socket_timeout": 5,
        "socket_connect_timeout": 5,
    }


def refused(**options: object) -> bool:
    client = redis.Redis(**options)  # type: ignore[arg-type]
    try:
        client.ping()
    except redis.RedisError:
        return True
    finally:
        client.close()
    return False


def test_redis_conf_closes_the_plain_port_and_requires_client_certificates(tls_stack):
    conf = (tls_stack.redis_dir / "redis.conf").read_text().splitlines()
    assert "port 0" in conf
    assert f"tls-port {tls_stack.config.redis_port}" in conf
    assert "tls-auth-clients yes" in conf
    client = tls_stack.redis_client("cp")
    assert client.config_get("port") == {"port": "0"}
    assert client.config_get("tls-port") == {"tls-port": str(tls_stack.config.redis_port)}


def test_a_plain_client_is_refused(tls_stack):
    assert refused(**plain_options(tls_stack))


def test_a_client_without_a_certificate_is_refused(tls_stack):
    options = tls_stack.redis_tls_options("cp")
    no_cert = {k: v for k, v in options.items() if k not in ("ssl_certfile", "ssl_keyfile")}
    assert refused(**plain_options(tls_stack), **no_cert)
    # the control: the same options with the plane's certificate get in
    assert redis.Redis(**plain_options(tls_stack), **options).ping() is True


def test_a_certificate_from_another_ca_is_refused(tls_stack, tmp_path):
    other = ensure_redis_tls(tmp_path / "other")
    cert, key = redis_client_files("cp")
    options = {
        **tls_stack.redis_tls_options("cp"),
        "ssl_certfile": str(other[cert]),
        "ssl_keyfile": str(other[key]),
    }
    assert refused(**plain_options(tls_stack), **options)


def test_the_client_refuses_a_server_not_signed_by_its_ca(tls_stack, tmp_path):
    other = ensure_redis_tls(tmp_path / "other")
    options = {**tls_stack.redis_tls_options("cp"), "ssl_ca_certs": str(other[REDIS_TLS_CA])}
    assert refused(**plain_options(tls_stack), **options)


def test_the_planes_connect_with_rediss_and_their_own_certificates(tls_stack):
    for plane in ("ap", "cp"):
        env = tls_stack.plane_env(plane)
        assert env["PLAB_REDIS_URL"].startswith("rediss://")
        settings = Settings.from_env(env, plane=plane)
        client = connect(settings, pool_size=2)
        assert client.connection_pool.connection_class is redis.SSLConnection
        assert len(counters(client)) == SHARDS  # logged in as plab-<plane>: it may read them
        client.close()


def test_both_planes_work_end_to_end_through_the_edge(tls_stack, key):
    admin = admin_of(tls_stack)
    writer = create_user(admin, "writer", ["k-"])  # control plane: users are in redis
    assert writer.post(f"/write/{key}/over-tls").status_code in (200, 201)
    read = writer.get(f"/read/{key}")  # app plane
    assert read.status_code == 200 and "over-tls" in read.text
    stored = tls_stack.redis_client("cp").hgetall(item_of(key))
    assert stored, "the value is in redis"


def test_the_operator_cli_reaches_redis_over_tls_through_the_descriptor(tls_stack, tmp_path):
    (tmp_path / "var").symlink_to(tls_stack.state)
    env = {k: v for k, v in os.environ.items() if not k.startswith("PLAB_")}
    result = subprocess.run(
        [sys.executable, "-m", "productionlab", "audit", "verify", "--json"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["ok"] is True, result.stdout


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"PLAB_REDIS_URL": "rediss://127.0.0.1:6390/0"}, "PLAB_REDIS_TLS_CA_FILE is not set"),
        (
            {
                "PLAB_REDIS_URL": "rediss://127.0.0.1:6390/0",
                "PLAB_REDIS_TLS_CA_FILE": "/nonexistent",
            },
            "is not a readable file",
        ),
        (
            {"PLAB_REDIS_URL": "redis://127.0.0.1:6390/0", "PLAB_REDIS_TLS_CA_FILE": "{ca}"},
            "is not rediss://",
        ),
        (
            {
                "PLAB_REDIS_URL": "rediss://127.0.0.1:6390/0",
                "PLAB_REDIS_TLS_CA_FILE": "{ca}",
                "PLAB_REDIS_TLS_CERT_FILE": "{ca}",
            },
            "go together",
        ),
    ],
)
def test_bad_redis_tls_settings_refuse_to_start(tmp_path, env, message):
    files = ensure_redis_tls(tmp_path / "tls")
    environ = strong_env(**{k: v.replace("{ca}", str(files[REDIS_TLS_CA])) for k, v in env.items()})
    with pytest.raises(ConfigError) as raised:
        Settings.from_env(environ, plane="cp")
    assert message in str(raised.value)


def test_compose_redis_certificate_names_every_address_a_client_uses(tmp_path):
    directory = tmp_path / "secrets"
    deploy.prepare_secrets(directory)
    cert = x509.load_pem_x509_certificate((directory / "redis_server_crt").read_bytes())
    names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert {"redis", "localhost"} <= set(names.get_values_for_type(x509.DNSName))
    addresses = {str(a) for a in names.get_values_for_type(x509.IPAddress)}
    assert {"127.0.0.1", "::1"} <= addresses
    assert (directory / "redis_ca_key").stat().st_mode & 0o077 == 0  # the CA key stays private


def test_compose_redis_conf_serves_tls_only_to_the_compose_certificates(tmp_path):
    """The compose redis.conf, started for real on a loopback port with its secrets
    where /run/secrets would be: the healthcheck's and the planes' certificates get
    in over TLS, plain TCP and certificate-less TLS do not."""
    redis_server = shutil.which("redis-server") or "/usr/bin/redis-server"
    directory = tmp_path / "secrets"
    deploy.prepare_secrets(directory)
    port = free_port()
    conf = (
        (directory / "redis.conf")
        .read_text()
        .replace("dir /data", f"dir {tmp_path}")
        .replace("/run/secrets/", f"{directory}/")
        .replace("bind 0.0.0.0", "bind 127.0.0.1")
        .replace("tls-port 6379", f"tls-port {port}")
    )
    assert "\nport 0\n" in conf
    (tmp_path / "check.conf").write_text(conf)
    server = subprocess.Popen(
        [redis_server, str(tmp_path / "check.conf")],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        tls = {"ssl": True, "ssl_ca_certs": str(directory / "redis_ca_crt")}
        base = {"host": "127.0.0.1", "port": port, "socket_timeout": 5}
        health_cert, health_key = redis_client_files("health")
        health = redis.Redis(
            **base,
            **tls,
            username="plab-health",
            password="any",
            ssl_certfile=str(directory / health_cert),
            ssl_keyfile=str(directory / health_key),
        )
        deadline = time.monotonic() + 30
        while True:
            try:
                assert health.ping() is True
                break
            except redis.ConnectionError:
                assert server.poll() is None, "redis-server exited"
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        for plane in ("ap", "cp"):
            cert, key = redis_client_files(plane)
            password = (directory / f"redis_{plane}_password").read_text().strip()
            client = redis.Redis(
                **base,
                **tls,
                username=f"plab-{plane}",
                password=password,
                ssl_certfile=str(directory / cert),
                ssl_keyfile=str(directory / key),
            )
            assert counters(client) == (0,) * SHARDS
        assert refused(**base, username="plab-health", password="any")
        assert refused(**base, **tls, username="plab-health", password="any")
    finally:
        server.terminate()
        server.wait(10)


def test_make_run_turns_redis_tls_on_with_one_setting():
    assert StackConfig.from_env({"PLAB_REDIS_TLS": "on"}).redis_tls is True
    assert StackConfig.from_env({}).redis_tls is False
    with pytest.raises(ConfigError, match="PLAB_REDIS_TLS='maybe' is on or off"):
        StackConfig.from_env({"PLAB_REDIS_TLS": "maybe"})
