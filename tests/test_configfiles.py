"""The edge and redis configs are rendered from one template each."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from productionlab.configfiles import EdgeConfig, RedisUser, render_redis_conf
from productionlab.supervisor import StackConfig, Supervisor, find_binary
from tests.conftest import state_dir


def default_edge() -> str:
    return EdgeConfig(
        ap_servers=["127.0.0.1:8101", "127.0.0.1:8102"],
        cp_server="127.0.0.1:8201",
        tls_cert="/x/tls.crt",
        tls_key="/x/tls.key",
        htpasswd="/x/htpasswd",
    ).render()


def test_edge_defaults_match_the_contract():
    conf = default_edge()
    assert "rate=50r/s" in conf and "burst=100 nodelay" in conf
    assert "rate=5r/s" in conf and "burst=10 nodelay" in conf
    assert "client_max_body_size 1m;" in conf
    assert "ssl_protocols TLSv1.2 TLSv1.3;" in conf
    assert "server_tokens off;" in conf
    assert "server 127.0.0.1:8101" in conf and "server 127.0.0.1:8102" in conf
    assert "keepalive 64;" in conf


def test_local_stack_renders_valid_nginx_config():
    stack = Supervisor(
        StackConfig.ephemeral(state_dir(), ap_workers=3, edge_rate=7, edge_burst=9, max_body="2m")
    )
    stack.prepare()
    conf_path = stack.state / "nginx" / "nginx.conf"
    conf = conf_path.read_text()
    assert "rate=7r/s" in conf and "burst=9 nodelay" in conf
    assert "client_max_body_size 2m;" in conf
    assert conf.count("max_fails=1") == 3
    nginx = find_binary("nginx")
    assert nginx, "nginx must be installed"
    check = subprocess.run(
        [nginx, "-t", "-p", str(stack.state / "nginx"), "-c", str(conf_path)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert check.returncode == 0, check.stderr


def test_redis_conf_has_aof_acl_and_no_plaintext_password():
    conf = render_redis_conf(
        port=6390, data_dir="/data", users=[RedisUser("plab-ap", "s3cret-password-value")]
    )
    assert "appendonly yes" in conf
    assert "appendfsync everysec" in conf
    assert "user default off" in conf
    assert "s3cret-password-value" not in conf
    assert "user plab-ap on #" in conf
    assert "-@dangerous" in conf
    strict = render_redis_conf(port=1, data_dir="/d", users=[], appendfsync="always")
    assert "appendfsync always" in strict


def test_local_and_compose_redis_confs_bound_memory_without_eviction(tmp_path):
    """`make run` had no maxmemory at all: the OOM killer decided."""
    from productionlab import deploy
    from productionlab.settings import ConfigError

    stack = Supervisor(StackConfig.ephemeral(state_dir()))
    stack.prepare()
    conf = (stack.redis_dir / "redis.conf").read_text()
    assert "\nmaxmemory 256mb\n" in conf and "\nmaxmemory-policy noeviction\n" in conf
    small = Supervisor(
        StackConfig.ephemeral(state_dir(), extra_env={"PLAB_REDIS_MAXMEMORY": "64MB"})
    )
    small.prepare()
    assert "\nmaxmemory 64mb\n" in (small.redis_dir / "redis.conf").read_text()
    for bad in ("lots", "1mb", "-5mb"):
        broken = Supervisor(
            StackConfig.ephemeral(state_dir(), extra_env={"PLAB_REDIS_MAXMEMORY": bad})
        )
        with pytest.raises(ConfigError, match="PLAB_REDIS_MAXMEMORY"):
            broken.prepare()
    directory = tmp_path / "secrets"
    deploy.prepare_secrets(directory)
    compose = (directory / "redis.conf").read_text()
    assert "\nmaxmemory 384mb\n" in compose and "\nmaxmemory-policy noeviction\n" in compose
    assert deploy.main(["secrets", "--dir", str(directory), "--redis-maxmemory", "1gb"]) == 0
    assert "\nmaxmemory 1gb\n" in (directory / "redis.conf").read_text()


def test_trusted_proxies_are_off_by_default_and_rendered_when_set():
    import pytest

    assert "set_real_ip_from" not in default_edge()
    assert "real_ip_header" not in default_edge()
    conf = EdgeConfig(
        ap_servers=["127.0.0.1:8101"],
        cp_server="127.0.0.1:8201",
        tls_cert="/x/tls.crt",
        tls_key="/x/tls.key",
        htpasswd="/x/htpasswd",
        trusted_proxies=["198.18.0.0/15", "2001:db8::/32"],
    ).render()
    assert "set_real_ip_from 198.18.0.0/15;" in conf
    assert "set_real_ip_from 2001:db8::/32;" in conf
    assert "real_ip_header X-Forwarded-For;" in conf and "real_ip_recursive on;" in conf
    with pytest.raises(ValueError):
        EdgeConfig(
            ap_servers=["127.0.0.1:8101"],
            cp_server="127.0.0.1:8201",
            tls_cert="/x/tls.crt",
            tls_key="/x/tls.key",
            htpasswd="/x/htpasswd",
            trusted_proxies=["198.18.0.0/15; include /etc/passwd"],
        ).render()


def test_the_nginx_template_comes_from_settings(tmp_path):
    """PLAB_NGINX_TEMPLATE (the images install the template outside the package) is
    a setting like the others; the renderer reads it through Settings."""
    from productionlab.settings import TEMPLATES, Settings

    default = Settings.from_env({}, concerns=(TEMPLATES,)).nginx_template
    assert default.is_file() and default.name == "nginx.conf.template"
    moved = tmp_path / "edge.template"
    settings = Settings.from_env({"PLAB_NGINX_TEMPLATE": str(moved)}, concerns=(TEMPLATES,))
    assert settings.nginx_template == moved
    code = "from productionlab import configfiles; print(configfiles.NGINX_TEMPLATE)"
    env = {**os.environ, "PLAB_NGINX_TEMPLATE": str(moved)}
    result = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == str(moved)
