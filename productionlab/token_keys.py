"""Token-signing keys: the Ed25519 key pair the control plane signs with and
every plane verifies with, their key ids, and which keys a plane holds.

Only the control plane holds the private key (``PLAB_TOKEN_KEY``, from which
the key pair is derived); the app plane holds only the public key
(``PLAB_TOKEN_PUBLIC_KEY``) and verifies, so code running in the app plane
cannot mint a token. ``kid`` names the key pair, so a previous key
(``PLAB_TOKEN_KEY_PREVIOUS`` / ``PLAB_TOKEN_PUBLIC_KEY_PREVIOUS``, or the file
``<key file>.previous``) keeps verifying the tokens it signed: that is the
overlap window of a key rotation. It retires by itself once the refresh
lifetime has passed since the rotation (``PLAB_TOKEN_KEY_ROTATED_AT``, or the
previous key file's modification time): every token it signed has expired by
then, so a token signed with it is refused (``retired_key``).

The tokens themselves (claims, pairs, families) are tokens.py's.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from dataclasses import dataclass, field

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from productionlab.settings import Settings


class TokenError(Exception):
    """The token is not acceptable; the reason is for the audit log, not the client."""


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


KEY_CONTEXT = b"productionlab token signing ed25519 v2\0"


def _kid(public: bytes) -> str:
    return hashlib.sha256(b"kid\0" + public).hexdigest()[:12]


@dataclass(frozen=True)
class VerifyKey:
    """An Ed25519 public key (32 bytes) and its key id."""

    public: bytes

    @classmethod
    def from_text(cls, text: str) -> VerifyKey:
        """The public key as 64 hex characters (what the generator writes)."""
        raw = parse_public_key(text)
        return cls(raw)

    @property
    def kid(self) -> str:
        return _kid(self.public)

    def verify(self, signature: bytes, message: bytes) -> bool:
        try:
            Ed25519PublicKey.from_public_bytes(self.public).verify(signature, message)
        except InvalidSignature:
            return False
        return True


@dataclass(frozen=True)
class SigningKey:
    """The control plane's private key, derived from the ``PLAB_TOKEN_KEY`` secret.

    The secret (any generated secret: hex or base64 of 32+ random bytes) is
    hashed with a context into the Ed25519 seed, so an existing token key file
    becomes the signing key on upgrade and the key never leaves this object.
    """

    secret: str = field(repr=False)

    @property
    def _private(self) -> Ed25519PrivateKey:
        seed = hashlib.sha256(KEY_CONTEXT + self.secret.encode()).digest()
        return Ed25519PrivateKey.from_private_bytes(seed)

    @property
    def verify_key(self) -> VerifyKey:
        return VerifyKey(self._private.public_key().public_bytes_raw())

    @property
    def public_hex(self) -> str:
        return self.verify_key.public.hex()

    @property
    def kid(self) -> str:
        return self.verify_key.kid

    def sign(self, message: bytes) -> bytes:
        return self._private.sign(message)


def is_public_half(private: str, public_text: str) -> bool:
    """Whether ``public_text`` is the public key derived from ``private``."""
    return SigningKey(private).kid == VerifyKey.from_text(public_text).kid


def parse_public_key(text: str) -> bytes:
    """An Ed25519 public key given as 64 hex characters; ValueError otherwise."""
    text = text.strip()
    try:
        raw = binascii.unhexlify(text)
    except (binascii.Error, ValueError) as exc:
        raise ValueError("a token public key is 64 hex characters") from exc
    if len(raw) != 32:
        raise ValueError("a token public key is 64 hex characters")
    Ed25519PublicKey.from_public_bytes(raw)
    return raw


@dataclass(frozen=True)
class TokenKeys:
    """What a plane holds: the signer (control plane only), the current public
    key, previous public keys, and when the previous ones retire."""

    current: VerifyKey
    previous: tuple[VerifyKey, ...] = ()
    signer: SigningKey | None = field(default=None, repr=False)
    previous_until: float | None = None

    @classmethod
    def for_signing(cls, secret: str, previous: tuple[str, ...] = (), until=None) -> TokenKeys:
        """The control plane's keys from private secrets (tests and tools use this)."""
        signer = SigningKey(secret)
        olds = tuple(
            key
            for key in (SigningKey(p).verify_key for p in previous if p)
            if key.kid != signer.kid
        )
        return cls(signer.verify_key, olds, signer, until)

    def lookup(self, kid: str, now: float) -> VerifyKey:
        if kid == self.current.kid:
            return self.current
        for key in self.previous:
            if key.kid == kid:
                if self.previous_until is not None and now >= self.previous_until:
                    raise TokenError("retired_key")
                return key
        raise TokenError("unknown_key")


# --- configuration ------------------------------------------------------------
def token_keys(settings: Settings) -> TokenKeys:
    """The control plane signs with ``PLAB_TOKEN_KEY`` and verifies with the public
    halves of it and of its previous key; the app plane has only public keys."""
    until = (
        settings.token_key_rotated_at + settings.refresh_ttl
        if settings.token_key_rotated_at is not None
        else None
    )
    if settings.plane == "cp":
        previous = (settings.token_key_previous,) if settings.token_key_previous else ()
        keys = TokenKeys.for_signing(settings.token_key, previous, until)
        if settings.token_public_key_previous:
            extra = VerifyKey.from_text(settings.token_public_key_previous)
            if extra.kid not in {k.kid for k in keys.previous} | {keys.current.kid}:
                keys = TokenKeys(keys.current, (*keys.previous, extra), keys.signer, until)
        return keys
    current = VerifyKey.from_text(settings.token_public_key)
    previous_keys: tuple[VerifyKey, ...] = ()
    if settings.token_public_key_previous:
        old = VerifyKey.from_text(settings.token_public_key_previous)
        if old.kid != current.kid:
            previous_keys = (old,)
    return TokenKeys(current, previous_keys, None, until)
