"""``productionlab keys export|import``: the keys that open the backups, kept
somewhere a lost state volume does not take them along.

The export holds the backup key (it decrypts every backup) and, where the
stack has one, the audit-checkpoint key (it signs the checkpoints that anchor
the audit chain), encrypted under an operator passphrase:

- KDF: scrypt (n=2^16, r=8, p=1: 64 MiB, well under a second here); its
  parameters and salt are in the file, so a later release can raise them and
  still read old exports; a file asking for absurd parameters is refused
  before any work is done.
- Cipher: AES-256-GCM, 96-bit random nonce. Everything but the ciphertext
  (format, version, KDF, cipher, metadata: when, which keys, their ids) is the
  associated data, so a changed parameter or label fails authentication just
  like a changed byte of ciphertext.

A wrong passphrase and a tampered file are one and the same error (GCM cannot
tell them apart), one line on stderr.
"""

from __future__ import annotations

import argparse
import base64
import datetime
import getpass
import json
import os
import sys
from collections.abc import Mapping
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

from productionlab.backup_format import BackupError, key_id

FORMAT = "productionlab-keys"
VERSION = 1
SCRYPT_N, SCRYPT_R, SCRYPT_P = 2**16, 8, 1
MAX_N, MAX_R, MAX_P = 2**20, 32, 16
MIN_PASSPHRASE = 12
# The secrets an export carries, by their settings/secret-file name.
EXPORTED = ("backup_key", "audit_checkpoint_key")


class KeyExportError(BackupError):
    """One line for the operator (the CLI prints it and exits 1)."""


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _unb64(text: object, what: str) -> bytes:
    try:
        return base64.b64decode(str(text), validate=True)
    except ValueError as exc:
        raise KeyExportError(f"the key export's {what} is not base64") from exc


def _aad(document: Mapping[str, object]) -> bytes:
    header = {k: v for k, v in document.items() if k != "ciphertext"}
    return json.dumps(header, sort_keys=True, separators=(",", ":")).encode()


def _derive(passphrase: str, salt: bytes, n: int, r: int, p: int) -> bytes:
    return Scrypt(salt=salt, length=32, n=n, r=r, p=p).derive(passphrase.encode("utf-8"))


def seal(keys: Mapping[str, str], passphrase: str, now: datetime.datetime | None = None) -> dict:
    """The export document for ``keys`` (name -> secret text)."""
    if len(passphrase) < MIN_PASSPHRASE:
        raise KeyExportError(f"the passphrase must be at least {MIN_PASSPHRASE} characters")
    present = {name: value for name, value in keys.items() if value}
    if "backup_key" not in present:
        raise KeyExportError("no backup key is configured (PLAB_BACKUP_KEY[_FILE])")
    salt, nonce = os.urandom(16), os.urandom(12)
    now = now or datetime.datetime.now(datetime.UTC)
    document: dict = {
        "format": FORMAT,
        "version": VERSION,
        "kdf": {"name": "scrypt", "n": SCRYPT_N, "r": SCRYPT_R, "p": SCRYPT_P, "salt": _b64(salt)},
        "cipher": {"name": "AES-256-GCM", "nonce": _b64(nonce)},
        "metadata": {
            "created": now.strftime("%Y-%m-%dT%H:%M:%SZ"),
            "keys": sorted(present),
            "backup_key_id": key_id(present["backup_key"]),
        },
    }
    key = _derive(passphrase, salt, SCRYPT_N, SCRYPT_R, SCRYPT_P)
    plaintext = json.dumps(present, sort_keys=True).encode()
    document["ciphertext"] = _b64(AESGCM(key).encrypt(nonce, plaintext, _aad(document)))
    return document


def open_export(document: Mapping[str, object], passphrase: str) -> dict[str, str]:
    """The keys of an export, or KeyExportError (wrong passphrase, altered, unknown)."""
    if document.get("format") != FORMAT:
        raise KeyExportError("not a productionlab key export")
    if document.get("version") != VERSION:
        raise KeyExportError(f"key export version {document.get('version')!r} is not supported")
    kdf, cipher = document.get("kdf"), document.get("cipher")
    if not isinstance(kdf, dict) or not isinstance(cipher, dict):
        raise KeyExportError("the key export has no KDF or cipher parameters")
    if kdf.get("name") != "scrypt" or cipher.get("name") != "AES-256-GCM":
        raise KeyExportError(f"unsupported KDF/cipher {kdf.get('name')}/{cipher.get('name')}")
    n, r, p = kdf.get("n"), kdf.get("r"), kdf.get("p")
    if not all(isinstance(v, int) for v in (n, r, p)):
        raise KeyExportError("the key export's scrypt parameters are not numbers")
    if not (2 <= n <= MAX_N and n & (n - 1) == 0 and 1 <= r <= MAX_R and 1 <= p <= MAX_P):
        raise KeyExportError(
            f"the key export's scrypt parameters are out of range (n={n}, r={r}, p={p})"
        )
    key = _derive(passphrase, _unb64(kdf.get("salt"), "salt"), n, r, p)
    try:
        plaintext = AESGCM(key).decrypt(
            _unb64(cipher.get("nonce"), "nonce"),
            _unb64(document.get("ciphertext"), "ciphertext"),
            _aad(document),
        )
    except (InvalidTag, ValueError) as exc:
        raise KeyExportError("wrong passphrase, or the key export was altered") from exc
    keys = json.loads(plaintext)
    return {str(name): str(value) for name, value in keys.items() if name in EXPORTED}


