"""Start-up validation: production refuses missing, default or weak secrets."""

from __future__ import annotations

import secrets
import subprocess
import time

import pytest

from productionlab.secretgen import ensure_secrets
from productionlab.settings import ConfigError, Settings, nginx_size, parse_size, secret_problem
from productionlab.token_keys import SigningKey


def strong_env(**extra: str) -> dict[str, str]:
    env = {
        f"PLAB_{n}": secrets.token_hex(32)
        for n in ("SECRET_KEY", "TOKEN_KEY", "BACKUP_KEY", "REDIS_PASSWORD")
    }
    env.update(extra)
    if "PLAB_TOKEN_KEY" in env and "PLAB_TOKEN_PUBLIC_KEY" not in env:
        env["PLAB_TOKEN_PUBLIC_KEY"] = SigningKey(env["PLAB_TOKEN_KEY"]).public_hex
    return env


def test_strong_production_settings_start():
    settings = Settings.from_env(strong_env(PLAB_ENV="production"))
    assert settings.production
    assert settings.warnings == ()


@pytest.mark.parametrize("name", ["SECRET_KEY", "TOKEN_KEY", "BACKUP_KEY", "REDIS_PASSWORD"])
def test_production_refuses_missing_secret(name):
    env = strong_env(PLAB_ENV="production")
    del env[f"PLAB_{name}"]
    with pytest.raises(ConfigError) as failure:
        Settings.from_env(env, plane="cp")  # the plane that holds every secret
    assert f"PLAB_{name} is missing" in str(failure.value)


@pytest.mark.parametrize(
    "weak",
    [
        "changeme",
        "secret",
        "short",
        "a" * 80,
        "password123456789",
        "0123456789abcdef0123456789abcdef",
    ],
)
def test_production_refuses_weak_or_default_secret(weak):
    with pytest.raises(ConfigError) as failure:
        Settings.from_env(strong_env(PLAB_ENV="production", PLAB_SECRET_KEY=weak))
    assert "PLAB_SECRET_KEY" in str(failure.value)


def test_development_warns_on_weak_secret_but_starts():
    settings = Settings.from_env(strong_env(PLAB_SECRET_KEY="changeme"))
    assert any("PLAB_SECRET_KEY" in w for w in settings.warnings)


def test_development_still_refuses_missing_secret():
    env = strong_env()
    del env["PLAB_TOKEN_KEY"]
    with pytest.raises(ConfigError):
        Settings.from_env(env, plane="cp")


def test_production_refuses_reused_secrets():
    shared = secrets.token_hex(32)
    with pytest.raises(ConfigError) as failure:
        Settings.from_env(
            strong_env(PLAB_ENV="production", PLAB_SECRET_KEY=shared, PLAB_BACKUP_KEY=shared),
            plane="cp",
        )
    assert "share one value" in str(failure.value)


def test_secret_from_file(tmp_path):
    path = tmp_path / "secret"
    value = secrets.token_hex(32)
    path.write_text(value + "\n")
    env = strong_env()
    del env["PLAB_SECRET_KEY"]
    env["PLAB_SECRET_KEY_FILE"] = str(path)
    assert Settings.from_env(env).secret_key == value


def test_secret_file_unreadable_is_clear(tmp_path):
    env = strong_env()
    del env["PLAB_SECRET_KEY"]
    env["PLAB_SECRET_KEY_FILE"] = str(tmp_path / "missing")
    with pytest.raises(ConfigError) as failure:
        Settings.from_env(env)
    assert "PLAB_SECRET_KEY_FILE" in str(failure.value)


def test_secret_and_file_together_refused(tmp_path):
    path = tmp_path / "secret"
    path.write_text(secrets.token_hex(32))
    with pytest.raises(ConfigError):
        Settings.from_env(strong_env(PLAB_SECRET_KEY_FILE=str(path)))


