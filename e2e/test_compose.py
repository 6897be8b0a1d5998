"""The Docker compose deployment, brought up for real and driven through the
edge's published loopback port. Tests run in file order: the last ones stop
redis, take the whole deployment down and up, and scale the app plane."""

from __future__ import annotations

import contextlib
import json
import re
import socket
import ssl
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

from e2e.conftest import STATE, Client, Deployment
from e2e.harness import processes_of, scan_for_secrets

SERVICES = ("redis", "cp", "ap", "edge")
SECRET_FILES = (
    "secret_key",
    "token_key",
    "audit_key",
    "audit_checkpoint_key",
    "backup_key",
    "redis_ap_password",
    "redis_cp_password",
    "tls.key",
)


def running(deployment: Deployment) -> dict[str, dict]:
    """service -> docker inspect of each of its running containers."""
    ids = deployment.compose.container_ids()
    by_service: dict[str, dict] = {}
    for info in deployment.daemon.inspect(*ids):
        service = info["Config"]["Labels"]["com.docker.compose.service"]
        by_service.setdefault(service, {})[info["Id"]] = info
    return by_service


# --- the images ----------------------------------------------------------------
@pytest.mark.parametrize("variable", ["PLAB_AP_IMAGE", "PLAB_CP_IMAGE", "PLAB_EDGE_IMAGE"])
def test_images_run_non_root_with_a_healthcheck_and_hold_no_secret(deployment, variable):
    image = deployment.compose.variables[variable]
    config = deployment.daemon.inspect(image)[0]["Config"]
    assert config["User"] and config["User"].split(":")[0] not in ("", "0", "root")
    assert config["Healthcheck"]["Test"]
    secrets = [(deployment.secrets_dir / name).read_bytes().strip() for name in SECRET_FILES]
    key_body = b"".join(
        line.encode()
        for line in (deployment.secrets_dir / "tls.key").read_text().splitlines()
        if not line.startswith("-----")
    )
    assert scan_for_secrets(deployment.daemon, image, [*secrets, key_body]) == []


@pytest.mark.parametrize("variable", ["PLAB_AP_IMAGE", "PLAB_CP_IMAGE"])
def test_app_images_have_no_compiler_installer_or_package_cache(deployment, variable):
    image = deployment.compose.variables[variable]
    probe = deployment.daemon.docker(
        "run",
        "--rm",
        "--read-only",
        "--network=none",
        "--entrypoint",
        "sh",
        image,
        "-c",
        "for tool in gcc cc c++ make; do command -v $tool; done;"
        " ls /opt/venv/bin/pip* /root/.cache /var/cache/apt/archives/*.deb"
        " /var/lib/apt/lists/*_Packages 2>/dev/null; id -u",
        check=False,
    )
    assert probe.stdout.split() == ["10001"], probe.stdout


# --- what a reader of docker-compose.yml must find, checked on the containers --
def test_every_service_is_confined(deployment):
    services = running(deployment)
    assert set(SERVICES) <= set(services)
    for service in SERVICES:
        for info in services[service].values():
            host = info["HostConfig"]
            assert host["ReadonlyRootfs"] is True, service
            assert host["CapDrop"] == ["ALL"], service
            assert not host["CapAdd"], service
            assert "no-new-privileges:true" in host["SecurityOpt"], service
            assert host["RestartPolicy"]["Name"] == "unless-stopped", service
            assert host["Memory"] > 0 and host["PidsLimit"] > 0, service
            assert info["Config"]["Healthcheck"]["Test"], service
            assert info["State"]["Health"]["Status"] == "healthy", service
            user = info["Config"]["User"].split(":")[0]
            assert user not in ("", "0", "root"), service


def test_networks_keep_redis_behind_the_apps(deployment):
    services = running(deployment)
    project = deployment.compose.project
    attached = {
        service: {
            name.removeprefix(f"{project}_")
            for info in containers.values()
            for name in info["NetworkSettings"]["Networks"]
        }
        for service, containers in services.items()
    }
    assert attached["edge"] == {"frontend"}
    assert attached["redis"] == {"backend"}
    assert attached["ap"] == attached["cp"] == {"frontend", "backend"}
    backend = deployment.daemon.inspect(f"{project}_backend")[0]
    assert backend["Internal"] is True
    for network in ("frontend", "backend"):
        subnet = deployment.daemon.inspect(f"{project}_{network}")[0]["IPAM"]["Config"][0]
        assert subnet["Subnet"].startswith(("198.18.", "198.19."))


