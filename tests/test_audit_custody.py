"""The audit log against an app-plane compromise: the app plane holds no audit
secret, its redis rights (append only) cannot make a covered entry disappear or
change undetected, no secret crosses the wire to redis where MONITOR shows it,
and the control plane archives, trims and checkpoints on its own.

The stack's redis gets two extra ACL users for the attacks: ``plab-appender``
with exactly the rights on the audit keys that the app plane's user needs
(RPUSH, LLEN, LINDEX, LRANGE on the list; HGET, HGETALL on the meta; scripts),
and ``plab-monitor``, which may run MONITOR.
"""

from __future__ import annotations

import contextlib
import json
import secrets
import shutil
import socket
import ssl
import threading
import time
from collections.abc import Iterator

import pytest
import redis

from productionlab.audit import (
    AUDIT_KEYS,
    AUDIT_LIST,
    AUDIT_META,
    Actor,
    AuditLog,
    entry_hash,
    legacy_entry_mac,
)
from productionlab.audit_archive import (
    AUDIT_TRIM,
    LEGACY_REPORT,
    Archive,
    archive_and_trim,
    migrate_legacy,
)
from productionlab.audit_chains import chain_keys, chain_lengths
from productionlab.audit_checkpoint import CheckpointFile
from productionlab.audit_keeper import trim_level
from productionlab.audit_verify import verify_log
from productionlab.redis_process import RedisProcess
from productionlab.settings import ConfigError, Settings
from productionlab.store.layout import shard_for, shard_of
from productionlab.supervisor import Supervisor
from productionlab.token_keys import SigningKey
from tests.conftest import (
    Client,
    admin_of,
    cli,
    create_user,
    small_stack_config,
    state_dir,
)
from tests.layout_kit import one_shard

APPENDER_PASSWORD = secrets.token_hex(16)
MONITOR_PASSWORD = secrets.token_hex(16)
# What the app plane's redis user needs on the audit keys, and nothing more.
APPENDER_ACL = (
    f"user plab-appender on >{APPENDER_PASSWORD} resetkeys resetchannels -@all "
    "+ping +eval +evalsha +script|load ~{plab}:audit ~{plab}:audit:meta "
    "(~{plab}:audit +rpush +llen +lindex +lrange) (~{plab}:audit:meta +hget +hgetall)"
)
MONITOR_ACL = f"user plab-monitor on >{MONITOR_PASSWORD} resetkeys -@all +monitor +ping"


class CustodyStack(Supervisor):
    """A local stack whose redis also knows the attack and monitor users."""

    def _write_redis_conf(self) -> None:
        super()._write_redis_conf()
        path = self.redis_dir / "redis.conf"
        path.write_text(path.read_text() + f"\n{APPENDER_ACL}\n{MONITOR_ACL}\n")


@pytest.fixture(scope="module")
def custody() -> Iterator[Supervisor]:
    directory = state_dir("plab-custody-")
    stack = CustodyStack(
        small_stack_config(
            directory,
            extra_env={"PLAB_AUDIT_MAX_ENTRIES": "40", "PLAB_AUDIT_CHECKPOINT_INTERVAL": "1"},
        )
    )
    stack.start(timeout=90)
    yield stack
    stack.stop()
    shutil.rmtree(directory, ignore_errors=True)


def verify(stack) -> dict:
    result = cli(stack, "audit", "verify", "--json")
    return json.loads(result.stdout)


def monitor_socket(stack) -> socket.socket:
    """A raw connection to the stack's redis (TLS with the control plane's
    certificate when the stack's redis is on TLS)."""
    raw = socket.create_connection((stack.config.bind, stack.config.redis_port))
    options = stack.redis_tls_options("cp")
    if not options:
        return raw
    context = ssl.create_default_context(cafile=options["ssl_ca_certs"])
    context.load_cert_chain(options["ssl_certfile"], options["ssl_keyfile"])
    return context.wrap_socket(raw, server_hostname=stack.config.bind)


def user_client(stack, name: str, password: str) -> redis.Redis:
    return redis.Redis(
        host=stack.config.bind,
        port=stack.config.redis_port,
        username=name,
        password=password,
        socket_timeout=10,
        # under TLS any certificate from the stack's CA gets through the handshake;
        # the ACL user (name, password) decides what it may do
        **stack.redis_tls_options("ap"),
    )