@pytest.mark.parametrize(
    "variable,value",
    [
        ("PLAB_ENV", "staging"),
        ("PLAB_DURABILITY", "sometimes"),
        ("PLAB_REPLICA_TIMEOUT_MS", "0"),
        ("PLAB_REPLICA_TIMEOUT_MS", "2000"),
        ("PLAB_REPLICA_TIMEOUT_MS", "soon"),
        ("PLAB_USER_RATE", "lots"),
        ("PLAB_MAX_BODY", "1x"),
        ("PLAB_REDIS_URL", "http://x"),
        ("PLAB_REDIS_URL", "redis://127.0.0.1:port/0"),
        ("PLAB_REDIS_URL", "redis://127.0.0.1:6379/zero"),
        ("PLAB_REDIS_URL", "redis+cluster://"),
        ("PLAB_REDIS_URL", "redis+cluster://127.0.0.1:7000,:7001"),
        ("PLAB_REDIS_URL", "redis+cluster://127.0.0.1:99999"),
        ("PLAB_REDIS_URL", "redis+sentinel://127.0.0.1:26379"),
        ("PLAB_REDIS_URL", "redis+sentinel://127.0.0.1:x/mymaster"),
        ("PLAB_REDIS_URL", "redis+sentinel://127.0.0.1/mymaster/db"),
        ("PLAB_THREADS", "0"),
        ("PLAB_THREADS", "many"),
        # issue 9: auth-abuse settings
        ("PLAB_VERIFY_CACHE_SECONDS", "301"),
        ("PLAB_VERIFY_CACHE_SECONDS", "-1"),
        ("PLAB_VERIFY_CONCURRENCY", "0"),
        ("PLAB_VERIFY_RETRY_AFTER", "0"),
        ("PLAB_TOKEN_FAILURES", "0"),
        ("PLAB_AUTH_AUDIT_WINDOW", "0"),
        ("PLAB_AUTH_AUDIT_ADDRESSES", "0"),
        ("PLAB_ADMIN_ROUTE_RATE", "lots"),
        ("PLAB_AUTH_ADDRESS_RATE", "60"),
        ("PLAB_AUTH_USER_RATE", "x/minute"),
        ("PLAB_EDGE_TRUSTED_PROXIES", "198.18.0.0/33"),
        ("PLAB_EDGE_TRUSTED_PROXIES", "lb.example"),
        ("PLAB_EDGE_TRUSTED_PROXIES", "0.0.0.0/0"),
        ("PLAB_EDGE_TRUSTED_PROXIES", "198.18.0.0/15,::/0"),
    ],
)
def test_bad_values_are_refused_with_their_name(variable, value):
    with pytest.raises(ConfigError) as failure:
        Settings.from_env(strong_env(**{variable: value}))
    assert variable in str(failure.value)


def test_production_refuses_debug_and_disabled_limits():
    with pytest.raises(ConfigError) as failure:
        Settings.from_env(strong_env(PLAB_ENV="production", PLAB_DEBUG="1", PLAB_RATE_LIMITS="off"))
    assert "PLAB_DEBUG" in str(failure.value)
    assert "PLAB_RATE_LIMITS" in str(failure.value)


def test_sizes():
    for text, nginx in (
        ("1m", "1m"),
        ("1024k", "1m"),
        ("1500", "1500"),
        ("2G", "2g"),
        ("3k", "3k"),
    ):
        assert nginx_size(parse_size(text)) == nginx  # what make run and compose hand nginx
    assert parse_size("1m") == 1024 * 1024
    assert parse_size("512k") == 512 * 1024
    assert parse_size("4096") == 4096
    with pytest.raises(ValueError):
        parse_size("1 mb")


def test_token_lifetimes_are_validated():
    settings = Settings.from_env(strong_env(PLAB_TOKEN_TTL="600", PLAB_REFRESH_TTL="3600"))
    assert (settings.token_ttl, settings.refresh_ttl) == (600, 3600)
    for access, refresh in (("5", "3600"), ("7200", "3600"), ("600", str(100 * 86400))):
        with pytest.raises(ConfigError) as failure:
            Settings.from_env(strong_env(PLAB_TOKEN_TTL=access, PLAB_REFRESH_TTL=refresh))
        assert "PLAB_TOKEN_TTL" in str(failure.value)


