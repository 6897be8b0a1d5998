"""``productionlab check-prod``: one line per finding and a non-zero exit, or a
clean pass on a configuration fit for production."""

from __future__ import annotations

import datetime
import subprocess
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from productionlab.redis_process import RedisProcess
from tests.conftest import run_cli


def check_prod(stack, env: dict | None = None, drop: tuple[str, ...] = ()):
    """`productionlab check-prod` with the control plane's environment, ``env`` over
    it, and the variables in ``drop`` taken out."""
    environment = {**stack.plane_env("cp"), **(env or {})}
    for name in drop:
        environment.pop(name)
    return run_cli("check-prod", env=environment)


def ca_signed_cert(directory: Path, days: float) -> Path:
    """A leaf certificate issued by a throwaway CA (so not self-signed)."""
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Test Root CA")])
    leaf_key = ec.generate_private_key(ec.SECP256R1())
    leaf = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "kv.example.test")]))
        .issuer_name(ca_name)
        .public_key(leaf_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=days))
        .sign(ca_key, hashes.SHA256())
    )
    path = directory / f"leaf-{days}.crt"
    path.write_bytes(leaf.public_bytes(serialization.Encoding.PEM))
    return path


def production(stack, tmp_path: Path, **extra: str) -> dict:
    env = {"PLAB_ENV": "production", "PLAB_TLS_CERT": str(ca_signed_cert(tmp_path, 90))}
    env.update(extra)
    return env


def lines(result: subprocess.CompletedProcess) -> list[str]:
    return result.stdout.strip().splitlines()


def test_clean_production_configuration_passes(stack, tmp_path):
    result = check_prod(stack, production(stack, tmp_path))
    assert result.returncode == 0, result.stdout + result.stderr
    assert lines(result) == ["check-prod: no findings; fit for production"]


def test_development_is_a_finding(stack):
    result = check_prod(stack)
    assert result.returncode == 1
    assert "env: PLAB_ENV is 'development', not 'production'" in lines(result)


def test_every_finding_is_one_line(stack, tmp_path):
    weak = tmp_path / "weak"
    weak.write_text("changeme")
    result = check_prod(
        stack,
        {
            "PLAB_ENV": "production",
            "PLAB_DEBUG": "1",
            "PLAB_RATE_LIMITS": "off",
            "PLAB_EDGE_RATE": "0",
            "PLAB_SECRET_KEY_FILE": str(weak),
            "PLAB_TLS_CERT": str(tmp_path / "missing.crt"),
        },
    )
    assert result.returncode == 1
    found = lines(result)
    expected = [
        "debug: PLAB_DEBUG is on",
        "secret: PLAB_SECRET_KEY is a default or example value",
        f"tls: certificate {tmp_path / 'missing.crt'} is missing (set PLAB_TLS_CERT)",
        "rate limits: PLAB_RATE_LIMITS is off",
        "rate limits: PLAB_EDGE_RATE='0' disables or breaks the edge limit",
    ]
    for line in expected:
        assert line in found
    assert len(found) == len(expected)


def test_short_and_shared_secrets(stack, tmp_path):
    short, shared = tmp_path / "short", tmp_path / "shared"
    short.write_text("a1b2c3d4e5f6")
    shared.write_text(stack.secret("secret_key"))
    result = check_prod(
        stack,
        production(
            stack, tmp_path, PLAB_TOKEN_KEY_FILE=str(short), PLAB_AUDIT_KEY_FILE=str(shared)
        ),
    )
    assert result.returncode == 1
    found = lines(result)
    assert any(line.startswith("secret: PLAB_TOKEN_KEY is weak") for line in found)
    assert "secret: two secrets share one value; generate each separately" in found


def test_self_signed_certificate_in_production(stack, tmp_path):
    result = check_prod(stack, production(stack, tmp_path, PLAB_TLS_CERT=str(stack.tls_cert)))
    assert result.returncode == 1
    assert lines(result) == [
        f"tls: certificate {stack.tls_cert} is self-signed; clients cannot verify it"
    ]


@pytest.mark.parametrize(
    "days,text",
    [
        (5, "expires in 4 days"),
        (10, "expires in 9 days"),
        (29, "warning threshold 30 days"),
        (-1, "expired on"),
    ],
)
def test_expiring_and_expired_certificates(stack, tmp_path, days, text):
    cert = ca_signed_cert(tmp_path, days)
    result = check_prod(stack, production(stack, tmp_path, PLAB_TLS_CERT=str(cert)))
    assert result.returncode == 1
    (line,) = lines(result)
    assert line.startswith(f"tls: certificate {cert}") and text in line