def test_only_the_edge_is_published_and_only_on_loopback(deployment):
    for service, containers in running(deployment).items():
        for info in containers.values():
            published = [
                binding
                for bindings in (info["NetworkSettings"]["Ports"] or {}).values()
                for binding in (bindings or [])
            ]
            if service == "edge":
                assert {b["HostIp"] for b in published} == {"127.0.0.1"}
                assert {int(b["HostPort"]) for b in published} == {
                    deployment.https_port,
                    deployment.http_port,
                }
            else:
                assert published == [], service
                assert not info["HostConfig"]["PortBindings"], service


def test_redis_is_unreachable_from_the_edge(deployment):
    compose = deployment.compose
    redis_info = deployment.daemon.inspect(compose.container("redis"))[0]
    (redis_ip,) = [n["IPAddress"] for n in redis_info["NetworkSettings"]["Networks"].values()]
    probe = f"exec 3<>/dev/tcp/{redis_ip}/6379"
    # The control: the control plane reaches redis at that address.
    assert compose.exec("cp", "bash", "-c", probe, check=False).returncode == 0
    assert compose.exec("edge", "getent", "hosts", "redis", check=False).returncode != 0
    blocked = compose.exec("edge", "timeout", "5", "bash", "-c", probe, check=False)
    assert blocked.returncode != 0


REDIS_TLS_PROBE = """
import sys, redis
password = open("/run/secrets/redis_cp_password").read().strip()
common = dict(host="redis", port=6379, username="plab-cp", password=password, socket_timeout=5)
tls = dict(ssl=True, ssl_ca_certs="/run/secrets/redis_ca_crt", ssl_cert_reqs="required")
def refused(**options):
    try:
        redis.Redis(**common, **options).ping()
    except redis.RedisError:
        return True
    return False
assert redis.Redis(**common, **tls, ssl_certfile="/run/secrets/redis_cp_crt",
                   ssl_keyfile="/run/secrets/redis_cp_key").ping() is True
assert refused(), "plain TCP answered"
assert refused(**tls), "TLS without a client certificate answered"
print("tls-only")
"""


def test_redis_speaks_tls_only_with_a_client_certificate(deployment):
    """Inside compose: the control plane's certificate gets a PONG over TLS; plain
    TCP and TLS without a client certificate are refused (issue 15, item 6)."""
    result = deployment.compose.exec("cp", "python", "-c", REDIS_TLS_PROBE, check=False)
    assert result.returncode == 0 and "tls-only" in result.stdout, result.stderr
    conf = deployment.compose.exec("redis", "cat", "/run/secrets/redis_conf").stdout
    assert "\nport 0\n" in conf and "tls-auth-clients yes" in conf


def test_every_process_is_non_root_without_capabilities(deployment):
    for service, containers in running(deployment).items():
        for container_id in containers:
            processes = list(processes_of(container_id))
            assert processes, f"no process found for {service}"
            for pid, status in processes:
                uids = set(status["Uid"].split())
                assert "0" not in uids, f"{service} pid {pid} runs as root: {status['Name']}"
                assert int(status["CapEff"], 16) == 0, f"{service} pid {pid} has capabilities"
                assert status["NoNewPrivs"] == "1", f"{service} pid {pid}"


@pytest.mark.parametrize("service", SERVICES)
def test_root_filesystem_is_read_only(deployment, service):
    result = deployment.compose.exec(service, "touch", "/plab-write-probe", check=False)
    assert result.returncode != 0
    assert "Read-only file system" in result.stderr


# --- the contract through the edge --------------------------------------------
@pytest.mark.filterwarnings("ignore:ssl.TLSVersion.TLSv1_1 is deprecated:DeprecationWarning")
def test_tls_only_with_the_generated_certificate(deployment):
    health = deployment.anonymous().get("/health")
    assert health.status_code == 200
    assert health.json() == {"status": "ok"}
    assert "max-age" in health.headers["Strict-Transport-Security"]
    assert "nginx/" not in health.headers.get("Server", "")
    redirect = requests.get(
        f"http://127.0.0.1:{deployment.http_port}/read/k", allow_redirects=False, timeout=10
    )
    assert redirect.status_code == 301
    assert redirect.headers["Location"].startswith("https://")
    with pytest.raises(requests.exceptions.SSLError):
        requests.get(deployment.url + "/health", timeout=10)  # not a publicly trusted cert
    old = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    old.check_hostname = False
    old.verify_mode = ssl.CERT_NONE
    old.maximum_version = ssl.TLSVersion.TLSv1_1
    old.minimum_version = ssl.TLSVersion.MINIMUM_SUPPORTED
    with (
        socket.create_connection(("127.0.0.1", deployment.https_port), timeout=10) as raw,
        pytest.raises(ssl.SSLError),
    ):
        old.wrap_socket(raw)