def test_previous_token_key_is_found_next_to_the_key_file(tmp_path):
    current, previous = secrets.token_hex(32), secrets.token_hex(32)
    (tmp_path / "token_key").write_text(current)
    (tmp_path / "token_key.previous").write_text(previous + "\n")
    env = strong_env(PLAB_TOKEN_KEY_FILE=str(tmp_path / "token_key"))
    del env["PLAB_TOKEN_KEY"]
    settings = Settings.from_env(env)
    assert settings.token_key == current
    assert settings.token_key_previous == previous


def test_paths_and_retention_settings(tmp_path):
    settings = Settings.from_env(strong_env(PLAB_STATE_DIR=str(tmp_path)))
    assert settings.backup_dir == tmp_path / "backups"
    assert settings.tls_cert_path == tmp_path / "tls" / "tls.crt"
    assert settings.audit_retention is None
    tuned = Settings.from_env(
        strong_env(PLAB_BACKUP_DIR="/b", PLAB_TLS_CERT="/c.crt", PLAB_AUDIT_RETENTION="500")
    )
    assert (str(tuned.backup_dir), str(tuned.tls_cert_path), tuned.audit_retention) == (
        "/b",
        "/c.crt",
        500,
    )
    with pytest.raises(ConfigError):
        Settings.from_env(strong_env(PLAB_AUDIT_RETENTION="many"))


def openssl_rand(*args: str) -> str:
    """Real `openssl rand` output, the way an operator makes a secret."""
    result = subprocess.run(
        ["openssl", "rand", *args], capture_output=True, text=True, check=True, timeout=30
    )
    return result.stdout.strip()


@pytest.mark.parametrize("run", range(20))
def test_generated_secrets_pass(tmp_path, run):
    """openssl's hex and base64 output and the project's own generator always pass."""
    generated = ensure_secrets(tmp_path / "secrets", ("token_key", "audit_key"))
    values = [
        openssl_rand("-hex", "32"),
        openssl_rand("-base64", "32"),
        openssl_rand("-base64", "48"),
        generated["token_key"].read_text().strip(),
        generated["audit_key"].read_text().strip(),
        secrets.token_urlsafe(32),
    ]
    for value in values:
        assert secret_problem("audit_key", value) is None, value
    env = cp_env(PLAB_ENV="production", PLAB_AUDIT_KEY=values[1], PLAB_BACKUP_KEY=values[0])
    env["PLAB_TOKEN_KEY_PREVIOUS"] = values[2]
    assert Settings.from_env(env, plane="cp").token_key_previous == values[2]


def cp_env(**extra: str) -> dict[str, str]:
    """What the control plane needs besides strong_env: the checkpoint key, and the
    time of the last token-key rotation when a previous key is given."""
    return strong_env(
        PLAB_AUDIT_CHECKPOINT_KEY=secrets.token_hex(32),
        PLAB_TOKEN_KEY_ROTATED_AT=str(int(time.time())),
        **extra,
    )


@pytest.mark.parametrize(
    "patterned",
    [
        "0123456789abcdef" * 4,  # ascending hex, repeated: decodes to 8 bytes, 4 times
        "ab" * 32,  # one repeated byte
        "deadbeef" * 8,  # a repeated 4-byte block
        "00" * 32,
        "".join(f"{i:02x}" for i in range(32)),  # ascending bytes
        "".join(f"{255 - i:02x}" for i in range(32)),  # descending bytes
        "QUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUE=",  # base64 of "A" * 32
        "YWJjZGVmZ2hpamtsbW5vcHFyc3R1dnd4eXoxMjM0NTY=",  # base64 of "abc...z123456"
        "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/",
        # Fixed random-looking values: parameters must be the same in every xdist worker.
        "4e5beb79a16f485cb74e6f5f9784fe90",  # hex, but only 16 bytes
        "TeF0hRjzHDZ0yp4LLMs4SQ",  # base64, but only 16 bytes
        "correct horse battery staple, correct horse battery staple",  # neither encoding
        "e5e885bff61a6b32c0e358fbfc29c9f9" * 2,  # 32 bytes that are one 16-byte block twice
    ],
)
def test_patterned_or_short_secrets_are_refused(patterned):
    problem = secret_problem("token_key", patterned)
    assert problem is not None and "PLAB_TOKEN_KEY is weak" in problem
    with pytest.raises(ConfigError) as failure:
        Settings.from_env(strong_env(PLAB_ENV="production", PLAB_SECRET_KEY=patterned))
    assert "PLAB_SECRET_KEY is weak" in str(failure.value)