def read_export(path: Path, passphrase: str) -> dict[str, str]:
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise KeyExportError(f"cannot read {path}: {exc.strerror}") from exc
    except ValueError as exc:
        raise KeyExportError(f"{path} is not a key export (not JSON)") from exc
    if not isinstance(document, dict):
        raise KeyExportError(f"{path} is not a key export")
    return open_export(document, passphrase)


def passphrase(file: str | None, *, confirm: bool) -> str:
    """From ``--passphrase-file`` (first line), else a prompt on the terminal."""
    if file:
        try:
            text = Path(file).read_text(encoding="utf-8")
        except OSError as exc:
            raise KeyExportError(f"cannot read the passphrase file {file}: {exc.strerror}") from exc
        return text.splitlines()[0] if text.splitlines() else ""
    if not sys.stdin.isatty():
        raise KeyExportError("no terminal to ask for the passphrase: give --passphrase-file")
    first = getpass.getpass("key export passphrase: ")
    if confirm and getpass.getpass("again: ") != first:
        raise KeyExportError("the passphrases differ")
    return first


def write_export(path: Path, document: dict) -> None:
    from productionlab.files import write_atomic

    write_atomic(path, json.dumps(document, indent=2) + "\n", mode=0o600)


def live_keys() -> dict[str, str]:
    from productionlab.settings import Settings

    settings = Settings.from_env(plane="cp")
    return {name: getattr(settings, name, "") or "" for name in EXPORTED}


def cmd_keys_export(args: argparse.Namespace) -> int:
    keys = live_keys()
    document = seal(keys, passphrase(args.passphrase_file, confirm=True))
    out = Path(args.out)
    if out.exists() and not args.force:
        raise KeyExportError(f"{out} exists; give --force to replace it")
    write_export(out, document)
    meta = document["metadata"]
    print(
        f"keys: exported {', '.join(meta['keys'])} to {out} "
        f"(backup key id {meta['backup_key_id']}); keep it and its passphrase apart"
    )
    return 0


def cmd_keys_import(args: argparse.Namespace) -> int:
    keys = read_export(Path(args.file), passphrase(args.passphrase_file, confirm=False))
    directory = Path(args.dir)
    directory.mkdir(parents=True, exist_ok=True)
    targets = {name: directory / name for name in keys}
    clashing = [
        str(p) for n, p in targets.items() if p.exists() and p.read_text().strip() != keys[n]
    ]
    if clashing and not args.force:
        raise KeyExportError(
            f"{', '.join(clashing)} exist with other values; give --force to replace them"
        )
    from productionlab.files import write_atomic

    for name, path in targets.items():
        write_atomic(path, keys[name] + "\n", mode=0o600)
    print(f"keys: wrote {', '.join(str(p) for p in targets.values())}")
    return 0


def register(commands: argparse._SubParsersAction) -> None:
    from productionlab.opscli import command_group

    keys = command_group(
        commands, "keys", "export/import the backup and audit-checkpoint keys under a passphrase"
    )
    export = keys.add_parser("export", help="write the keys, encrypted (scrypt + AES-256-GCM)")
    export.add_argument("--out", required=True)
    export.add_argument("--passphrase-file", help="default: ask on the terminal (twice)")
    export.add_argument("--force", action="store_true", help="replace an existing file")
    export.set_defaults(handler=cmd_keys_export)
    imp = keys.add_parser("import", help="write the keys of an export back as secret files")
    imp.add_argument("file")
    imp.add_argument("--dir", required=True, help="the secrets dir (e.g. var/secrets, secrets)")
    imp.add_argument("--passphrase-file", help="default: ask on the terminal")
    imp.add_argument("--force", action="store_true", help="replace files with other values")
    imp.set_defaults(handler=cmd_keys_import)
