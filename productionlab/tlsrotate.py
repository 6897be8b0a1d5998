"""``productionlab tls rotate``: put a new certificate and key in front of the
clients without dropping a request.

Everything is checked before anything is touched: both files parse, the key
belongs to the certificate, the certificate is valid now. Then:

- local stack (``make run``; found through its ``stack.json``, see
  ``productionlab/stackfile.py``): the files in ``<state>/tls/`` are replaced by
  rename (the old pair is kept as ``*.previous``), ``nginx -t`` checks the
  configuration with them, and the edge's master gets SIGHUP: it starts new
  workers with the new certificate while the old ones finish their requests
  (a graceful reload). If ``nginx -t`` fails the old pair is put back.
- compose (``--dir secrets``): the control plane must not write the edge's
  files, so the operator's command writes the host's secret files *in place*
  (compose bind-mounts each secret file; a rename would leave the container on
  the old inode) and the edge's own entry script (docker/edge/edge.sh) sees
  them change, runs ``nginx -t`` and reloads. A half-written or mismatched
  pair fails ``nginx -t`` and is simply retried on the edge's next look.
"""

from __future__ import annotations

import argparse
import datetime
import ipaddress
import os
import shutil
import signal
import subprocess  # runs nginx -t only  # nosec B404
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa

from productionlab.files import write_atomic


class RotateError(Exception):
    """A one-line reason the rotation did not happen (nothing was changed)."""


@dataclass(frozen=True)
class Pair:
    cert_pem: bytes
    key_pem: bytes
    cert: x509.Certificate

    @property
    def fingerprint(self) -> str:
        return self.cert.fingerprint(hashes.SHA256()).hex()

    @property
    def expires(self) -> datetime.datetime:
        return self.cert.not_valid_after_utc


