"""``productionlab tls rotate``: a new certificate is served after a graceful
reload, with zero failed requests under steady load; a bad pair changes
nothing; the compose edge's entry script picks up rewritten secret files."""

from __future__ import annotations

import datetime
import hashlib
import http.client
import os
import shutil
import signal
import ssl
import subprocess
import threading
import time
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes

from productionlab.configfiles import EdgeConfig
from productionlab.secretgen import Purpose, build_certificate, ensure_tls, write_pair
from productionlab.supervisor import free_port
from productionlab.tlsrotate import RotateError, validate
from tests.conftest import run_cli

CHECKOUT = Path(__file__).resolve().parent.parent


def rotate(stack_state: Path, *args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PLAB_")}
    env["PLAB_STATE_DIR"] = str(stack_state)
    return run_cli("tls", "rotate", *args, env=env)


def _fp(cert: x509.Certificate) -> str:
    return cert.fingerprint(hashes.SHA256()).hex()


def served(host: str, port: int, context: ssl.SSLContext, path: str = "/ready") -> tuple[int, str]:
    """One request on a new connection: (status, sha256 of the certificate served)."""
    connection = http.client.HTTPSConnection(host, port, context=context, timeout=30)
    try:
        connection.connect()
        der = connection.sock.getpeercert(binary_form=True)
        connection.request("GET", path)
        response = connection.getresponse()
        response.read()
        return response.status, hashlib.sha256(der).hexdigest()
    finally:
        connection.close()


def trusting(*certs: Path, tmp: Path) -> ssl.SSLContext:
    bundle = tmp / f"bundle-{len(list(tmp.glob('bundle-*')))}.pem"
    bundle.write_bytes(b"".join(c.read_bytes() for c in certs))
    context = ssl.create_default_context(cafile=str(bundle))
    return context


def new_pair(tmp: Path, name: str, days: int = 30) -> tuple[Path, Path]:
    return ensure_tls(tmp / name, days=days)


def expired_pair(tmp: Path) -> tuple[Path, Path]:
    """A certificate that expired yesterday (the generator's one builder, back-dated)."""
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.UTC)
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    valid = (now - datetime.timedelta(days=10), now - datetime.timedelta(days=1))
    cert_path, key_path = tmp / "expired.crt", tmp / "expired.key"
    write_pair(cert_path, key_path, build_certificate(name, key, valid, Purpose()), key)
    return cert_path, key_path


@pytest.fixture(scope="module")
def rotating_stack():
    from tests.conftest import start_stack, stop_stack

    stack = start_stack(edge_rate=5000, edge_burst=5000)
    yield stack
    stop_stack(stack)


def test_rotation_under_load_fails_no_request_and_serves_the_new_certificate(
    rotating_stack, tmp_path
):
    stack = rotating_stack
    old_cert = tmp_path / "old.crt"
    shutil.copy(stack.tls_cert, old_cert)
    cert, key = new_pair(tmp_path, "new")
    old_fp, new_fp = _fp_path(old_cert), _fp_path(cert)
    assert old_fp != new_fp
    context = trusting(old_cert, cert, tmp=tmp_path)
    host, port = stack.config.bind, stack.config.https_port
    stop = threading.Event()
    results: list[list[tuple[int | str, str]]] = [[] for _ in range(4)]

    def client(out: list) -> None:
        while not stop.is_set() and len(out) < 5000:
            try:
                out.append(served(host, port, context))
            except Exception as exc:  # every failure is counted
                out.append((f"{type(exc).__name__}: {exc}", ""))

    threads = [threading.Thread(target=client, args=(r,), daemon=True) for r in results]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + 120
    while min(len(r) for r in results) < 5 and time.monotonic() < deadline:
        time.sleep(0.1)
    result = rotate(stack.state, "--cert", str(cert), "--key", str(key))
    assert result.returncode == 0, result.stderr
    assert new_fp in result.stdout and "reloading gracefully" in result.stdout
    # Keep the load on until every client has been served the new certificate a few times.
    while time.monotonic() < deadline:
        if all(sum(1 for _, fp in r if fp == new_fp) >= 5 for r in results):
            break
        time.sleep(0.2)
    stop.set()
    for thread in threads:
        thread.join(60)
    flat = [item for r in results for item in r]
    failed = [status for status, _ in flat if status != 200]
    print(f"rotation under load: {len(flat)} requests, {len(failed)} failed")
    assert failed == [], failed[:5]
    assert {fp for _, fp in flat} == {old_fp, new_fp}
    assert all(sum(1 for _, fp in r if fp == new_fp) >= 5 for r in results)
    assert _fp_path(stack.tls_cert) == new_fp
    assert (stack.tls_dir / "tls.crt.previous").read_bytes() == old_cert.read_bytes()
    assert stack.components["nginx"].alive


def _fp_path(path: Path) -> str:
    return _fp(x509.load_pem_x509_certificate(path.read_bytes()))


def test_generated_certificate_keeps_the_names_and_is_served(rotating_stack, tmp_path):
    stack = rotating_stack
    before = _fp_path(stack.tls_cert)
    result = rotate(stack.state, "--days", "90")
    assert result.returncode == 0, result.stderr
    after = _fp_path(stack.tls_cert)
    assert after != before and after in result.stdout
    cert = x509.load_pem_x509_certificate(stack.tls_cert.read_bytes())
    names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "localhost" in names.get_values_for_type(x509.DNSName)
    context = trusting(stack.tls_cert, tmp=tmp_path)
    deadline = time.monotonic() + 60
    status, fp = 0, ""
    while fp != after and time.monotonic() < deadline:
        try:
            status, fp = served(stack.config.bind, stack.config.https_port, context)
        except ssl.SSLCertVerificationError:  # the old certificate, until nginx reloads
            time.sleep(0.2)
    assert (status, fp) == (200, after)


