"""The one launcher of a scratch redis-server (productionlab/redis_process.py): the
backup drill's, the tests' and the benchmarks'."""

from __future__ import annotations

import os

import pytest
import redis

from productionlab.redis_process import RedisProcess, RedisProcessError


def test_defaults_are_loopback_aof_and_a_password_and_stop_cleans_up():
    server = RedisProcess()
    with server as client:
        assert client.config_get("appendonly") == {"appendonly": "yes"}
        assert client.config_get("bind")["bind"] == "127.0.0.1"
        assert server.password and len(server.password) >= 32
        assert (server.directory / "redis.conf").stat().st_mode & 0o777 == 0o600
        assert server.password not in " ".join(server.process.args)  # not visible in ps
        stranger = redis.Redis(host="127.0.0.1", port=server.port, socket_timeout=5)
        with pytest.raises(redis.AuthenticationError):
            stranger.ping()
        stranger.close()
        pid, directory = server.process.pid, server.directory
    assert server.process.poll() is not None
    assert not os.path.exists(f"/proc/{pid}/cmdline") or server.process.returncode is not None
    assert not directory.exists()


def test_a_given_directory_is_kept_and_an_aof_copy_is_loaded(tmp_path):
    first = RedisProcess(password=False, directory=tmp_path / "first")
    with first as client:
        client.set("{plab}:probe", "kept")
        client.execute_command("BGREWRITEAOF")
        client.set("{plab}:after-rewrite", "also kept")
    assert first.aof_dir == tmp_path / "first" / "appendonly" and first.aof_dir.is_dir()
    copy = RedisProcess(password=False, directory=tmp_path / "second", aof_source=first.aof_dir)
    with copy as client:
        assert client.get("{plab}:probe") == b"kept"
        assert client.get("{plab}:after-rewrite") == b"also kept"


def test_a_server_that_cannot_start_is_an_error_naming_why():
    server = RedisProcess(config={"maxmemory-policy": "no-such-policy"})
    with pytest.raises(RedisProcessError, match="did not start"):
        server.start()
    assert not server.directory.exists()
