"""Generate the secrets and the self-signed TLS certificate a deployment needs.

Files are created once (0600) and never overwritten: running it again keeps
what exists, so data encrypted or signed with them stays readable.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import secrets
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from productionlab.settings import CP_SECRET_NAMES, SECRET_NAMES

REDIS_PASSWORDS = ("redis_ap_password", "redis_cp_password")
# audit_key is still generated: compose names it, and a stack upgraded from the
# previous release verifies its old audit entries with it.
ALL_SECRETS = (*SECRET_NAMES, *CP_SECRET_NAMES, *REDIS_PASSWORDS)
# Not secret: the public half of token_key, the only token key the app plane gets.
TOKEN_PUBLIC_KEY = "token_public_key"  # noqa: S105 - a file name, not a secret  # nosec B105


def write_private(path: Path, data: bytes, mode: int = 0o600) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    with os.fdopen(descriptor, "wb") as handle:
        handle.write(data)


def ensure_secrets(directory: Path, names: tuple[str, ...] = ALL_SECRETS) -> dict[str, Path]:
    """One file per secret, 32 random bytes as hex (for ``audit_checkpoint_key``: the
    Ed25519 seed); existing files are kept."""
    directory.mkdir(parents=True, exist_ok=True)
    os.chmod(directory, 0o700)
    paths = {}
    for name in names:
        path = directory / name
        if not path.exists():
            write_private(path, (secrets.token_hex(32) + "\n").encode())
        paths[name] = path
    if "token_key" in names:
        paths[TOKEN_PUBLIC_KEY] = write_token_public_keys(paths["token_key"])
    return paths


def write_token_public_keys(key_path: Path) -> Path:
    """Derive ``token_public_key`` (and ``.previous``) next to the private key file.

    The public file follows the private key: rewritten when it differs, and the
    previous one carries the previous private key file's modification time (the
    rotation time, from which the previous key retires), or is empty.
    """
    from productionlab.tokens import SigningKey

    directory = key_path.parent
    public = directory / TOKEN_PUBLIC_KEY
    _write_public(public, SigningKey(key_path.read_text().strip()).public_hex)
    previous, public_previous = Path(f"{key_path}.previous"), Path(f"{public}.previous")
    if previous.is_file():
        _write_public(public_previous, SigningKey(previous.read_text().strip()).public_hex)
        stamp = previous.stat().st_mtime
        os.utime(public_previous, (stamp, stamp))
    else:
        # Empty, not absent: compose mounts it as a secret either way.
        _write_public(public_previous, "")
    return public


def _write_public(path: Path, hex_key: str) -> None:
    """Not secret, but kept like the secrets beside it (0600 in a 0700 dir): the
    planes read it before they drop privileges; compose's copies are made 0444."""
    body = hex_key + "\n" if hex_key else ""
    if path.exists() and path.read_text() == body:
        return
    temp = path.with_name(f".{path.name}.new")
    temp.unlink(missing_ok=True)
    write_private(temp, body.encode(), mode=0o600)
    os.replace(temp, path)


def ensure_tls(
    directory: Path,
    hostnames: tuple[str, ...] = ("localhost",),
    addresses: tuple[str, ...] = ("127.0.0.1", "::1"),
    days: int = 365,
) -> tuple[Path, Path]:
    """A self-signed ECDSA P-256 certificate for local use; kept if it exists."""
    cert_path, key_path = directory / "tls.crt", directory / "tls.key"
    if cert_path.exists() and key_path.exists():
        return cert_path, key_path
    directory.mkdir(parents=True, exist_ok=True)
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.COMMON_NAME, hostnames[0]),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "productionlab self-signed"),
        ]
    )
    now = datetime.datetime.now(datetime.UTC)
    alt_names: list[x509.GeneralName] = [x509.DNSName(h) for h in hostnames]
    alt_names += [x509.IPAddress(ipaddress.ip_address(a)) for a in addresses]
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.SubjectAlternativeName(alt_names), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_cert_sign=True,
                crl_sign=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(key.public_key()), critical=False
        )
        .add_extension(
            x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False
        )
        .sign(key, hashes.SHA256())
    )
    for path in (cert_path, key_path):
        if path.exists():
            path.unlink()
    write_private(
        key_path,
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ),
    )
    write_private(cert_path, cert.public_bytes(serialization.Encoding.PEM), mode=0o644)
    return cert_path, key_path


