"""The compose preparation steps: secrets, redis.conf and the edge's nginx.conf,
and the structure of docker-compose.yml: each container gets only the secrets it
uses, and only the edge's side can write nginx.conf. (The deployment itself is
proven by `make e2e`.)"""

from __future__ import annotations

import hashlib
import shutil
import stat
import subprocess
import time
from pathlib import Path

import pytest
import redis
import yaml

from productionlab import deploy
from productionlab.settings import PLANE_SECRETS, ConfigError, secret_problem
from productionlab.store.layout import shard_for
from productionlab.token_keys import SigningKey
from tests.conftest import state_dir

COMPOSE_FILE = Path(__file__).parent.parent / "docker-compose.yml"


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
    # every file compose mounts as a secret is readable by the containers' users
    for secret in yaml.safe_load(COMPOSE_FILE.read_text())["secrets"].values():
        name = Path(secret["file"].rsplit("/", 1)[-1])
        assert stat.S_IMODE((directory / name).stat().st_mode) == 0o444, name
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
        # the unix socket only (compose's TLS port is proven in tests/test_redis_tls.py)
        [redis_server, str(tmp_path / "check.conf"), "--tls-port", "0", "--unixsocket", str(sock)],
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
        # The app plane writes a virtual shard's item (store/layout.py names it) and
        # only appends to that shard's audit chain.
        place = shard_for("deploy-test")
        assert ap.hset(place.item("deploy-test"), "v", "1") == 1
        log, meta = place.audit
        assert ap.rpush(log, "entry") == 1
        for refused in (lambda: ap.delete(log), lambda: ap.hset(meta, "seq", "0")):
            with pytest.raises(redis.exceptions.NoPermissionError):
                refused()
        with pytest.raises(redis.exceptions.NoPermissionError):
            ap.hset("{plab}:user:admin", "role", "admin")  # the app plane reads users only
        # Nor the previous layout's KV keys: nothing of this release writes them, and
        # an old app plane left running must not write where no plane reads.
        for name in ("{plab}:kv:deploy-test", "{plab}:usage:someone"):
            with pytest.raises(redis.exceptions.NoPermissionError):
                ap.hset(name, "v", "1")
        with pytest.raises(redis.exceptions.NoPermissionError):
            ap.incr("{plab}:kv-version")
        assert ap.config_get("appendonly") == {"appendonly": "yes"}
    finally:
        server.terminate()
        server.wait(10)


def test_edge_config_uses_service_names_secrets_and_environment_limits():
    config = deploy.edge_config({"PLAB_EDGE_RATE": "7", "PLAB_MAX_BODY": "2m"})
    rendered = config.render()
    assert "server ap:8000" in rendered and "server cp:8000" in rendered
    assert "ssl_certificate /run/secrets/tls_crt;" in rendered
    assert "auth_basic_user_file /var/lib/productionlab/htpasswd/htpasswd;" in rendered
    assert "rate=7r/s" in rendered and "client_max_body_size 2m;" in rendered
    assert "listen 0.0.0.0:8443 ssl;" in rendered
    assert "\nuser " not in rendered  # nginx runs as the container's non-root user


@pytest.mark.parametrize("bad", ["0", "-1", "fast"])
def test_edge_config_refuses_a_broken_rate(bad):
    with pytest.raises(ConfigError, match="PLAB_EDGE_RATE"):
        deploy.edge_config({"PLAB_EDGE_RATE": bad})


def test_secrets_include_the_token_public_key_derived_from_the_signing_key(tmp_path):
    directory = tmp_path / "secrets"
    deploy.prepare_secrets(directory)
    private = (directory / "token_key").read_text().strip()
    public = (directory / "token_public_key").read_text().strip()
    assert public == SigningKey(private).public_hex and private not in public
    # no rotation in progress: the previous public key is an empty file compose can mount
    assert (directory / "token_public_key.previous").read_text() == ""


def compose() -> dict:
    return yaml.safe_load(COMPOSE_FILE.read_text())


# *_FILE settings that name a data file, not a secret.
DATA_FILES = {"PLAB_AUDIT_CHECKPOINT_FILE"}


def secret_env(service: dict) -> dict[str, str]:
    return {
        k: v
        for k, v in service["environment"].items()
        if k.endswith("_FILE") and k not in DATA_FILES
    }


def test_each_container_gets_only_the_secrets_it_uses():
    services = compose()["services"]
    ap, cp, edge = services["ap"], services["cp"], services["edge"]
    assert set(ap["secrets"]).isdisjoint(
        {"token_key", "backup_key", "audit_key", "audit_checkpoint_key", "redis_cp_password"}
    )
    assert "token_public_key" in ap["secrets"]
    assert {"token_key", "backup_key", "audit_key", "audit_checkpoint_key"} <= set(cp["secrets"])
    assert "redis_ap_password" not in cp["secrets"]
    assert set(edge["secrets"]) == {"tls_crt", "tls_key"}
    assert set(services["redis"]["secrets"]) == {
        "redis_conf",
        "redis_ca_crt",
        "redis_server_crt",
        "redis_server_key",
        "redis_health_crt",
        "redis_health_key",
    }
    assert "redis_ap_key" not in cp["secrets"] and "redis_cp_key" not in ap["secrets"]
    assert not any("redis_ca_key" in s.get("secrets", []) for s in services.values())
    assert "secrets" not in services["edge-config"]
    for name, service in (("ap", ap), ("cp", cp)):
        files = secret_env(service)
        # every secret a plane is told about is mounted, and every mounted one is used
        mounted = {f"/run/secrets/{s}" for s in service["secrets"]}
        assert set(files.values()) <= mounted, name
        assert {v for v in files.values() if v.startswith("/run/secrets/")} | (
            {"/run/secrets/tls_crt"} if name == "cp" else set()
        ) == mounted, name
        wanted = {f"PLAB_{s.upper()}_FILE" for s in PLANE_SECRETS[name]}
        assert wanted <= set(files), name
    assert "PLAB_TOKEN_KEY_FILE" not in secret_env(ap)
    assert "PLAB_BACKUP_KEY_FILE" not in secret_env(ap)