@pytest.mark.parametrize("problem", ["mismatch", "expired", "garbage"])
def test_a_bad_pair_changes_nothing(rotating_stack, tmp_path, problem):
    stack = rotating_stack
    cert, key = new_pair(tmp_path, "a")
    if problem == "mismatch":
        key = new_pair(tmp_path, "b")[1]
        expected = "the key does not belong to the certificate"
    elif problem == "expired":
        cert, key = expired_pair(tmp_path)
        expected = "the certificate expired on"
    else:
        cert.write_text("not a certificate\n")
        expected = "is not a PEM X.509 certificate"
    before = (stack.tls_cert.read_bytes(), (stack.tls_dir / "tls.key").read_bytes())
    pid_before = (stack.nginx_dir / "nginx.pid").read_text()
    result = rotate(stack.state, "--cert", str(cert), "--key", str(key))
    assert result.returncode == 1
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith("productionlab: tls rotate: ") and expected in line
    assert (stack.tls_cert.read_bytes(), (stack.tls_dir / "tls.key").read_bytes()) == before
    assert (stack.nginx_dir / "nginx.pid").read_text() == pid_before


def test_validate_refuses_a_certificate_not_yet_valid(tmp_path):
    cert, key = new_pair(tmp_path, "a")
    past = datetime.datetime.now(datetime.UTC) - datetime.timedelta(days=1)
    with pytest.raises(RotateError, match="not valid before"):
        validate(cert.read_bytes(), key.read_bytes(), now=past)


def test_compose_edge_script_reloads_on_rewritten_secret_files(rotating_stack, tmp_path):
    """docker/edge/edge.sh (the edge container's PID 1), run here against real nginx:
    `tls rotate --dir` rewrites the secret files in place and the script reloads."""
    stack = rotating_stack
    secrets = tmp_path / "secrets"
    ensure_tls(secrets)
    os.chmod(tmp_path, 0o755)
    os.chmod(secrets, 0o755)
    for name in ("tls.crt", "tls.key"):
        os.chmod(secrets / name, 0o444)  # as `make secrets` leaves them
    inode = (secrets / "tls.crt").stat().st_ino
    https = free_port(stack.config.bind)
    temp = tmp_path / "nginx-temp"
    for sub in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"):
        (temp / sub).mkdir(parents=True)
    conf = tmp_path / "nginx.conf"
    conf.write_text(
        EdgeConfig(
            ap_servers=[f"{stack.config.bind}:{p}" for p in stack.config.ap_ports],
            cp_server=f"{stack.config.bind}:{stack.config.cp_port}",
            tls_cert=str(secrets / "tls.crt"),
            tls_key=str(secrets / "tls.key"),
            htpasswd=str(stack.htpasswd),
            https_listen=f"{stack.config.bind}:{https}",
            http_listen=f"{stack.config.bind}:{free_port(stack.config.bind)}",
            public_https_port=https,
            pid_path=str(tmp_path / "nginx.pid"),
            temp_dir=str(temp),
            access_log=str(tmp_path / "access.log"),
            worker_processes="1",
        ).render()
    )
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("PLAB_")},
        "PLAB_EDGE_CONF": str(conf),
        "PLAB_AP_HOST": "localhost",
        "PLAB_EDGE_RESOLVE_SECONDS": "1",
        "PLAB_EDGE_TLS_FILES": f"{secrets / 'tls.crt'} {secrets / 'tls.key'}",
        "PATH": os.environ.get("PATH", "") + ":/usr/sbin:/sbin",
    }
    edge = subprocess.Popen(
        ["sh", str(CHECKOUT / "docker" / "edge" / "edge.sh")],
        env=env,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        old_fp = _fp_path(secrets / "tls.crt")
        cert, key = new_pair(tmp_path, "new")
        new_fp = _fp_path(cert)
        context = trusting(secrets / "tls.crt", cert, tmp=tmp_path)
        deadline = time.monotonic() + 60
        first = None
        while first is None and time.monotonic() < deadline:
            try:
                first = served(stack.config.bind, https, context)
            except OSError:
                time.sleep(0.2)
        assert first == (200, old_fp)
        result = run_cli(
            "tls", "rotate", "--dir", str(secrets), "--cert", str(cert), "--key", str(key)
        )
        assert result.returncode == 0, result.stderr
        assert (secrets / "tls.crt").stat().st_ino == inode  # in place: bind mounts see it
        assert {(secrets / n).stat().st_mode & 0o777 for n in ("tls.crt", "tls.key")} == {0o444}
        deadline = time.monotonic() + 60
        seen = old_fp
        while seen != new_fp and time.monotonic() < deadline:
            time.sleep(0.3)
            status, seen = served(stack.config.bind, https, context)
            assert status == 200
        assert seen == new_fp
    finally:
        os.killpg(edge.pid, signal.SIGTERM)
        try:
            _, err = edge.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(edge.pid, signal.SIGKILL)
            _, err = edge.communicate()
    assert "TLS certificate or key changed; reloading nginx" in err