def _public_bytes(key: object) -> bytes:
    return key.public_bytes(  # type: ignore[attr-defined]
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def validate(cert_pem: bytes, key_pem: bytes, now: datetime.datetime | None = None) -> Pair:
    """The pair, or RotateError: it parses, the key matches, it is valid now."""
    now = now or datetime.datetime.now(datetime.UTC)
    try:
        cert = x509.load_pem_x509_certificate(cert_pem)
    except ValueError as exc:
        raise RotateError(f"the certificate is not a PEM X.509 certificate ({exc})") from exc
    try:
        key = serialization.load_pem_private_key(key_pem, password=None)
    except (ValueError, TypeError) as exc:
        raise RotateError(
            f"the key is not an unencrypted PEM private key ({type(exc).__name__})"
        ) from exc
    if not isinstance(
        key,
        (
            rsa.RSAPrivateKey,
            ec.EllipticCurvePrivateKey,
            ed25519.Ed25519PrivateKey,
            ed448.Ed448PrivateKey,
        ),
    ):
        raise RotateError(f"unsupported key type {type(key).__name__}")
    if _public_bytes(key.public_key()) != _public_bytes(cert.public_key()):
        raise RotateError("the key does not belong to the certificate")
    if cert.not_valid_after_utc <= now:
        raise RotateError(f"the certificate expired on {cert.not_valid_after_utc:%Y-%m-%d}")
    if cert.not_valid_before_utc > now:
        raise RotateError(
            f"the certificate is not valid before {cert.not_valid_before_utc:%Y-%m-%d %H:%M} UTC"
        )
    return Pair(cert_pem, key_pem, cert)


def names_of(cert_path: Path) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """The DNS names and IP addresses of the current certificate (to keep them)."""
    try:
        cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
        alt = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except (OSError, ValueError, x509.ExtensionNotFound):
        return ("localhost",), ("127.0.0.1", "::1")
    dns = tuple(alt.get_values_for_type(x509.DNSName)) or ("localhost",)
    ips = tuple(str(a) for a in alt.get_values_for_type(x509.IPAddress))
    return dns, ips


def generate(hostnames: tuple[str, ...], addresses: tuple[str, ...], days: int) -> Pair:
    """A new self-signed pair, made in a private temp dir by the same code as ``make run``'s."""
    from productionlab.secretgen import ensure_tls

    for address in addresses:
        ipaddress.ip_address(address)
    with tempfile.TemporaryDirectory(prefix="plab-tls-") as directory:
        cert_path, key_path = ensure_tls(Path(directory), hostnames, addresses, days=days)
        return validate(cert_path.read_bytes(), key_path.read_bytes())


def _replace(path: Path, data: bytes, mode: int) -> None:
    """Write ``path`` by rename, keeping the owner of the file it replaces."""
    write_atomic(path, data, mode, keep_owner=True)


def _overwrite(path: Path, data: bytes) -> None:
    """Write ``path`` in place (same inode, same mode), for files bind-mounted into a
    container. ``make secrets`` leaves them 0444, so the owner's write bit is lent
    for the write and taken back."""
    mode = path.stat().st_mode & 0o7777 if path.exists() else 0o444
    if path.exists():
        os.chmod(path, mode | 0o200)
    try:
        with open(path, "r+b" if path.exists() else "wb") as handle:
            handle.truncate(0)
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
    finally:
        os.chmod(path, mode)


@dataclass(frozen=True)
class LocalEdge:
    """Where a ``make run`` stack keeps its TLS pair and its nginx."""

    state_dir: Path

    @property
    def cert(self) -> Path:
        return self.state_dir / "tls" / "tls.crt"

    @property
    def key(self) -> Path:
        return self.state_dir / "tls" / "tls.key"

    @property
    def nginx_dir(self) -> Path:
        return self.state_dir / "nginx"

    def master_pid(self) -> int | None:
        try:
            pid = int((self.nginx_dir / "nginx.pid").read_text().strip())
            os.kill(pid, 0)
        except (OSError, ValueError):
            return None
        return pid

    def config_ok(self) -> str | None:
        """None when ``nginx -t`` accepts the configuration (with the files now in place)."""
        nginx = shutil.which("nginx") or next(
            (p for p in ("/usr/sbin/nginx", "/usr/local/sbin/nginx") if os.path.exists(p)), None
        )
        if nginx is None:
            return "nginx is not installed"
        check = subprocess.run(  # noqa: S603 - nginx -t on the stack's own config  # nosec B603
            [
                nginx,
                "-t",
                "-q",
                "-p",
                str(self.nginx_dir),
                "-c",
                str(self.nginx_dir / "nginx.conf"),
            ],
            capture_output=True,
            text=True,
            check=False,
        )
        if check.returncode == 0:
            return None
        return (check.stderr.strip().splitlines() or ["no message"])[-1]

    def install(self, pair: Pair) -> str:
        """Swap the pair in, check it with nginx, reload the edge; roll back on a refusal."""
        if not self.cert.parent.is_dir():
            raise RotateError(f"{self.cert.parent} does not exist: start the stack once first")
        previous = {path: path.read_bytes() for path in (self.key, self.cert) if path.exists()}
        for path, data in previous.items():
            _replace(path.with_name(path.name + ".previous"), data, 0o600)
        _replace(self.key, pair.key_pem, 0o600)
        _replace(self.cert, pair.cert_pem, 0o644)
        problem = self.config_ok()
        if problem is not None:
            for path, data in previous.items():
                _replace(path, data, 0o600 if path == self.key else 0o644)
            raise RotateError(f"nginx refused the new pair, the old one is back: {problem}")
        pid = self.master_pid()
        if pid is None:
            return "installed; the edge is not running, it will serve it when it starts"
        os.kill(pid, signal.SIGHUP)
        return f"installed; edge (nginx master {pid}) reloading gracefully"


def install_in_dir(directory: Path, pair: Pair) -> str:
    """Write the pair into a compose secrets dir in place; the edge reloads on its own."""
    cert, key = directory / "tls.crt", directory / "tls.key"
    if not directory.is_dir():
        raise RotateError(f"{directory} is not a directory")
    for path in (key, cert):
        if path.exists():
            _replace(path.with_name(path.name + ".previous"), path.read_bytes(), 0o600)
    _overwrite(key, pair.key_pem)
    _overwrite(cert, pair.cert_pem)
    return "written in place; the edge's entry script reloads nginx when it sees them change"


def _read(path: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise RotateError(f"cannot read {path}: {exc.strerror}") from exc


def cmd_tls_rotate(args: argparse.Namespace) -> int:
    from productionlab import stackfile

    try:
        if bool(args.cert) != bool(args.key):
            raise RotateError(
                "give both --cert and --key, or neither to generate a self-signed pair"
            )
        if args.dir:
            target_cert = Path(args.dir) / "tls.crt"
            edge = None
        else:
            descriptor = stackfile.find(os.environ)
            if descriptor is None:
                raise stackfile.NoStackFound(os.environ)
            edge = LocalEdge(descriptor.state_dir)
            target_cert = edge.cert
        if args.cert:
            pair = validate(_read(args.cert), _read(args.key))
        else:
            dns, ips = names_of(target_cert)
            if args.hostname:
                dns = tuple(args.hostname)
            pair = generate(dns, ips, args.days)
        message = install_in_dir(Path(args.dir), pair) if edge is None else edge.install(pair)
    except RotateError as exc:
        print(f"productionlab: tls rotate: {exc}", file=sys.stderr)
        return 1
    print(
        f"tls rotate: sha256 {pair.fingerprint}, expires {pair.expires:%Y-%m-%d}: {message}",
        flush=True,
    )
    return 0


def register(commands: argparse._SubParsersAction) -> None:
    tls = commands.add_parser(
        "tls", help="rotate the edge's TLS certificate without downtime"
    ).add_subparsers(dest="tls_command", required=True, metavar="ACTION")
    rotate = tls.add_parser(
        "rotate",
        help="validate and install a new certificate+key (or a new self-signed one), "
        "then reload the edge gracefully",
    )
    rotate.add_argument("--cert", help="the new certificate (PEM; with its chain)")
    rotate.add_argument("--key", help="its private key (PEM, unencrypted)")
    rotate.add_argument(
        "--dir",
        help="a compose secrets dir (tls.crt, tls.key): write there in place; "
        "the edge container reloads itself",
    )
    rotate.add_argument(
        "--hostname",
        action="append",
        help="DNS name for a generated certificate (repeatable; default: the current one's)",
    )
    rotate.add_argument("--days", type=int, default=365, help="validity of a generated one")
    rotate.set_defaults(handler=cmd_tls_rotate)