def test_previous_token_key_is_validated_like_the_key(tmp_path):
    env = cp_env(PLAB_ENV="production", PLAB_TOKEN_KEY_PREVIOUS="0123456789abcdef" * 4)
    with pytest.raises(ConfigError) as failure:
        Settings.from_env(env, plane="cp")
    assert "PLAB_TOKEN_KEY_PREVIOUS is weak" in str(failure.value)
    key = secrets.token_hex(32)
    (tmp_path / "token_key").write_text(key)
    (tmp_path / "token_key.previous").write_text("changeme\n")
    env = cp_env(PLAB_ENV="production", PLAB_TOKEN_KEY_FILE=str(tmp_path / "token_key"))
    env["PLAB_TOKEN_PUBLIC_KEY"] = SigningKey(key).public_hex
    del env["PLAB_TOKEN_KEY"], env["PLAB_TOKEN_KEY_ROTATED_AT"]
    with pytest.raises(ConfigError) as failure:
        Settings.from_env(env, plane="cp")
    assert "PLAB_TOKEN_KEY_PREVIOUS is a default" in str(failure.value)
    development = Settings.from_env({**env, "PLAB_ENV": "development"}, plane="cp")
    assert any("PLAB_TOKEN_KEY_PREVIOUS" in w for w in development.warnings)


# --- issue 9: auth-abuse settings ------------------------------------------------
def test_auth_abuse_settings_defaults_and_values():
    settings = Settings.from_env(strong_env())
    assert settings.verify_cache_seconds == 60
    assert settings.edge_trusted_proxies == ()
    assert settings.verify_concurrency == 4 and settings.verify_retry_after == 1
    custom = Settings.from_env(
        strong_env(
            PLAB_VERIFY_CACHE_SECONDS="300",
            PLAB_EDGE_TRUSTED_PROXIES="198.18.0.0/15, 192.0.2.7 2001:db8::/32",
        )
    )
    assert custom.verify_cache_seconds == 300
    assert custom.edge_trusted_proxies == ("198.18.0.0/15", "192.0.2.7/32", "2001:db8::/32")


@pytest.mark.parametrize(
    "variable,value",
    [
        ("PLAB_HTTPS_PORT", "x"),
        ("PLAB_HTTP_PORT", "70000"),
        ("PLAB_AP_PORT", "0"),
        ("PLAB_AP_WORKERS", "many"),
        ("PLAB_CP_PORT", "8.5"),
        ("PLAB_REDIS_PORT", ""),
        ("PLAB_EDGE_RATE", "fast"),
        ("PLAB_EDGE_BURST", "0"),
        ("PLAB_ADMIN_RATE", "-1"),
        ("PLAB_ADMIN_BURST", "ten"),
        ("PLAB_EDGE_WATCH_RATE", "0"),
        ("PLAB_EDGE_WATCH_BURST", "many"),
        ("PLAB_EDGE_WATCH_CONNS", "-1"),
        ("PLAB_EDGE_WATCH_CONNS", "65536"),
        ("PLAB_THREADS", "lots"),
        ("PLAB_REDIS_TLS", "maybe"),
    ],
)
def test_local_stack_values_are_checked_by_settings(variable, value):
    """`make run`'s ports and counts went through an unchecked int(): a ValueError
    that named no variable. They are Settings now: a ConfigError naming the variable."""
    from productionlab.supervisor import StackConfig

    with pytest.raises(ConfigError) as failure:
        StackConfig.from_env({variable: value})
    assert variable in str(failure.value)