def test_data_routes_with_users_grants_and_errors(deployment):
    admin = deployment.admin()
    writer = deployment.new_user("e2e-writer", "writer", ["e2e-"])

    first = writer.post("/write/e2e-key/hello")
    assert first.status_code == 201, first.text
    assert first.json()["key"] == "e2e-key"
    assert writer.post("/write/e2e-key/again").status_code == 200
    read = writer.get("/read/e2e-key")
    assert read.status_code == 200
    assert read.json()["value"] == "again"
    assert writer.get("/read/e2e-absent").status_code == 404

    put = writer.put("/v1/kv/e2e-doc", data=b"v1")
    assert put.status_code in (200, 201)
    etag = writer.get("/v1/kv/e2e-doc").headers["ETag"]
    assert writer.put("/v1/kv/e2e-doc", data=b"v2", headers={"If-Match": '"nope"'}).status_code == (
        412
    )
    assert writer.put("/v1/kv/e2e-doc", data=b"v2", headers={"If-Match": etag}).status_code == 200
    assert writer.get("/v1/kv/e2e-doc").content == b"v2"
    listing = writer.get("/v1/kv?prefix=e2e-")
    assert set(listing.json()["keys"]) >= {"e2e-key", "e2e-doc"}

    assert writer.post("/write/other-key/x").status_code == 403
    anonymous = deployment.anonymous().get("/read/e2e-key")
    assert anonymous.status_code == 401
    assert "WWW-Authenticate" in anonymous.headers
    assert anonymous.json()["error"]["code"] == "unauthorized"
    bad = writer.get("/read/bad.key")
    assert bad.status_code == 400
    assert bad.json()["error"]["code"] in ("bad_request", "invalid_key")
    assert writer.get("/admin/users").status_code == 403
    assert deployment.anonymous().get("/metrics").status_code == 404
    users = admin.get("/admin/users")
    assert users.status_code == 200
    assert "$argon2" not in users.text and "{SSHA}" not in users.text


def test_watches_wake_on_a_write_and_on_an_expiry(deployment):
    """Watches through the deployment's edge: the change channel and the
    expired-key events reach the app plane under compose's redis.conf and ACL."""
    watcher = deployment.new_user("e2e-watcher", "writer", ["e2e-w"])
    watcher.timeout = 90
    for key, write in (("e2e-wkey", "/write/e2e-wkey/two"), ("e2e-wttl", None)):
        first = watcher.post(f"/write/{key}/one" + ("?ttl=2" if write is None else ""))
        assert first.status_code == 201, first.text
        version = first.json()["version"]
        with ThreadPoolExecutor(max_workers=1) as pool:
            waiting = pool.submit(watcher.get, f"/v1/watch/{key}?index={version}&wait=60")
            if write is not None:
                time.sleep(1)  # let the watch park; a write before it answers at once too
                assert watcher.post(write).status_code == 200
            answer = waiting.result(timeout=90)
        assert answer.status_code == 200, answer.text
        body = answer.json()
        assert body["changed"] is True and body["index"] > version
        assert body["exists"] is (write is not None)


def test_limits_body_size_and_edge_rate(deployment):
    admin = deployment.admin()
    too_big = admin.put("/v1/kv/e2e-big", data=b"x" * (1024 * 1024 + 1))
    assert too_big.status_code == 413
    assert too_big.json()["error"]["code"] == "payload_too_large"
    assert admin.get("/v1/kv/e2e-big").status_code == 404

    impatient = deployment.anonymous(patient=False)
    statuses = [impatient.get("/admin/users") for _ in range(60)]
    limited = [r for r in statuses if r.status_code == 429]
    assert limited, {r.status_code for r in statuses}
    assert limited[0].headers["Retry-After"]
    assert limited[0].json()["error"]["code"] == "rate_limited"
    assert {r.status_code for r in statuses} <= {401, 429}


# --- operating it -------------------------------------------------------------
def test_check_prod_in_the_control_plane_finds_only_the_self_signed_certificate(deployment):
    result = deployment.compose.exec(
        "cp", "python", "-m", "productionlab", "check-prod", check=False
    )
    findings = result.stdout.strip().splitlines()
    assert len(findings) == 1, result.stdout + result.stderr
    assert "self-signed" in findings[0]


def test_encrypted_backup_lands_in_the_backups_volume(deployment):
    compose = deployment.compose
    made = compose.exec("cp", "python", "-m", "productionlab", "backup", "create", "--quiet")
    assert made.returncode == 0, made.stderr
    listing = compose.exec("cp", "ls", "/var/lib/productionlab/backups").stdout.split()
    assert listing, made.stdout
    verified = compose.exec(
        "cp",
        "python",
        "-m",
        "productionlab",
        "backup",
        "verify",
        f"/var/lib/productionlab/backups/{listing[-1]}",
    )
    assert verified.returncode == 0, verified.stdout + verified.stderr