def wait_for(condition, timeout: float = 90.0, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.25)
    raise AssertionError(f"timed out waiting for {what}")


# --- the app plane holds no audit secret ------------------------------------------------
def test_the_app_plane_gets_no_audit_secret(custody):
    env = custody.plane_env("ap")
    assert not any(k.startswith("PLAB_AUDIT_KEY") for k in env)
    assert not any(k.startswith("PLAB_AUDIT_CHECKPOINT_KEY") for k in env)
    assert Settings.from_env(env, plane="ap").audit_key == ""
    leaked = dict(env, PLAB_AUDIT_KEY=secrets.token_hex(32))
    settings = Settings.from_env(leaked, plane="ap")
    assert settings.audit_key == "" and settings.audit_checkpoint_key == ""
    control = custody.plane_env("cp")
    assert "PLAB_AUDIT_CHECKPOINT_KEY_FILE" in control


# --- MONITOR never shows a secret -----------------------------------------------------
def redis_repr(data: bytes) -> str:
    """How MONITOR prints an argument (redis's sdscatrepr)."""
    escapes = {0x5C: "\\\\", 0x22: '\\"', 0x0A: "\\n", 0x0D: "\\r", 0x09: "\\t"}
    escapes |= {0x07: "\\a", 0x08: "\\b"}
    out = []
    for byte in data:
        if byte in escapes:
            out.append(escapes[byte])
        elif 0x20 <= byte < 0x7F:
            out.append(chr(byte))
        else:
            out.append(f"\\x{byte:02x}")
    return "".join(out)


def secret_forms(stack) -> dict[str, list[str]]:
    """Every secret the planes hold, in the forms it could travel: text, raw bytes,
    the HMAC pads the previous release sent, derived token-signing material."""
    import hashlib
    import hmac

    forms: dict[str, list[str]] = {}
    for name in ("secret_key", "token_key", "audit_key", "backup_key", "audit_checkpoint_key"):
        text = stack.secret(name)
        raw = bytes.fromhex(text)
        key = text.encode().ljust(64, b"\0")
        pads = [bytes(b ^ 0x36 for b in key), bytes(b ^ 0x5C for b in key)]
        material = hmac.new(text.encode(), b"productionlab token signing v1", hashlib.sha256)
        forms[name] = [text, redis_repr(raw), *(redis_repr(p)[:48] for p in pads)]
        forms[name].append(redis_repr(material.digest()))
    return forms


def test_monitor_shows_no_secret_during_a_write_a_login_and_a_token_issue(custody):
    admin = admin_of(custody)
    writer = create_user(admin, "writer", ["m-"])
    captured: list[bytes] = []
    ready = threading.Event()
    stop = threading.Event()

    def watch() -> None:
        with monitor_socket(custody) as s:
            s.settimeout(0.5)
            s.sendall(f"AUTH plab-monitor {MONITOR_PASSWORD}\r\nMONITOR\r\n".encode())
            while not stop.is_set():
                try:
                    chunk = s.recv(65536)
                except TimeoutError:
                    continue
                if not chunk:
                    return
                captured.append(chunk)
                if b"+OK\r\n+OK\r\n" in b"".join(captured):
                    ready.set()

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    assert ready.wait(30), b"".join(captured)
    assert writer.post("/write/m-1/some-value").status_code == 201  # a write
    assert writer.get("/read/m-1").status_code == 200  # a login (Basic on the app plane)
    assert Client(custody, writer.name, "wrong").get("/read/m-1").status_code == 401
    pair = writer.post("/auth/token")  # a token issue
    assert pair.status_code == 200, pair.text
    refreshed = Client(custody).post(
        "/auth/refresh", json={"refresh_token": pair.json()["refresh_token"]}
    )
    assert refreshed.status_code == 200, refreshed.text
    assert (
        admin.post(
            "/admin/users",
            json={"name": f"m{secrets.token_hex(3)}", "role": "reader", "prefixes": []},
        ).status_code
        == 201
    )
    assert cli(custody, "audit", "checkpoint").returncode == 0
    wait_for(lambda: b"token.issue" in b"".join(captured), what="the token issue in MONITOR")
    stop.set()
    watcher.join(10)
    seen = b"".join(captured).decode("utf-8", "replace")
    assert "evalsha" in seen.lower() and "some-value" in seen  # the write was captured
    for name, forms in secret_forms(custody).items():
        for form in forms:
            assert form not in seen, f"{name} travels to redis ({form[:12]}...)"