@pytest.mark.parametrize(
    "variable,value",
    [
        ("PLAB_HTTPS_PORT", "x"),
        ("PLAB_EDGE_RATE", "0"),
        ("PLAB_ADMIN_BURST", "ten"),
        ("PLAB_EDGE_WORKERS", "lots"),
        ("PLAB_EDGE_WATCH_CONNS", "0"),
        ("PLAB_MAX_BODY", "1x"),
        ("PLAB_EDGE_TRUSTED_PROXIES", "lb.example"),
    ],
)
def test_compose_edge_values_are_checked_by_settings(variable, value, tmp_path, capsys):
    """The compose edge-config step: the same checks, from the same place."""
    from productionlab import deploy

    with pytest.raises(ConfigError) as failure:
        deploy.edge_config({variable: value})
    assert variable in str(failure.value)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(variable, value)
        assert deploy.main(["edge-config", "--out", str(tmp_path / "nginx.conf")]) == 2
    line = capsys.readouterr().err.strip()
    assert variable in line and "\n" not in line
    assert not (tmp_path / "nginx.conf").exists()


def test_local_stack_and_compose_edge_defaults_come_from_settings():
    from productionlab import deploy
    from productionlab.supervisor import StackConfig

    config = StackConfig.from_env({})
    assert (config.https_port, config.http_port, config.ap_port, config.cp_port) == (
        8443,
        8080,
        8101,
        8201,
    )
    assert (config.redis_port, config.edge_rate, config.edge_burst) == (6390, 50, 100)
    assert (config.admin_rate, config.admin_burst, config.max_body) == (5, 10, "1m")
    custom = StackConfig.from_env({"PLAB_AP_WORKERS": "3", "PLAB_MAX_BODY": "2m"})
    assert custom.ap_workers == 3 and custom.max_body == "2m"
    edge = deploy.edge_config({"PLAB_HTTPS_PORT": "443", "PLAB_EDGE_WORKERS": "4"})
    assert edge.public_https_port == 443 and edge.worker_processes == "4"
    assert deploy.edge_config({}).worker_processes == "2"


def test_a_plane_reads_neither_the_local_stack_nor_the_edge_limits():
    """Those belong to `make run` and the edge: a plane starts as it did before they
    were Settings (check-prod reports a broken edge limit as a finding)."""
    settings = Settings.from_env(strong_env(PLAB_EDGE_RATE="0", PLAB_AP_WORKERS="many"))
    assert (settings.edge_rate, settings.https_port) == (50, 8443)
    with pytest.raises(ConfigError, match="PLAB_REDIS_MAXMEMORY"):
        Settings.from_env(strong_env(PLAB_REDIS_MAXMEMORY="lots"))


def test_replicated_durability_and_its_timeout():
    settings = Settings.from_env(
        strong_env(PLAB_DURABILITY="replicated", PLAB_REPLICA_TIMEOUT_MS="250")
    )
    assert settings.replicated_durability and not settings.strict_durability
    assert settings.replica_timeout_ms == 250
    assert Settings.from_env(strong_env()).replica_timeout_ms == 1000
    with pytest.raises(ConfigError) as failure:
        Settings.from_env(
            strong_env(
                PLAB_DURABILITY="replicated", PLAB_REDIS_URL="redis+cluster://127.0.0.1:7000"
            )
        )
    assert "PLAB_DURABILITY=replicated" in str(failure.value)


@pytest.mark.parametrize(
    "url",
    [
        "redis://127.0.0.1:6390/0",
        "redis://user:pass@127.0.0.1:6390/1",
        "unix:///run/redis.sock",
        "redis+cluster://127.0.0.1:7000,127.0.0.1:7001,[::1]",
        "redis+sentinel://127.0.0.1:26379,127.0.0.1/mymaster/2",
    ],
)
def test_well_formed_redis_urls_are_taken(url):
    assert Settings.from_env(strong_env(PLAB_REDIS_URL=url)).redis_url == url


def test_a_refused_redis_url_never_shows_its_password():
    with pytest.raises(ConfigError) as failure:
        Settings.from_env(strong_env(PLAB_REDIS_URL="redis+sentinel://:hunter2secret@h:1"))
    assert "hunter2secret" not in str(failure.value)
    assert "service name" in str(failure.value)
