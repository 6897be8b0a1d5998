"""The compose preparation steps: secrets, redis.conf and the edge's nginx.conf.
(The deployment itself is proven by `make e2e`.)"""

from __future__ import annotations

import hashlib
import shutil
import stat
import subprocess
import time

import pytest
import redis

from productionlab import deploy
from productionlab.settings import secret_problem


def test_secrets_are_strong_kept_and_readable_only_through_a_private_directory(tmp_path):
    directory = tmp_path / "secrets"
    first = {p.name: p.read_text() for p in deploy.prepare_secrets(directory)}
    again = {p.name: p.read_text() for p in deploy.prepare_secrets(directory)}
    assert first == again
    assert stat.S_IMODE(directory.stat().st_mode) == 0o700
    for name in ("secret_key", "token_key", "audit_key", "backup_key", "redis_ap_password"):
        assert secret_problem(name, first[name].strip()) is None
        assert stat.S_IMODE((directory / name).stat().st_mode) == 0o444
    assert {"tls.crt", "tls.key", "redis.conf"} <= set(first)
    assert len({first[n] for n in ("redis_ap_password", "redis_cp_password", "secret_key")}) == 3


def test_redis_conf_holds_hashes_not_passwords_and_a_ping_only_health_user(tmp_path):
    directory = tmp_path / "secrets"
    deploy.prepare_secrets(directory)
    conf = (directory / "redis.conf").read_text()
    for plane in ("ap", "cp"):
        password = (directory / f"redis_{plane}_password").read_text().strip()
        assert password not in conf
        assert f"user plab-{plane} on #{hashlib.sha256(password.encode()).hexdigest()}" in conf
    health = next(line for line in conf.splitlines() if line.startswith("user plab-health"))
    assert health.endswith("-@all +ping nopass")
    assert "dir /data" in conf and "appendonly yes" in conf


def test_redis_conf_starts_redis_and_the_health_user_may_only_ping(tmp_path):
    redis_server = shutil.which("redis-server") or "/usr/sbin/redis-server"
    directory = tmp_path / "secrets"
    deploy.prepare_secrets(directory)
    conf = (directory / "redis.conf").read_text().replace("dir /data", f"dir {tmp_path}")
    (tmp_path / "check.conf").write_text(conf)
    sock = tmp_path / "redis.sock"
    server = subprocess.Popen(
        [redis_server, str(tmp_path / "check.conf"), "--port", "0", "--unixsocket", str(sock)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        health = redis.Redis(
            unix_socket_path=str(sock), username="plab-health", password="any", socket_timeout=5
        )
        for _ in range(100):
            if sock.exists():
                break
            time.sleep(0.05)
        assert health.ping() is True
        with pytest.raises(redis.exceptions.NoPermissionError):
            health.get("{plab}:anything")
        ap_password = (directory / "redis_ap_password").read_text().strip()
        ap = redis.Redis(unix_socket_path=str(sock), username="plab-ap", password=ap_password)
        assert ap.set("{plab}:deploy-test", "1") is True
        assert ap.config_get("appendonly") == {"appendonly": "yes"}
    finally:
        server.terminate()
        server.wait(10)


def test_edge_config_uses_service_names_secrets_and_environment_limits():
    config = deploy.edge_config({"PLAB_EDGE_RATE": "7", "PLAB_MAX_BODY": "2m"})
    rendered = config.render()
    assert "server ap:8000" in rendered and "server cp:8000" in rendered
    assert "ssl_certificate /run/secrets/tls_crt;" in rendered
    assert "auth_basic_user_file /var/lib/productionlab/edge/htpasswd;" in rendered
    assert "rate=7r/s" in rendered and "client_max_body_size 2m;" in rendered
    assert "listen 0.0.0.0:8443 ssl;" in rendered
    assert "\nuser " not in rendered  # nginx runs as the container's non-root user


@pytest.mark.parametrize("bad", ["0", "-1", "fast"])
def test_edge_config_refuses_a_broken_rate(bad):
    with pytest.raises(ValueError):
        deploy.edge_config({"PLAB_EDGE_RATE": bad})