# --- the control plane archives, trims and checkpoints on its own -------------------
def test_the_log_is_archived_trimmed_and_checkpointed_on_its_own(custody):
    admin = admin_of(custody)
    writer = create_user(admin, "writer", ["a-"])
    keys = one_shard("a-", 60)  # one shard's chain passes the bound (each chain has its own)
    chain, meta = shard_for(keys[0]).audit
    for key in keys:
        assert writer.post(f"/write/{key}/v").status_code == 201
    cp = custody.redis_client()
    wait_for(lambda: cp.llen(chain) <= 40, what="the automatic trim")
    archive = custody.state / "audit" / "archive" / f"s{shard_of(keys[0]):02d}"
    segments = sorted(archive.glob("audit-*.jsonl"))
    assert segments, list(archive.iterdir())
    assert int(cp.hget(meta, "first")) > 1
    actions = [json.loads(r).get("action") for r in cp.lrange(chain, 0, -1)]
    assert "audit.trim" in actions
    # a scheduled checkpoint catches up with the head
    checkpoints = custody.state / "audit" / "checkpoints.jsonl"

    def caught_up() -> bool:
        head = AuditLog(cp).head()
        lines = checkpoints.read_text().splitlines()
        # format 2: every chain's head in one line
        return bool(lines) and json.loads(lines[-1])["chains"]["main"]["seq"] == head["seq"]

    wait_for(caught_up, what="a scheduled checkpoint of the head")
    assert (
        (custody.state / "audit" / "checkpoints.jsonl.pub")
        .read_text()
        .startswith("-----BEGIN PUBLIC KEY-----")
    )

    def verified_at_head() -> dict | None:
        # The main chain may still grow on its own (an earlier test's failed login is
        # audited when its window closes), so the checkpoint and the head are compared
        # in one verification, until a scheduled checkpoint has caught up again.
        report = verify(custody)
        return report if report["latest_checkpoint"]["seq"] == report["last"] else None

    report = wait_for(verified_at_head, what="a verification whose checkpoint is at the head")
    assert report["ok"] is True, report
    assert report["first"] == 1
    # the trimmed chain verifies with its archive: every one of its entries is checked
    trimmed = report["chains"][f"s{shard_of(keys[0]):02d}"]
    assert trimmed["ok"] is True and trimmed["checked"] >= 60, trimmed
    cp.close()


@contextlib.contextmanager
def bounded_stack(prefix: str, max_entries: int) -> Iterator[Supervisor]:
    """A small stack whose keeper trims past ``max_entries`` and signs its scheduled
    checkpoint only every 300 s (so a trim is not a round's work)."""
    directory = state_dir(prefix)
    stack = Supervisor(
        small_stack_config(
            directory,
            extra_env={
                "PLAB_AUDIT_MAX_ENTRIES": str(max_entries),
                "PLAB_AUDIT_CHECKPOINT_INTERVAL": "300",
            },
        )
    )
    stack.start(timeout=90)
    try:
        yield stack
    finally:
        stack.stop()
        shutil.rmtree(directory, ignore_errors=True)


def test_the_log_is_trimmed_when_it_passes_the_bound_not_at_the_next_round():
    """Bulk writes append faster than a 300 s round trims: the keeper checks the
    length between rounds and trims as soon as the log passes the bound."""
    with bounded_stack("plab-trim-", 40) as stack:
        checkpoints = stack.state / "audit" / "checkpoints.jsonl"
        signed_at_start = checkpoints.read_text().splitlines()
        writer = create_user(admin_of(stack), "writer", ["b-"])
        keys = one_shard("b-", 60)
        chain, meta = shard_for(keys[0]).audit
        for key in keys:
            assert writer.post(f"/write/{key}/v").status_code == 201
        cp = stack.redis_client()
        wait_for(lambda: cp.llen(chain) <= 40, timeout=60, what="the trim past the bound")
        assert int(cp.hget(meta, "first")) > 1
        # the round's other work (a checkpoint) still waits for the interval
        assert checkpoints.read_text().splitlines() == signed_at_start
        cp.close()
        assert verify(stack)["ok"] is True


