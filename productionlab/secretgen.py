"""Generate the secrets and the self-signed TLS certificate a deployment needs.

Files are created once (0600) and never overwritten: running it again keeps
what exists, so data encrypted or signed with them stays readable.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import secrets
from dataclasses import dataclass
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
    from productionlab.token_keys import SigningKey

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


def pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def alt_names(
    hostnames: tuple[str, ...], addresses: tuple[str, ...]
) -> tuple[x509.GeneralName, ...]:
    names: list[x509.GeneralName] = [x509.DNSName(h) for h in hostnames]
    return (*names, *(x509.IPAddress(ipaddress.ip_address(a)) for a in addresses))


def validity(days: int) -> tuple[datetime.datetime, datetime.datetime]:
    """From five minutes ago (a little clock skew) for ``days``."""
    now = datetime.datetime.now(datetime.UTC)
    return now - datetime.timedelta(minutes=5), now + datetime.timedelta(days=days)


# Key usages no certificate of ours has: its keys sign, never encrypt or agree.
_UNUSED_KEY_USAGES = dict.fromkeys(
    (
        "content_commitment",
        "key_encipherment",
        "data_encipherment",
        "key_agreement",
        "encipher_only",
        "decipher_only",
    ),
    False,
)


def ca_key_usage(*, digital_signature: bool, crl_sign: bool) -> x509.KeyUsage:
    """What a CA's key may do: sign certificates, and as asked sign TLS handshakes
    (a self-signed server certificate) or CRLs (a CA that only issues)."""
    return x509.KeyUsage(
        digital_signature=digital_signature,
        key_cert_sign=True,
        crl_sign=crl_sign,
        **_UNUSED_KEY_USAGES,
    )


@dataclass(frozen=True)
class Purpose:
    """What a certificate is for: with ``key_usage`` it is a CA (path length 0: it
    signs leaves only), else a leaf; ``usage`` is its extended key usage (server or
    client auth), ``names`` the DNS names and addresses (SANs) it is valid for."""

    key_usage: x509.KeyUsage | None = None
    usage: x509.ObjectIdentifier | tuple[x509.ObjectIdentifier, ...] | None = None
    names: tuple[x509.GeneralName, ...] = ()


def build_certificate(
    subject: x509.Name,
    key: ec.EllipticCurvePrivateKey,
    valid: tuple[datetime.datetime, datetime.datetime],
    purpose: Purpose,
    issuer: tuple[x509.Certificate, ec.EllipticCurvePrivateKey] | None = None,
) -> x509.Certificate:
    """The one X.509 builder (SHA-256); self-signed without ``issuer``."""
    issuer_name, issuer_key = (issuer[0].subject, issuer[1]) if issuer else (subject, key)
    ca = purpose.key_usage is not None
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(valid[0])
        .not_valid_after(valid[1])
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key()),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=ca, path_length=0 if ca else None), critical=True)
    )
    if purpose.key_usage is not None:
        builder = builder.add_extension(purpose.key_usage, critical=True)
    if purpose.usage is not None:
        usages = purpose.usage if isinstance(purpose.usage, tuple) else (purpose.usage,)
        builder = builder.add_extension(x509.ExtendedKeyUsage(list(usages)), critical=False)
    if purpose.names:
        builder = builder.add_extension(
            x509.SubjectAlternativeName(list(purpose.names)), critical=False
        )
    return builder.sign(issuer_key, hashes.SHA256())


def write_pair(
    cert_path: Path, key_path: Path, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey
) -> None:
    """Key 0600, certificate 0644, replacing what a half-written pair left."""
    for path in (cert_path, key_path):
        path.unlink(missing_ok=True)
    write_private(key_path, pem_key(key))
    write_private(cert_path, cert.public_bytes(serialization.Encoding.PEM), mode=0o644)


def _name(common_name: str, organization: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, organization),
        ]
    )


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
    cert = build_certificate(
        _name(hostnames[0], "productionlab self-signed"),
        key,
        validity(days),
        Purpose(
            key_usage=ca_key_usage(digital_signature=True, crl_sign=False),
            usage=x509.oid.ExtendedKeyUsageOID.SERVER_AUTH,
            names=alt_names(hostnames, addresses),
        ),
    )
    write_pair(cert_path, key_path, cert, key)
    return cert_path, key_path


# Redis's own TLS (mutual): a private CA, a server certificate for every address a
# client uses, and one client certificate per plane (and for compose's healthcheck).
# File names carry no dots so compose secrets can use them as they are.
REDIS_TLS_CA = "redis_ca_crt"
REDIS_TLS_CA_KEY = "redis_ca_key"  # stays with the operator: never given to a service
REDIS_TLS_SERVER = ("redis_server_crt", "redis_server_key")
REDIS_TLS_CLIENTS = ("ap", "cp")
REDIS_TLS_DAYS = 825
REDIS_ORGANIZATION = "productionlab redis"


def _covers(
    cert_path: Path,
    names: tuple[x509.GeneralName, ...],
    usage: x509.ObjectIdentifier | tuple[x509.ObjectIdentifier, ...],
) -> bool:
    """Whether the certificate names every one of ``names`` and has every ``usage``."""
    cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    try:
        has_names = set(cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value)
        has_usages = set(cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value)
    except x509.ExtensionNotFound:
        return False
    usages = usage if isinstance(usage, tuple) else (usage,)
    return set(names) <= has_names and set(usages) <= has_usages


def redis_client_files(client: str) -> tuple[str, str]:
    """The certificate and key file names of one redis TLS client (``ap``, ``cp``, ...)."""
    return f"redis_{client}_crt", f"redis_{client}_key"


def ensure_redis_tls(
    directory: Path,
    hostnames: tuple[str, ...] = ("localhost",),
    addresses: tuple[str, ...] = ("127.0.0.1", "::1"),
    clients: tuple[str, ...] = REDIS_TLS_CLIENTS,
    days: int = REDIS_TLS_DAYS,
    peer: bool = False,
) -> dict[str, Path]:
    """The redis CA, server certificate and client certificates under ``directory``
    (keys 0600, certificates 0644); what exists is kept, a missing client is added.

    The server certificate names every address a client connects to (loopback, and
    the compose service name ``redis`` when asked); clients verify it against the CA
    and redis verifies each client's certificate against the same CA
    (``tls-auth-clients yes``), so only holders of a certificate from this CA connect.

    ``peer`` (compose's ``ha`` profile): the server certificate is also a client
    certificate (extended key usage clientAuth), because every redis node there
    presents it when it connects to another one (a replica to its primary, a
    sentinel to the data nodes and to the other sentinels; ``tls-replication yes``).
    A kept server certificate that lacks a wanted name or that usage is issued again.
    """
    directory.mkdir(parents=True, exist_ok=True)
    os.chmod(directory, 0o700)
    ca_path, ca_key_path = directory / REDIS_TLS_CA, directory / REDIS_TLS_CA_KEY
    if not (ca_path.exists() and ca_key_path.exists()):
        ca_key = ec.generate_private_key(ec.SECP256R1())
        ca = build_certificate(
            _name("productionlab redis CA", REDIS_ORGANIZATION),
            ca_key,
            validity(days),
            Purpose(key_usage=ca_key_usage(digital_signature=False, crl_sign=True)),
        )
        write_pair(ca_path, ca_key_path, ca, ca_key)
    ca = x509.load_pem_x509_certificate(ca_path.read_bytes())
    ca_key = serialization.load_pem_private_key(ca_key_path.read_bytes(), password=None)
    assert isinstance(ca_key, ec.EllipticCurvePrivateKey)  # we wrote it  # nosec B101
    paths = {REDIS_TLS_CA: ca_path, REDIS_TLS_CA_KEY: ca_key_path}
    server_names = alt_names(hostnames, addresses)
    server_usage: x509.ObjectIdentifier | tuple[x509.ObjectIdentifier, ...] = (
        x509.oid.ExtendedKeyUsageOID.SERVER_AUTH
    )
    if peer:
        server_usage = (server_usage, x509.oid.ExtendedKeyUsageOID.CLIENT_AUTH)
    server_cert_path = directory / REDIS_TLS_SERVER[0]
    if server_cert_path.exists() and not _covers(server_cert_path, server_names, server_usage):
        server_cert_path.unlink()
    wanted = [(REDIS_TLS_SERVER, "redis", server_usage, server_names)]
    wanted += [
        (redis_client_files(c), f"plab-{c}", x509.oid.ExtendedKeyUsageOID.CLIENT_AUTH, ())
        for c in clients
    ]
    for (cert_name, key_name), subject, usage, names in wanted:
        cert_path, key_path = directory / cert_name, directory / key_name
        if not (cert_path.exists() and key_path.exists()):
            key = ec.generate_private_key(ec.SECP256R1())
            subject_name = _name(subject, REDIS_ORGANIZATION)
            purpose = Purpose(usage=usage, names=names)
            cert = build_certificate(subject_name, key, validity(days), purpose, (ca, ca_key))
            write_pair(cert_path, key_path, cert, key)
        paths[cert_name], paths[key_name] = cert_path, key_path
    return paths