# Redis's own TLS (mutual): a private CA, a server certificate for every address a
# client uses, and one client certificate per plane (and for compose's healthcheck).
# File names carry no dots so compose secrets can use them as they are.
REDIS_TLS_CA = "redis_ca_crt"
REDIS_TLS_CA_KEY = "redis_ca_key"  # stays with the operator: never given to a service
REDIS_TLS_SERVER = ("redis_server_crt", "redis_server_key")
REDIS_TLS_CLIENTS = ("ap", "cp")
REDIS_TLS_DAYS = 825


def redis_client_files(client: str) -> tuple[str, str]:
    """The certificate and key file names of one redis TLS client (``ap``, ``cp``, ...)."""
    return f"redis_{client}_crt", f"redis_{client}_key"


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _issue(
    subject: str,
    key: ec.EllipticCurvePrivateKey,
    issuer: x509.Certificate | None,
    issuer_key: ec.EllipticCurvePrivateKey,
    days: int,
    usage: x509.ObjectIdentifier | None = None,
    alt_names: list[x509.GeneralName] | None = None,
) -> x509.Certificate:
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.COMMON_NAME, subject),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "productionlab redis"),
        ]
    )
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(issuer.subject if issuer is not None else name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key()),
            critical=False,
        )
    )
    if issuer is None:
        builder = builder.add_extension(
            x509.BasicConstraints(ca=True, path_length=0), critical=True
        ).add_extension(
            x509.KeyUsage(
                digital_signature=False,
                key_cert_sign=True,
                crl_sign=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
    else:
        builder = builder.add_extension(x509.BasicConstraints(ca=False, path_length=None), True)
        builder = builder.add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        if alt_names:
            builder = builder.add_extension(x509.SubjectAlternativeName(alt_names), False)
    return builder.sign(issuer_key, hashes.SHA256())


def ensure_redis_tls(
    directory: Path,
    hostnames: tuple[str, ...] = ("localhost",),
    addresses: tuple[str, ...] = ("127.0.0.1", "::1"),
    clients: tuple[str, ...] = REDIS_TLS_CLIENTS,
    days: int = REDIS_TLS_DAYS,
) -> dict[str, Path]:
    """The redis CA, server certificate and client certificates under ``directory``
    (keys 0600, certificates 0644); what exists is kept, a missing client is added.

    The server certificate names every address a client connects to (loopback, and
    the compose service name ``redis`` when asked); clients verify it against the CA
    and redis verifies each client's certificate against the same CA
    (``tls-auth-clients yes``), so only holders of a certificate from this CA connect.
    """
    directory.mkdir(parents=True, exist_ok=True)
    os.chmod(directory, 0o700)
    ca_path, ca_key_path = directory / REDIS_TLS_CA, directory / REDIS_TLS_CA_KEY
    if not (ca_path.exists() and ca_key_path.exists()):
        for path in (ca_path, ca_key_path):
            path.unlink(missing_ok=True)
        ca_key = ec.generate_private_key(ec.SECP256R1())
        ca = _issue("productionlab redis CA", ca_key, None, ca_key, days)
        write_private(ca_key_path, _pem_key(ca_key))
        write_private(ca_path, ca.public_bytes(serialization.Encoding.PEM), mode=0o644)
    ca = x509.load_pem_x509_certificate(ca_path.read_bytes())
    ca_key = serialization.load_pem_private_key(ca_key_path.read_bytes(), password=None)
    assert isinstance(ca_key, ec.EllipticCurvePrivateKey)  # we wrote it  # nosec B101
    paths = {REDIS_TLS_CA: ca_path, REDIS_TLS_CA_KEY: ca_key_path}
    alt_names: list[x509.GeneralName] = [x509.DNSName(h) for h in hostnames]
    alt_names += [x509.IPAddress(ipaddress.ip_address(a)) for a in addresses]
    wanted = [(REDIS_TLS_SERVER, "redis", x509.oid.ExtendedKeyUsageOID.SERVER_AUTH, alt_names)]
    wanted += [
        (redis_client_files(c), f"plab-{c}", x509.oid.ExtendedKeyUsageOID.CLIENT_AUTH, None)
        for c in clients
    ]
    for (cert_name, key_name), subject, usage, names in wanted:
        cert_path, key_path = directory / cert_name, directory / key_name
        if not (cert_path.exists() and key_path.exists()):
            for path in (cert_path, key_path):
                path.unlink(missing_ok=True)
            key = ec.generate_private_key(ec.SECP256R1())
            cert = _issue(subject, key, ca, ca_key, days, usage, names)
            write_private(key_path, _pem_key(key))
            write_private(cert_path, cert.public_bytes(serialization.Encoding.PEM), mode=0o644)
        paths[cert_name], paths[key_name] = cert_path, key_path
    return paths