def test_the_bound_holds_for_the_whole_log_not_for_each_chain():
    """Writes spread over every shard: no chain passes PLAB_AUDIT_MAX_ENTRIES on its own,
    the log as a whole does, and the keeper trims it (a bound per chain let redis hold
    one bound per chain: 17 of them)."""
    with bounded_stack("plab-bound-", 60) as stack:
        writer = create_user(admin_of(stack), "writer", ["w-"])
        keys = [f"w-{n}" for n in range(96)]  # six a shard on average
        for key in keys:
            assert writer.post(f"/write/{key}/v").status_code == 201
        cp = stack.redis_client()

        def whole_log() -> int:
            return sum(chain_lengths(cp).values())

        wait_for(lambda: whole_log() <= 60, timeout=60, what="the trim of the whole log")
        metas = [meta for _, meta in chain_keys().values()]
        trimmed = [meta for meta in metas if int(cp.hget(meta, "first") or 1) > 1]
        assert len(trimmed) > 1  # more than one chain gave up its oldest entries
        cp.close()
        assert verify(stack)["ok"] is True


def test_trim_level_cuts_the_longest_chains_to_one_length():
    assert trim_level([0] * 15 + [12, 60], 20) == 10
    assert trim_level([3000] * 16 + [10], 25_000) == 1561  # the quiet chain keeps its 10
    assert trim_level([100, 1, 1], 20) == 18
    assert trim_level([5, 5], 100) == 5  # under budget: nothing to cut
    assert trim_level([50] * 17, 5) == 1  # never below one entry a chain


# --- settings: the checkpoint key and the bounds -----------------------------------------
def control_env(**extra: str) -> dict[str, str]:
    env = {f"PLAB_{n}": secrets.token_hex(32) for n in ("SECRET_KEY", "TOKEN_KEY", "BACKUP_KEY")}
    env["PLAB_AUDIT_CHECKPOINT_KEY"] = secrets.token_hex(32)
    env["PLAB_TOKEN_PUBLIC_KEY"] = SigningKey(env["PLAB_TOKEN_KEY"]).public_hex
    env.update(extra)
    return env


def test_the_control_plane_requires_a_usable_checkpoint_key(tmp_path):
    import base64

    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()
    seed = key.private_bytes(
        serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
    )
    path = tmp_path / "checkpoint.pem"
    path.write_text(pem)
    for good in (
        {"PLAB_AUDIT_CHECKPOINT_KEY": seed.hex()},
        {"PLAB_AUDIT_CHECKPOINT_KEY": base64.b64encode(seed).decode()},
        {"PLAB_AUDIT_CHECKPOINT_KEY": pem},
    ):
        assert Settings.from_env(control_env(**good), plane="cp").audit_checkpoint_key
    file_env = control_env(PLAB_AUDIT_CHECKPOINT_KEY_FILE=str(path))
    del file_env["PLAB_AUDIT_CHECKPOINT_KEY"]
    assert Settings.from_env(file_env, plane="cp").audit_checkpoint_key == pem.strip()
    missing = control_env()
    del missing["PLAB_AUDIT_CHECKPOINT_KEY"]
    with pytest.raises(ConfigError, match="PLAB_AUDIT_CHECKPOINT_KEY is missing"):
        Settings.from_env(missing, plane="cp")
    for bad in ("not-a-key", "00" * 32, "0123456789abcdef" * 2, secrets.token_hex(16)):
        with pytest.raises(ConfigError, match="PLAB_AUDIT_CHECKPOINT_KEY is unusable"):
            Settings.from_env(control_env(PLAB_AUDIT_CHECKPOINT_KEY=bad), plane="cp")
    # the app plane needs none of it
    app_env = control_env()
    del app_env["PLAB_AUDIT_CHECKPOINT_KEY"]
    assert Settings.from_env(app_env, plane="ap").audit_checkpoint_key == ""


def test_audit_bounds_are_validated(tmp_path):
    settings = Settings.from_env(control_env(PLAB_STATE_DIR=str(tmp_path)), plane="cp")
    assert settings.audit_max_entries == 50_000  # never "keep everything" in redis
    assert settings.audit_checkpoint_interval == 300
    assert settings.audit_checkpoint_path == tmp_path / "audit" / "checkpoints.jsonl"
    assert settings.audit_archive_path == tmp_path / "audit" / "archive"
    for name, value in (
        ("PLAB_AUDIT_MAX_ENTRIES", "0"),
        ("PLAB_AUDIT_MAX_ENTRIES", "39"),
        ("PLAB_AUDIT_MAX_ENTRIES", "many"),
        ("PLAB_AUDIT_CHECKPOINT_INTERVAL", "0"),
        ("PLAB_AUDIT_CHECKPOINT_INTERVAL", "100000"),
    ):
        with pytest.raises(ConfigError, match=name):
            Settings.from_env(control_env(**{name: value}), plane="cp")