# --- faults and lifecycle -----------------------------------------------------
def test_console_signs_in_and_drills_in_the_control_plane_image(deployment):
    """The operator console in compose: its edge location (a form login, no edge
    Basic auth, the control plane's nonce CSP passed through) and a restore drill
    on the redis-server the control-plane image carries."""
    csrf = re.compile(r'name="csrf" value="([^"]+)"')
    with requests.Session() as browser:
        browser.trust_env = False
        browser.verify = str(deployment.cert)
        form = browser.get(deployment.url + "/console/login", timeout=20)
        assert form.status_code == 200, form.text
        assert "'nonce-" in form.headers["Content-Security-Policy"]
        keys = browser.post(
            deployment.url + "/console/login",
            data={
                "csrf": csrf.search(form.text).group(1),
                "name": "admin",
                "password": deployment.admin_password(),
            },
            timeout=20,
        )
        assert keys.status_code == 200 and keys.url.endswith("/console/keys"), keys.text
        drill = browser.post(
            deployment.url + "/console/backups/drill",
            data={"csrf": csrf.search(keys.text).group(1)},
            timeout=60,
        )
        assert drill.status_code == 200 and ">PASS</p>" in drill.text, drill.text
        status = browser.get(deployment.url + "/console/status", timeout=30)
        assert status.status_code == 200 and "Ready: redis answers" in status.text


@contextlib.contextmanager
def value_kept_across(deployment: Deployment, key: str, value: str) -> Iterator[Client]:
    """Writes ``key`` = ``value`` (as the admin, who is yielded) before the block;
    after it, waits for redis to be healthy and the stack ready again, and checks
    that the value is still there."""
    admin = deployment.admin()
    assert admin.post(f"/write/{key}/{value}").status_code in (200, 201)
    yield admin
    deployment.compose.wait_healthy("redis")
    deployment.wait_for("/ready", 200)
    assert admin.get(f"/read/{key}").json()["value"] == value


def test_ready_is_503_while_redis_is_stopped_and_200_when_it_returns(deployment):
    with value_kept_across(deployment, "e2e-outage", "before") as admin:
        deployment.compose("stop", "redis")
        try:
            deployment.wait_for("/ready", 503, timeout=60)
            ready = deployment.anonymous().get("/ready")
            assert ready.status_code == 503
            assert ready.headers["Retry-After"]
            assert deployment.anonymous().get("/health").status_code == 200
            failed = admin.post("/write/e2e-outage/during")
            assert failed.status_code == 503
            assert failed.headers["Retry-After"]
        finally:
            deployment.compose("start", "redis")


def test_data_survives_restart_of_redis(deployment):
    with value_kept_across(deployment, "e2e-restart", "kept"):
        deployment.compose("restart", "redis")


def test_data_and_users_survive_down_and_up_with_the_volumes_kept(deployment):
    password = deployment.admin_password()
    admin = deployment.admin()
    assert admin.post("/write/e2e-downup/kept").status_code in (200, 201)
    deployment.save_logs("before-down")
    deployment.compose("down", "--timeout", "20")
    assert deployment.compose.container_ids(all_states=True) == []
    deployment.up()
    assert deployment.admin_password() == password
    assert admin.get("/read/e2e-downup").json()["value"] == "kept"
    assert admin.get("/read/e2e-restart").json()["value"] == "kept"
    assert admin.get("/admin/users/e2e-writer").status_code == 200
    state = deployment.compose.exec("cp", "ls", "-l", f"{STATE}/secrets/admin.password").stdout
    assert state.startswith("-rw-------")


def test_scaled_app_plane_serves_from_every_replica(deployment):
    compose = deployment.compose
    compose("up", "--detach", "--no-build", "--scale", "ap=2")
    replicas = compose.wait_healthy("ap", count=2)
    assert len(replicas) == 2
    addresses = {
        network["IPAddress"]
        for info in deployment.daemon.inspect(*replicas)
        for name, network in info["NetworkSettings"]["Networks"].items()
        if name.endswith("_frontend")
    }
    admin = deployment.admin()
    seen: set[str] = set()
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline and not addresses <= seen:
        for _ in range(10):
            assert admin.get("/read/e2e-downup").status_code == 200
        time.sleep(1.5)  # the edge's access log is flushed every second
        for line in compose("logs", "--no-color", "edge").stdout.splitlines():
            _, _, text = line.partition("|")
            if '"route":"/read"' in text:
                upstream = json.loads(text.strip())["upstream"]
                seen.update(a.split(":")[0] for a in upstream.split(", "))
    assert addresses <= seen, (addresses, seen)
