"""Encrypted backups: round trip, tampering and wrong keys refused, restore
rules, the drill, the admin routes and the progress bar."""

from __future__ import annotations

import json
import os
import pty
import secrets
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from productionlab.backup import verify_backup
from productionlab.backup_format import SUFFIX, BackupError, read_header
from productionlab.redis_process import RedisProcess
from productionlab.shardbackup import ShardStore
from productionlab.store.layout import all_shards
from tests.conftest import admin_of, cli, start_stack, stop_stack
from tests.layout_kit import audit_entries, item_of

BINARY = bytes(range(256))


@pytest.fixture(scope="module")
def own() -> Iterator:
    stack = start_stack(edge_rate=1000, edge_burst=1000, admin_rate=1000, admin_burst=1000)
    admin = admin_of(stack)
    for index in range(250):
        assert admin.post(f"/ops/write/b-{index:04d}/value-{index}").status_code == 201
    assert admin.put("/ops/v1/kv/b-binary", data=BINARY).status_code == 201
    assert admin.put("/ops/v1/kv/b-ttl?ttl=3600", data=b"short-lived").status_code == 201
    yield stack
    stop_stack(stack)


def snapshot(client) -> dict:
    """Every key with value, version and whether it has a TTL."""
    data = {}
    for place in all_shards():
        for member in client.zrange(place.index, 0, -1):
            key = member.decode()
            value, version = client.hmget(place.item(key), "v", "ver")
            if version is not None:
                ttl = client.pttl(place.item(key))
                data[key] = (value, int(version), ttl > 0)
    return data


def make_backup(stack, tmp_path: Path) -> Path:
    result = cli(stack, "backup", "create", "--dir", str(tmp_path), "--quiet")
    assert result.returncode == 0, result.stderr
    (path,) = tmp_path.glob(f"*{SUFFIX}")
    return path


def scratch_env(scratch: RedisProcess, tmp_path: Path) -> dict:
    password_file = tmp_path / "scratch-password"
    password_file.write_text(scratch.password)
    return {
        "PLAB_REDIS_URL": f"redis://127.0.0.1:{scratch.port}/0",
        "PLAB_REDIS_USERNAME": "",
        "PLAB_REDIS_PASSWORD_FILE": str(password_file),
        # the scratch redis is plain on loopback (redis_process.RedisProcess): no client certificate
        "PLAB_REDIS_TLS_CA_FILE": "",
        "PLAB_REDIS_TLS_CERT_FILE": "",
        "PLAB_REDIS_TLS_KEY_FILE": "",
        # another redis holds another audit log: its own checkpoints and archive
        "PLAB_AUDIT_CHECKPOINT_FILE": str(tmp_path / "scratch-checkpoints.jsonl"),
        "PLAB_AUDIT_ARCHIVE_DIR": str(tmp_path / "scratch-archive"),
    }


def test_round_trip_into_an_empty_instance(own, tmp_path):
    path = make_backup(own, tmp_path)
    assert path.stat().st_mode & 0o777 == 0o600
    header, _ = read_header(path)
    assert header["cipher"] == "AES-256-GCM" and len(header["key_id"]) == 16
    raw = path.read_bytes()
    assert b"value-1" not in raw and BINARY not in raw  # encrypted, not merely encoded
    live = own.redis_client()
    expected = snapshot(live)
    live_counter = ShardStore().kv_version(live)
    live.close()
    assert len(expected) == 252
    server = RedisProcess()
    with server as scratch:
        env = scratch_env(server, tmp_path)
        result = cli(own, "backup", "restore", str(path), "--quiet", env=env)
        assert result.returncode == 0, result.stderr
        assert "252 keys" in result.stdout
        assert snapshot(scratch) == expected
        assert scratch.hget(item_of("b-binary"), "v") == BINARY
        assert 0 < scratch.pttl(item_of("b-ttl")) <= 3600 * 1000
        assert ShardStore().kv_version(scratch) >= live_counter
        # each restored key was audited (in its shard's chain), and the restored log verifies
        assert audit_entries(scratch) >= 252
        verified = cli(own, "audit", "verify", env=env)
        assert verified.returncode == 0, verified.stdout
        # a second restore into the now non-empty instance is refused
        again = cli(own, "backup", "restore", str(path), "--quiet", env=env)
        assert again.returncode == 1 and "--overwrite" in again.stderr


def test_restore_refuses_a_non_empty_store_without_overwrite(own, tmp_path):
    path = make_backup(own, tmp_path)
    admin = admin_of(own)
    assert admin.post("/ops/write/b-0001/changed").status_code == 200
    refused = cli(own, "backup", "restore", str(path), "--quiet")
    assert refused.returncode == 1
    assert "already holds" in refused.stderr and "--overwrite" in refused.stderr
    assert admin.get("/ops/read/b-0001").json()["value"] == "changed"
    done = cli(own, "backup", "restore", str(path), "--overwrite", "--quiet")
    assert done.returncode == 0, done.stderr
    restored = admin.get("/ops/read/b-0001").json()
    assert restored["value"] == "value-1"
    # versions never go backwards: the next write gets a fresh, higher version
    after = admin.post("/ops/write/b-0001/again").json()["version"]
    assert after > restored["version"]
    assert admin.post("/ops/write/b-0001/value-1").status_code == 200