# --- migration and archive edge cases, on a scratch redis-server ----------------------
def legacy_log(client: redis.Redis, key: bytes, count: int) -> list[dict]:
    """What the previous release stored: HMAC-SHA1 chained entries and a head in the meta."""
    entries, prev = [], ""
    for seq in range(1, count + 1):
        entry = {"seq": seq, "prev": prev, "ts": "1700000000.000", "actor": "admin",
                 "action": "kv.put", "target": f"k{seq}", "outcome": "created",
                 "request_id": "", "client": "127.0.0.1", "version": str(seq)}  # fmt: skip
        entry["mac"] = prev = legacy_entry_mac(key, entry)
        entries.append(entry)
    client.rpush(AUDIT_LIST, *[json.dumps(e) for e in entries])
    client.hset(AUDIT_META, mapping={"seq": count, "mac": prev})
    return entries


def test_a_broken_legacy_chain_is_archived_as_failed_and_stays_reported(tmp_path):
    key = secrets.token_bytes(32)
    with RedisProcess() as client:
        entries = legacy_log(client, key, 6)
        forged = dict(entries[2], actor="mallory")
        client.lset(AUDIT_LIST, 2, json.dumps(forged))
        AuditLog(client).append(Actor("new-code"), "kv.put", "k-new", "created")
        archive = Archive(tmp_path / "archive")
        result = migrate_legacy(client, archive, key, Actor("audit-keeper"))
        assert result is not None and result.ok is False and "seq 3" in result.reason
        report = json.loads((archive.directory / LEGACY_REPORT).read_text())
        assert report["ok"] is False and (report["first"], report["last"]) == (1, 6)
        rest = [json.loads(r) for r in client.lrange(AUDIT_LIST, 0, -1)]
        assert [e["action"] for e in rest] == ["kv.put", "audit.migrate"]
        assert (rest[1]["target"], rest[1]["outcome"]) == ("legacy:1-6", "failed")
        assert not client.hexists(AUDIT_META, "mac")
        # the entry the new code appended before the migration links to the old head
        assert rest[0]["seq"] == 7 and rest[0]["prev"] == entry_hash(
            json.dumps(entries[-1]).encode()
        )
        checkpoints = CheckpointFile(tmp_path / "checkpoints.jsonl")
        outcome = verify_log(client, archive, checkpoints, {}, key)
        assert outcome.ok is False and outcome.first_bad_seq == 3, outcome.as_dict()
        assert migrate_legacy(client, archive, key, Actor("audit-keeper")) is None


def test_without_the_old_key_the_legacy_part_is_archived_unverified(tmp_path):
    key = secrets.token_bytes(32)
    with RedisProcess() as client:
        legacy_log(client, key, 4)
        archive = Archive(tmp_path / "archive")
        result = migrate_legacy(client, archive, None, Actor("audit-keeper"))
        assert result is not None and result.ok is None and result.outcome == "unverified"
        outcome = verify_log(client, archive, CheckpointFile(tmp_path / "c.jsonl"), {}, None)
        assert outcome.ok is True and "MACs not checked" in outcome.legacy
        # given the key later, verification checks the archived MACs after all
        checked = verify_log(client, archive, CheckpointFile(tmp_path / "c.jsonl"), {}, key)
        assert checked.ok is True and "MACs checked" in checked.legacy


