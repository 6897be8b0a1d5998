"""The edge and redis configs are rendered from one template each."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from productionlab.configfiles import EdgeConfig, RedisUser, render_redis_conf
from productionlab.supervisor import StackConfig, Supervisor, find_binary
from tests.conftest import state_dir


def edge(**overrides: object) -> str:
    """The edge's nginx.conf for two app-plane processes, with ``overrides``."""
    values: dict[str, object] = {
        "ap_servers": ["127.0.0.1:8101", "127.0.0.1:8102"],
        "cp_server": "127.0.0.1:8201",
        "tls_cert": "/x/tls.crt",
        "tls_key": "/x/tls.key",
        "htpasswd": "/x/htpasswd",
        **overrides,
    }
    return EdgeConfig(**values).render()  # type: ignore[arg-type]


def default_edge() -> str:
    return edge()


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
    conf = edge(ap_servers=["127.0.0.1:8101"], trusted_proxies=["198.18.0.0/15", "2001:db8::/32"])
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


def _location(conf: str, opening: str) -> str:
    """The body of the location whose line starts with ``opening``."""
    start = conf.index(f"        location {opening}")
    return conf[start : conf.index("\n        }\n", start)]


def test_watch_routes_get_long_timeouts_and_their_own_per_user_limits():
    """Issue 13: a watch waits up to 300 s, so its locations read past that; they
    count against their own zones (per credential / per user), not the data zone,
    and the other locations keep the 15 s timeout and their limits."""
    conf = edge(ap_servers=["127.0.0.1:8101"], watch_rate=7, watch_burst=11, watch_conns=3)
    assert "limit_req_zone $plab_watch_credential zone=plab_watch:10m rate=7r/s;" in conf
    assert "limit_conn_zone $plab_watch_user zone=plab_watch_conn:10m;" in conf
    key = r"[A-Za-z0-9_-]{1,256}"
    watch_locations = {
        f'~ "^/v1/watch/{key}\\z"': "plab_ap",
        "= /v1/watch ": "plab_ap",
        f'~ "^/ops/v1/watch(/{key})?\\z"': "plab_cp",
    }
    for opening, upstream in watch_locations.items():
        body = _location(conf, opening)
        assert "limit_req zone=plab_watch burst=11 nodelay;" in body
        assert "limit_conn plab_watch_conn 3;" in body
        assert "limit_conn plab_conn 256;" in body  # the per-address bound still holds
        assert "proxy_read_timeout 330s;" in body
        assert "auth_basic_user_file /x/htpasswd;" in body
        assert f"proxy_pass http://{upstream};" in body
        assert "zone=plab_data" not in body and "zone=plab_admin" not in body
    # A malformed key never reaches a plane.
    assert 'location ~ "^/v1/watch/" {\n            return 400;' in conf
    # Only the three watch locations have a long timeout or the watch zones.
    assert conf.count("proxy_read_timeout 330s;") == 3
    assert conf.count("zone=plab_watch ") == 3
    assert conf.count("limit_conn plab_watch_conn") == 3
    assert "\n    proxy_read_timeout 15s;" in conf
    for opening in ('~ "^/read/', '~ "^/v1/kv/', "= /v1/kv ", "= /v1/txn ", "= /v1/bulk "):
        body = _location(conf, opening)
        assert "proxy_read_timeout" not in body and "plab_watch" not in body
        assert "limit_req zone=plab_data burst=100 nodelay;" in body
    assert '"~^/v1/watch" "/v1/watch";' in conf  # logged as a route, never a path


def test_watch_limits_come_from_settings_in_both_topologies():
    from productionlab import deploy

    env = {
        "PLAB_EDGE_WATCH_RATE": "4",
        "PLAB_EDGE_WATCH_BURST": "6",
        "PLAB_EDGE_WATCH_CONNS": "250",
    }
    compose = deploy.edge_config(env).render()
    assert "zone=plab_watch:10m rate=4r/s;" in compose
    assert "limit_req zone=plab_watch burst=6 nodelay;" in compose
    assert "limit_conn plab_watch_conn 250;" in compose
    local = StackConfig.from_env(env)
    assert (local.edge_watch_rate, local.edge_watch_burst, local.edge_watch_conns) == (4, 6, 250)
    defaults = StackConfig.from_env({})
    assert (defaults.edge_watch_rate, defaults.edge_watch_burst) == (10, 50)
    assert defaults.edge_watch_conns == 32
    stack = Supervisor(StackConfig.ephemeral(state_dir(), edge_watch_conns=5, edge_watch_rate=9))
    stack.prepare()
    conf = (stack.state / "nginx" / "nginx.conf").read_text()
    assert "limit_conn plab_watch_conn 5;" in conf and "rate=9r/s;" in conf