def test_a_certificate_with_more_than_30_days_left_is_no_finding(stack, tmp_path):
    cert = ca_signed_cert(tmp_path, 31)
    result = check_prod(stack, production(stack, tmp_path, PLAB_TLS_CERT=str(cert)))
    assert result.returncode == 0, result.stdout


def test_redis_without_aof_or_password(stack, tmp_path):
    server = RedisProcess()
    with server as scratch:
        scratch.config_set("appendonly", "no")
        scratch.config_set("requirepass", "")
        env = production(
            stack,
            tmp_path,
            PLAB_REDIS_URL=f"redis://127.0.0.1:{server.port}/0",
            PLAB_REDIS_USERNAME="",
        )
        result = check_prod(stack, env, drop=("PLAB_REDIS_PASSWORD_FILE",))
    assert result.returncode == 1
    found = lines(result)
    assert "secret: PLAB_REDIS_PASSWORD is missing (set it or PLAB_REDIS_PASSWORD_FILE)" in found
    assert "redis: no password configured (PLAB_REDIS_PASSWORD[_FILE])" in found
    assert "redis: AOF persistence is off (appendonly no)" in found
    assert "redis: accepts commands without a password (default user is on)" in found


def test_unreachable_redis_is_a_finding(stack, tmp_path):
    from productionlab.supervisor import free_port

    env = production(stack, tmp_path, PLAB_REDIS_URL=f"redis://127.0.0.1:{free_port()}/0")
    result = check_prod(stack, env)
    assert result.returncode == 1
    (line,) = lines(result)
    assert line.startswith("redis: cannot inspect")


def test_admin_route(admin, make_user):
    response = admin.get("/admin/check-prod")
    assert response.status_code == 200
    body = response.json()
    assert body["ok"] is False
    assert "env: PLAB_ENV is 'development', not 'production'" in body["findings"]
    assert make_user("writer", ["*"]).get("/admin/check-prod").status_code == 403


def test_redis_memory_findings(stack, tmp_path):
    """Unbounded memory, an evicting policy and memory from 80 % of maxmemory are
    findings, on a real redis filled for real."""
    server = RedisProcess()
    with server as scratch:
        env = production(
            stack,
            tmp_path,
            PLAB_REDIS_URL=f"redis://127.0.0.1:{server.port}/0",
            PLAB_REDIS_USERNAME="",
            PLAB_REDIS_PASSWORD=server.password,
        )

        def memory_lines() -> list[str]:
            result = check_prod(stack, env, drop=("PLAB_REDIS_PASSWORD_FILE",))
            return [line for line in lines(result) if line.startswith("redis: m")]

        scratch.config_set("maxmemory", 0)
        assert memory_lines() == [
            "redis: maxmemory is 0 (unbounded); the OOM killer decides (set maxmemory)"
        ]
        for i in range(24):
            scratch.set(f"fill:{i}", b"x" * 256 * 1024)
        info = scratch.info("memory")
        counted = info["used_memory"] - info.get("mem_not_counted_for_evict", 0)
        scratch.config_set("maxmemory", int(counted / 0.88))
        (line,) = memory_lines()
        assert line.startswith("redis: memory at ") and "(warning from 80%)" in line, line
        percent = int(line.removeprefix("redis: memory at ").split("%")[0])
        assert 80 <= percent < 100, line
        assert "writes will soon be refused" in line
        scratch.config_set("maxmemory", counted * 4)
        assert memory_lines() == []
        scratch.config_set("maxmemory-policy", "allkeys-lru")
        assert memory_lines() == [
            "redis: maxmemory-policy is 'allkeys-lru'; it would evict stored keys"
        ]


def test_a_pem_checkpoint_key_is_not_taken_for_a_weak_secret(stack, tmp_path):
    """Secrets must be hex or base64 of 32 random bytes; the audit checkpoint key
    may also be an Ed25519 PEM key, which its own parser validates."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    pem = Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    path = tmp_path / "checkpoint.pem"
    path.write_bytes(pem)
    env = production(stack, tmp_path, PLAB_AUDIT_CHECKPOINT_KEY_FILE=str(path))
    result = check_prod(stack, env)
    assert not [line for line in lines(result) if "AUDIT_CHECKPOINT_KEY" in line], result.stdout