def volumes_of(service: dict) -> dict[str, tuple[str, bool]]:
    """volume name -> (mount point, read-only)."""
    found = {}
    for entry in service.get("volumes", []):
        parts = entry.split(":")
        found[parts[0]] = (parts[1], len(parts) > 2 and "ro" in parts[2].split(","))
    return found


def test_only_the_edge_side_can_write_nginx_conf_and_cp_writes_only_the_htpasswd():
    services = compose()["services"]
    writers = {
        name: volumes_of(service)
        for name, service in services.items()
        if "edge-conf" in volumes_of(service)
    }
    assert set(writers) == {"edge-config", "edge"}
    assert writers["edge"]["edge-conf"][1] is True  # read-only in the edge
    assert writers["edge-config"]["edge-conf"][1] is False
    mounts = {name: volumes_of(service) for name, service in services.items()}
    assert mounts["cp"]["edge-htpasswd"] == ("/var/lib/productionlab/htpasswd", False)
    assert mounts["edge"]["edge-htpasswd"] == ("/var/lib/productionlab/htpasswd", True)
    assert [n for n in mounts if "edge-htpasswd" in mounts[n]] == ["cp", "edge"]
    htpasswd = services["cp"]["environment"]["PLAB_HTPASSWD"]
    assert htpasswd == str(deploy.HTPASSWD)
    assert Path(htpasswd).parent == Path(mounts["cp"]["edge-htpasswd"][0])
    assert deploy.EDGE_CONF.parent == Path(mounts["edge-config"]["edge-conf"][0])
    assert f"auth_basic_user_file {deploy.HTPASSWD};" in deploy.edge_config({}).render()
    assert {"edge-conf", "edge-htpasswd"} <= set(compose()["volumes"])


def test_the_edge_reloads_nginx_when_the_htpasswd_changes():
    script = (COMPOSE_FILE.parent / "docker" / "edge" / "edge.sh").read_text()
    assert str(deploy.HTPASSWD) in script
    watch = script[script.index("users_file()") :]
    assert 'kill -HUP "$master"' in watch.split("htpasswd changed")[1]


def test_the_edge_script_reloads_a_real_nginx_when_the_htpasswd_changes():
    """docker/edge/edge.sh (the edge container's PID 1) run against the machine's
    nginx: rewriting the htpasswd (as the control plane does, atomically) makes it
    reload nginx, which keeps answering."""
    tmp_path = state_dir("plab-edge-sh-")  # traversable by nginx's unprivileged workers
    try:
        run_edge_script(tmp_path)
    finally:
        shutil.rmtree(tmp_path, ignore_errors=True)


def run_edge_script(tmp_path: Path) -> None:
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    port = free_port()
    htpasswd = tmp_path / "htpasswd"
    htpasswd.write_text("alice:{SHA}x\n")
    htpasswd.chmod(0o644)
    for sub in ("body", "proxy", "fastcgi", "uwsgi", "scgi"):
        (tmp_path / sub).mkdir()
    conf = tmp_path / "nginx.conf"
    conf.write_text(
        f"""daemon off;
master_process on;
worker_processes 1;
pid {tmp_path}/nginx.pid;
error_log stderr notice;
events {{ worker_connections 64; }}
http {{
  client_body_temp_path {tmp_path}/body;
  proxy_temp_path {tmp_path}/proxy;
  fastcgi_temp_path {tmp_path}/fastcgi;
  uwsgi_temp_path {tmp_path}/uwsgi;
  scgi_temp_path {tmp_path}/scgi;
  access_log off;
  server {{
    listen 127.0.0.1:{port};
    location / {{ return 204; }}
  }}
}}
"""
    )
    script = COMPOSE_FILE.parent / "docker" / "edge" / "edge.sh"
    log = tmp_path / "edge.log"
    env = {
        "PATH": f"{Path(nginx).parent}:/usr/sbin:/usr/bin:/sbin:/bin",
        "PLAB_EDGE_CONF": str(conf),
        "PLAB_EDGE_HTPASSWD": str(htpasswd),
        "PLAB_EDGE_RESOLVE_SECONDS": "1",
        "PLAB_AP_HOST": "localhost",
    }
    with open(log, "wb") as output:
        edge = subprocess.Popen(["sh", str(script)], env=env, stdout=output, stderr=output)
    try:
        wait_for(lambda: _answers(port) == 204, log)
        before = log.read_text().count("reconfiguring")
        body = "alice:{SHA}y\n"
        temp = tmp_path / ".htpasswd.new"
        temp.write_text(body)
        temp.chmod(0o644)
        temp.replace(htpasswd)
        wait_for(lambda: "htpasswd changed; reloading nginx" in log.read_text(), log)
        wait_for(lambda: log.read_text().count("reconfiguring") > before, log)
        assert _answers(port) == 204  # reloaded and still serving
    finally:
        edge.terminate()
        edge.wait(30)


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _answers(port: int) -> int | None:
    import http.client

    try:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        connection.request("GET", "/")
        return connection.getresponse().status
    except OSError:
        return None


def wait_for(condition, log: Path, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out; edge log:\n{log.read_text()[-3000:]}")
        time.sleep(0.2)
