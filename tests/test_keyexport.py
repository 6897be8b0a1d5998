"""``productionlab keys export/import``: the backup key (and the audit-checkpoint
key where there is one) under a passphrase; a restore drill from the exported
keys after the live key is lost; a wrong passphrase is one clean line."""

from __future__ import annotations

import json
import secrets
import subprocess
from pathlib import Path

import pytest

from productionlab.keyexport import KeyExportError, open_export, seal
from tests.conftest import admin_of, run_cli

PASSPHRASE = "correct horse battery staple"


def cli(env: dict, *args: str) -> subprocess.CompletedProcess:
    return run_cli(*args, env=env, timeout=300)


def one_line(result: subprocess.CompletedProcess) -> str:
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    return lines[0]


@pytest.fixture
def exported(stack_factory, tmp_path):
    stack = stack_factory(admin_rate=1000, admin_burst=1000)
    admin = admin_of(stack)
    for index in range(20):
        assert admin.post(f"/ops/write/k-{index:02d}/v-{index}").status_code == 201
    env = stack.plane_env("cp")
    backups = tmp_path / "backups"
    made = cli(env, "backup", "create", "--dir", str(backups), "--quiet")
    assert made.returncode == 0, made.stderr
    (backup,) = backups.iterdir()
    pass_file = tmp_path / "passphrase"
    pass_file.write_text(PASSPHRASE + "\n")
    out = tmp_path / "keys.plabkeys"
    result = cli(env, "keys", "export", "--out", str(out), "--passphrase-file", str(pass_file))
    assert result.returncode == 0, result.stderr
    return stack, env, backup, out, pass_file


def test_drill_from_exported_keys_after_the_live_key_is_lost(exported, tmp_path):
    _, env, backup, out, pass_file = exported
    document = json.loads(out.read_text())
    assert document["format"] == "productionlab-keys" and document["version"] == 1
    assert document["kdf"]["name"] == "scrypt" and document["cipher"]["name"] == "AES-256-GCM"
    assert document["metadata"]["keys"] == ["audit_checkpoint_key", "backup_key"]
    live_key_file = Path(env["PLAB_BACKUP_KEY_FILE"])
    original = live_key_file.read_text().strip()
    assert original not in out.read_text()  # encrypted, not copied
    assert (out.stat().st_mode & 0o777) == 0o600
    # The state volume is lost: the live backup key is now another one.
    live_key_file.write_text(secrets.token_hex(32) + "\n")
    without = cli(env, "backup", "drill", "--file", str(backup), "--quiet")
    assert without.returncode != 0
    drill = cli(
        env,
        "backup",
        "drill",
        "--file",
        str(backup),
        "--quiet",
        "--keys",
        str(out),
        "--passphrase-file",
        str(pass_file),
    )
    assert drill.returncode == 0, drill.stdout + drill.stderr
    assert drill.stdout.startswith("drill PASS") and "restored: 20 keys" in drill.stdout
    # And the key files come back from the export.
    restored = tmp_path / "restored-secrets"
    imported = cli(
        env, "keys", "import", str(out), "--dir", str(restored), "--passphrase-file", str(pass_file)
    )
    assert imported.returncode == 0, imported.stderr
    assert (restored / "backup_key").read_text().strip() == original
    assert (restored / "backup_key").stat().st_mode & 0o777 == 0o600
    checkpoint_key = Path(env["PLAB_AUDIT_CHECKPOINT_KEY_FILE"]).read_text().strip()
    assert (restored / "audit_checkpoint_key").read_text().strip() == checkpoint_key


def test_a_wrong_passphrase_is_one_clean_line(exported, tmp_path):
    _, env, backup, out, _ = exported
    wrong = tmp_path / "wrong"
    wrong.write_text("not the right passphrase\n")
    for args in (
        ("keys", "import", str(out), "--dir", str(tmp_path / "x"), "--passphrase-file", str(wrong)),
        (
            "backup",
            "drill",
            "--file",
            str(backup),
            "--keys",
            str(out),
            "--passphrase-file",
            str(wrong),
        ),
    ):
        result = cli(env, *args)
        assert result.returncode == 1
        assert one_line(result) == (
            "productionlab: wrong passphrase, or the key export was altered"
        )
    assert not (tmp_path / "x" / "backup_key").exists()


def test_export_refuses_to_overwrite_and_a_short_passphrase(exported, tmp_path):
    _, env, _, out, pass_file = exported
    again = cli(env, "keys", "export", "--out", str(out), "--passphrase-file", str(pass_file))
    assert again.returncode == 1 and "exists; give --force" in one_line(again)
    short = tmp_path / "short"
    short.write_text("tooshort\n")
    result = cli(
        env, "keys", "export", "--out", str(tmp_path / "k2"), "--passphrase-file", str(short)
    )
    assert result.returncode == 1 and "at least 12 characters" in one_line(result)


@pytest.mark.parametrize(
    "field,change",
    [
        ("metadata", lambda m: {**m, "backup_key_id": "forged"}),
        ("kdf", lambda k: {**k, "n": 2**15}),
        ("cipher", lambda c: {**c, "nonce": "AAAAAAAAAAAAAAAA"}),
        ("ciphertext", lambda c: c[:-8] + ("A" * 8 if not c.endswith("A" * 8) else "B" * 8)),
    ],
)
def test_every_part_of_the_export_is_authenticated(field, change):
    document = seal({"backup_key": "a" * 64, "audit_checkpoint_key": "b" * 64}, PASSPHRASE)
    assert open_export(document, PASSPHRASE) == {
        "backup_key": "a" * 64,
        "audit_checkpoint_key": "b" * 64,
    }
    document[field] = change(document[field])
    with pytest.raises(KeyExportError, match="wrong passphrase, or the key export was altered"):
        open_export(document, PASSPHRASE)


def test_absurd_kdf_parameters_are_refused_before_any_work():
    document = seal({"backup_key": "a" * 64}, PASSPHRASE)
    document["kdf"]["n"] = 2**30
    with pytest.raises(KeyExportError, match="out of range"):
        open_export(document, PASSPHRASE)