@pytest.mark.parametrize("where", ["magic", "header", "first-chunk", "middle", "last"])
def test_a_flipped_byte_is_refused(own, tmp_path, where):
    path = make_backup(own, tmp_path)
    data = bytearray(path.read_bytes())
    header_end = 12 + int.from_bytes(data[8:12], "big")
    offset = {
        "magic": 2,
        "header": 20,
        "first-chunk": header_end + 10,
        "middle": len(data) // 2,
        "last": len(data) - 1,
    }[where]
    data[offset] ^= 0x01
    path.write_bytes(bytes(data))
    verify = cli(own, "backup", "verify", str(path))
    assert verify.returncode == 1
    assert verify.stderr.startswith("productionlab: ")
    server = RedisProcess()
    with server as scratch:
        env = scratch_env(server, tmp_path)
        restore = cli(own, "backup", "restore", str(path), "--quiet", env=env)
        assert restore.returncode == 1
        assert scratch.dbsize() == 0  # nothing was loaded


def test_a_truncated_backup_is_refused(own, tmp_path):
    path = make_backup(own, tmp_path)
    data = path.read_bytes()
    secret = own.secret("backup_key")
    for cut in (len(data) - 1, len(data) - 17, len(data) // 2):
        path.write_bytes(data[:cut])
        with pytest.raises(BackupError):
            verify_backup(path, secret)


def test_the_wrong_key_is_refused_by_key_id(own, tmp_path):
    path = make_backup(own, tmp_path)
    other = tmp_path / "other-key"
    other.write_text(secrets.token_hex(32))
    result = cli(own, "backup", "verify", str(path), env={"PLAB_BACKUP_KEY_FILE": str(other)})
    assert result.returncode == 1
    assert "was made with backup key" in result.stderr
    with pytest.raises(BackupError, match="key"):
        verify_backup(path, secrets.token_hex(32))


def test_a_forged_key_id_does_not_help(own, tmp_path):
    """Rewriting the header's key id to match another key breaks authentication."""
    path = make_backup(own, tmp_path)
    other_key = secrets.token_hex(32)
    from productionlab.backup_format import key_id

    original, _ = read_header(path)
    data = path.read_bytes().replace(original["key_id"].encode(), key_id(other_key).encode(), 1)
    path.write_bytes(data)
    with pytest.raises(BackupError, match="authentication"):
        verify_backup(path, other_key)


def test_drill_passes_and_cleans_up(own, tmp_path):
    # A private TMPDIR: other workers' drills use /tmp at the same time.
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    result = cli(
        own, "backup", "drill", "--dir", str(tmp_path), "--quiet", env={"TMPDIR": str(scratch)}
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.startswith("drill PASS")
    assert "restored: 252 keys" in result.stdout
    assert "live:     252 keys" in result.stdout
    assert list(scratch.iterdir()) == []
    assert len(list(tmp_path.glob(f"*{SUFFIX}"))) == 1


def test_drill_of_an_older_backup_reports_drift(own, tmp_path):
    path = make_backup(own, tmp_path)
    admin = admin_of(own)
    assert admin.post("/ops/write/b-drift/new").status_code == 201
    try:
        result = cli(own, "backup", "drill", "--file", str(path), "--quiet")
        assert result.returncode == 0, result.stdout + result.stderr
        assert "changed since the backup" in result.stdout
        # a drill that makes its own backup compares with live data
        fresh = cli(own, "backup", "drill", "--dir", str(tmp_path), "--quiet")
        assert fresh.returncode == 0 and "253 keys" in fresh.stdout
    finally:
        assert admin.delete("/ops/v1/kv/b-drift").status_code == 204


def test_drill_fails_on_a_bad_backup(own, tmp_path):
    path = make_backup(own, tmp_path)
    data = bytearray(path.read_bytes())
    data[-5] ^= 0xFF
    path.write_bytes(bytes(data))
    result = cli(own, "backup", "drill", "--file", str(path), "--quiet")
    assert result.returncode != 0


def test_admin_routes_trigger_list_and_verify(own, tmp_path):
    admin = admin_of(own)
    created = admin.post("/admin/backups")
    assert created.status_code == 201, created.text
    body = created.json()
    assert body["keys"] == 252 and body["name"].endswith(SUFFIX)
    listed = admin.get("/admin/backups").json()["backups"]
    assert body["name"] in [b["name"] for b in listed]
    assert all("key_id" in b for b in listed)
    verified = admin.post(f"/admin/backups/{body['name']}/verify")
    assert verified.status_code == 200 and verified.json()["keys"] == 252
    assert admin.post("/admin/backups/..%2Fsecrets/verify").status_code in (400, 404)
    assert admin.post("/admin/backups/nope.plab-backup/verify").status_code == 404
    listed_cli = cli(own, "backup", "list")
    assert body["name"] in listed_cli.stdout
    client = own.redis_client()
    actions = [json.loads(e)["action"] for e in client.lrange("{plab}:audit", -5, -1)]
    client.close()
    assert "backup.create" in actions and "backup.verify" in actions


def test_progress_bar_on_a_terminal_only(own, tmp_path):
    quiet = cli(own, "backup", "create", "--dir", str(tmp_path / "a"))
    assert quiet.returncode == 0 and quiet.stderr == ""
    leader, follower = pty.openpty()
    try:
        result = cli(
            own,
            "backup",
            "create",
            "--dir",
            str(tmp_path / "b"),
            stderr=follower,
            stdout=subprocess.PIPE,
            capture_output=False,
        )
        os.close(follower)
        follower = -1
        shown = b""
        while True:
            try:
                chunk = os.read(leader, 65536)
            except OSError:
                break
            if not chunk:
                break
            shown += chunk
    finally:
        if follower != -1:
            os.close(follower)
        os.close(leader)
    assert result.returncode == 0
    assert b"backup [" in shown and b"252/252 keys" in shown