def test_a_trim_refuses_when_the_log_moved_underneath(tmp_path):
    with RedisProcess() as client:
        log = AuditLog(client)
        for index in range(10):
            log.append(Actor("a"), "kv.put", f"k{index}", "created")
        archive = Archive(tmp_path / "archive")
        dropped, first, _ = archive_and_trim(client, archive, Actor("op"), keep=4)
        assert (dropped, first) == (6, 7)
        before = client.lrange(AUDIT_LIST, 0, -1)
        for expected_first, last_hash in ((1, "x" * 40), (7, "0" * 40)):
            stale = {"audit": Actor("op").audit_args(), "expected_first": expected_first}
            stale |= {"drop": 2, "last_hash": last_hash, "action": "audit.trim"}
            stale |= {"target": "t", "outcome": "ok"}
            with pytest.raises(redis.ResponseError, match="audit log moved"):
                AUDIT_TRIM(client, keys={"audit": AUDIT_KEYS}, args=stale)
        assert client.lrange(AUDIT_LIST, 0, -1) == before
        outcome = verify_log(client, archive, CheckpointFile(tmp_path / "c.jsonl"), {})
        assert outcome.ok is True and outcome.archived == 6 and outcome.checked == 11


# --- an attacker with the app plane's redis rights ------------------------------------
FORBIDDEN = [
    ("DEL", AUDIT_LIST),
    ("LTRIM", AUDIT_LIST, "1", "-1"),
    ("LSET", AUDIT_LIST, "0", "x"),
    ("LPOP", AUDIT_LIST),
    ("RPOP", AUDIT_LIST),
    ("LREM", AUDIT_LIST, "0", "x"),
    ("LINSERT", AUDIT_LIST, "BEFORE", "x", "y"),
    ("RENAME", AUDIT_LIST, "{plab}:audit-gone"),
    ("UNLINK", AUDIT_LIST),
    ("HSET", AUDIT_META, "first", "1000"),
    ("HDEL", AUDIT_META, "first"),
    ("DEL", AUDIT_META),
]
FORBIDDEN_IN_SCRIPTS = [
    "redis.call('LSET', KEYS[1], 0, 'x')",
    "redis.call('LTRIM', KEYS[1], 1, -1)",
    "redis.call('RPOP', KEYS[1])",
    "redis.call('DEL', KEYS[1])",
    "redis.call('HSET', KEYS[2], 'first', '1000')",
]


def test_append_only_rights_cannot_hide_or_change_covered_entries(custody):
    """(Last in the module: the junk it appends stays in the record for good.)"""
    admin = admin_of(custody)
    writer = create_user(admin, "writer", ["c-"])
    for index in range(5):
        assert writer.post(f"/write/c-{index}/v").status_code == 201
    result = cli(custody, "audit", "checkpoint")
    assert result.returncode == 0, result.stderr
    covered = json.loads(result.stdout)
    cp = custody.redis_client()
    before = cp.lrange(AUDIT_LIST, 0, -1)
    attacker = user_client(custody, "plab-appender", APPENDER_PASSWORD)
    for command in FORBIDDEN:
        with pytest.raises(redis.exceptions.NoPermissionError):
            attacker.execute_command(*command)
    for body in FORBIDDEN_IN_SCRIPTS:
        with pytest.raises(redis.exceptions.ResponseError) as refused:
            attacker.eval(body, 2, *AUDIT_KEYS)
        assert "can't run this command" in str(refused.value), refused.value
    # what it may do: append through the audit script (the app plane's own path) ...
    legit_seq = AuditLog(attacker).append(Actor("intruder"), "kv.put", "c-x", "created")
    # ... and push junk straight onto the list: a forged "earlier" entry, garbage
    forged = json.loads(before[-1])
    forged.update(action="user.delete", target="admin")
    attacker.rpush(AUDIT_LIST, json.dumps(forged), b"\x00garbage\xff")
    # the log still works for everyone after the junk (a KV write: its shard's
    # chain; an append to the main chain chains on after the junk)
    assert writer.post("/write/c-after/v").status_code == 201
    AuditLog(attacker).append(Actor("intruder"), "kv.put", "c-y", "created")
    assert cp.lrange(AUDIT_LIST, 0, len(before) - 1) == before  # covered entries intact
    report = verify(custody)
    assert report["ok"] is False
    junk_seq = legit_seq + 1
    assert report["first_bad_seq"] == junk_seq, report
    # nothing at or below the checkpoint is reported: it all still verifies
    assert all(int(p.split(":")[0]) > covered["seq"] for p in report["problems"]), report
    # the app plane's legitimate appends after the junk still chain on
    tail = [json.loads(r) for r in cp.lrange(AUDIT_LIST, -1, -1)]
    assert tail[0]["prev"] == entry_hash(cp.lindex(AUDIT_LIST, -2))
    attacker.close()
    cp.close()
