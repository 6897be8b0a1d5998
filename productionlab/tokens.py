"""Bearer tokens: short-lived signed access tokens and rotating refresh tokens.

A token is ``plab2.<kid>.<payload>.<sig>``: base64url JSON with the user's
name, the user's generation, a family id, a unique id (jti), issue and expiry
times, signed with Ed25519. Only the control plane holds the private key
(``PLAB_TOKEN_KEY``, from which the key pair is derived); the app plane holds
only the public key (``PLAB_TOKEN_PUBLIC_KEY``) and verifies, so code running in
the app plane cannot mint a token. ``kid`` names the key pair, so a previous
key (``PLAB_TOKEN_KEY_PREVIOUS`` / ``PLAB_TOKEN_PUBLIC_KEY_PREVIOUS``, or the
file ``<key file>.previous``) keeps verifying the tokens it signed: that is the
overlap window of a key rotation. It retires by itself once the refresh
lifetime has passed since the rotation (``PLAB_TOKEN_KEY_ROTATED_AT``, or the
previous key file's modification time): every token it signed has expired by
then, so a token signed with it is refused (``retired_key``).

Tokens of the previous release (``plab1``, HMAC) are refused once after the
upgrade (``legacy_format``, a clean 401); Basic credentials get a new pair.

A user holds at most ``PLAB_TOKEN_FAMILIES_MAX`` live families: issuing one
more revokes the least recently used one (audited as ``family_cap``).

Revocation lives in redis until expiry:

* the user's generation changes on every change to the user (disable, rotate,
  grants, revoke-tokens), so every older token is refused at once;
* a refresh token belongs to a family ``{plab}:tok:fam:<id>`` that remembers
  its one live refresh token. Refreshing rotates it; presenting an older one
  (a replay of a stolen token) revokes the whole family, access tokens
  included. The family hash expires with the family's last refresh token.

Every issue, refresh, reuse and revocation is an audit entry, written in the
same script as the change. Tokens themselves never reach the log.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import redis
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from flask import g, has_request_context

from productionlab.audit import AUDIT_KEYS, Actor, clean
from productionlab.errors import MalformedRequest
from productionlab.luascripts import script
from productionlab.settings import Settings
from productionlab.users import USER, User, UserStore

PREFIX = "plab2"
LEGACY_PREFIX = "plab1"
FAMILY = "{plab}:tok:fam:"
USER_FAMILIES = "{plab}:tok:user:"
# Refusals the refresh script has already written to the audit log.
AUDITED_REFUSALS = ("unknown_family", "family_revoked", "reuse")
# Refusals that may be guessing (count towards the brute-force guard); the
# others are genuine tokens that expired or were revoked.
FORGERY_SIGNS = ("malformed", "unknown_key", "bad_signature")
FAMILIES_MAX = 10
# The brute-force guard counts forged refresh tokens per address under this name.
GUARD_NAME = "-refresh"
ACCESS_TTL = 15 * 60
REFRESH_TTL = 7 * 24 * 3600

TOKEN_ISSUE = script("token_issue")
TOKEN_REFRESH = script("token_refresh")
TOKEN_REVOKE = script("token_revoke")


def _lru_score(ttl: int) -> str:
    """A family's score in the user's set: its expiry, to the millisecond, so the
    least recently issued or refreshed family is the lowest (the one the cap revokes)."""
    return f"{time.time() + ttl:.3f}"


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
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


@dataclass(frozen=True)
class Claims:
    typ: str
    sub: str
    gen: int
    fam: str
    jti: str
    iat: int
    exp: int
    kid: str


@dataclass(frozen=True)
class TokenPair:
    access_token: str
    refresh_token: str
    expires_in: int
    refresh_expires_in: int

    def as_dict(self) -> dict:
        return {
            "access_token": self.access_token,
            "refresh_token": self.refresh_token,
            "token_type": "Bearer",  # the OAuth token type, not a secret  # nosec B105
            "expires_in": self.expires_in,
            "refresh_expires_in": self.refresh_expires_in,
        }


class TokenError(Exception):
    """The token is not acceptable; the reason is for the audit log, not the client."""


class TokenService:
    def __init__(
        self,
        client: redis.Redis,
        users: UserStore,
        keys: TokenKeys,
        access_ttl: int = ACCESS_TTL,
        refresh_ttl: int = REFRESH_TTL,
        families_max: int = FAMILIES_MAX,
    ):
        self.client = client
        self.users = users
        self.keys = keys
        self.access_ttl = access_ttl
        self.refresh_ttl = refresh_ttl
        self.families_max = families_max

    # --- encoding -------------------------------------------------------------
    def sign(self, claims: dict) -> str:
        signer = self.keys.signer
        if signer is None:
            raise RuntimeError("this plane holds no token-signing key")
        payload = _b64(json.dumps(claims, separators=(",", ":")).encode())
        signed = f"{PREFIX}.{signer.kid}.{payload}"
        return f"{signed}.{_b64(signer.sign(signed.encode()))}"

    def decode(self, token: str, typ: str, now: float | None = None) -> Claims:
        """Check the signature (current or unretired previous key), type and expiry."""
        now = now if now is not None else time.time()
        parts = token.split(".")
        if len(parts) == 4 and parts[0] == LEGACY_PREFIX:
            raise TokenError("legacy_format")
        if len(parts) != 4 or parts[0] != PREFIX or len(token) > 2048:
            raise TokenError("malformed")
        key = self.keys.lookup(parts[1], now)
        try:
            given = _unb64(parts[3])
            data = json.loads(_unb64(parts[2]))
        except (ValueError, json.JSONDecodeError) as exc:
            raise TokenError("malformed") from exc
        if not key.verify(given, ".".join(parts[:3]).encode()):
            raise TokenError("bad_signature")
        try:
            claims = Claims(
                typ=str(data["typ"]),
                sub=str(data["sub"]),
                gen=int(data["gen"]),
                fam=str(data["fam"]),
                jti=str(data["jti"]),
                iat=int(data["iat"]),
                exp=int(data["exp"]),
                kid=parts[1],
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise TokenError("malformed") from exc
        if claims.typ != typ:
            raise TokenError("wrong_type")
        if claims.exp <= now:
            raise TokenError("expired")
        return claims

    def _claims(self, typ: str, user: User, fam: str, ttl: int, now: int) -> dict:
        return {
            "typ": typ,
            "sub": user.name,
            "gen": user.generation,
            "fam": fam,
            "jti": secrets.token_hex(12),
            "iat": now,
            "exp": now + ttl,
        }

    # --- the flows ------------------------------------------------------------
    def issue(self, user: User, actor: Actor) -> TokenPair:
        now = int(time.time())
        fam = secrets.token_hex(12)
        refresh = self._claims("refresh", user, fam, self.refresh_ttl, now)
        TOKEN_ISSUE(
            self.client,
            keys={
                "audit": AUDIT_KEYS,
                "family": FAMILY + fam,
                "families": USER_FAMILIES + user.name,
            },
            args={
                "audit": actor.audit_args(),
                "target": clean(f"{user.name}:{fam}"),
                "family_id": fam,
                "jti": refresh["jti"],
                "ttl_ms": self.refresh_ttl * 1000,
                "expires": _lru_score(self.refresh_ttl),
                "now": now,
                "user": user.name,
                "max_live": self.families_max,
                "family_prefix": FAMILY,
            },
        )
        access = self._claims("access", user, fam, self.access_ttl, now)
        return TokenPair(self.sign(access), self.sign(refresh), self.access_ttl, self.refresh_ttl)

    def refresh(self, token: str, actor_for: Callable[[str], Actor]) -> TokenPair:
        """Rotate a refresh token. Raises TokenError (after auditing) when refused."""
        claims = self.decode(token, "refresh")
        user = self._current_user(claims)
        actor = actor_for(claims.sub)
        now = int(time.time())
        fresh = self._claims("refresh", user, claims.fam, self.refresh_ttl, now)
        result = int(
            TOKEN_REFRESH(
                self.client,
                keys={
                    "audit": AUDIT_KEYS,
                    "family": FAMILY + claims.fam,
                    "families": USER_FAMILIES + claims.sub,
                },
                args={
                    "audit": actor.audit_args(),
                    "target": clean(f"{claims.sub}:{claims.fam}"),
                    "family_id": claims.fam,
                    "presented": claims.jti,
                    "fresh": fresh["jti"],
                    "ttl_ms": self.refresh_ttl * 1000,
                    "expires": _lru_score(self.refresh_ttl),
                    "now": now,
                },
            )
        )
        if result != 1:
            reason = {0: "unknown_family", -1: "family_revoked"}.get(result, "reuse")
            if reason == "reuse":
                from productionlab.securitymetrics import token_reuse_detected

                token_reuse_detected()
            raise TokenError(reason)
        access = self._claims("access", user, claims.fam, self.access_ttl, now)
        return TokenPair(self.sign(access), self.sign(fresh), self.access_ttl, self.refresh_ttl)

    def _current_user(self, claims: Claims) -> User:
        return self._still_valid(claims, self.client.hgetall(USER + claims.sub))

    @staticmethod
    def _still_valid(claims: Claims, data: dict) -> User:
        """The token's user, unless deleted, disabled or changed since the token was issued."""
        if not data:
            raise TokenError("unknown_user")
        user = User.from_hash(data)
        if user.disabled or user.generation != claims.gen:
            raise TokenError("user_changed")
        return user

    def verify_access(self, token: str) -> User:
        """The user an access token stands for, if it and its family are still good."""
        claims = self.decode(token, "access")
        pipe = self.client.pipeline(transaction=False)
        pipe.hgetall(USER + claims.sub)
        pipe.hget(FAMILY + claims.fam, "revoked")
        data, revoked = pipe.execute()
        if revoked != b"0":
            raise TokenError("family_revoked")
        user = self._still_valid(claims, data)
        if has_request_context():
            g.plab_token_family = claims.fam  # for the last-used record (lastused.py)
        return user

    def revoke_family(self, family: str, actor: Actor) -> bool:
        if not family.isalnum() or len(family) > 64:
            raise MalformedRequest("a family id is hexadecimal")
        user = self.client.hget(FAMILY + family, "user")
        target = clean(f"{(user or b'-').decode()}:{family}")
        return bool(
            int(
                TOKEN_REVOKE(
                    self.client,
                    keys={"audit": AUDIT_KEYS, "family": FAMILY + family},
                    args={"audit": actor.audit_args(), "target": target},
                )
            )
        )

    def families(self, user: str) -> list[dict]:
        now = time.time()
        ids = self.client.zrangebyscore(USER_FAMILIES + user, now, "+inf")
        pipe = self.client.pipeline(transaction=False)
        for fam in ids:
            pipe.hgetall(FAMILY + fam.decode())
            pipe.pttl(FAMILY + fam.decode())
        results = pipe.execute()
        listed = []
        for fam, data, ttl in zip(ids, results[::2], results[1::2], strict=True):
            if not data:
                continue
            listed.append(
                {
                    "family": fam.decode(),
                    "user": data.get(b"user", b"").decode(),
                    "created": int(data.get(b"created", b"0")),
                    "revoked": data.get(b"revoked") == b"1",
                    "expires_in": max(0, int(ttl) // 1000),
                }
            )
        return listed

    def key_ids(self, now: float | None = None) -> dict:
        now = now if now is not None else time.time()
        until = self.keys.previous_until
        retired = until is not None and now >= until
        return {
            "current": self.keys.current.kid,
            "previous": [] if retired else [k.kid for k in self.keys.previous],
            "retired": [k.kid for k in self.keys.previous] if retired else [],
            "previous_until": int(until) if until is not None else None,
        }


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


def build_service(settings: Settings, client: redis.Redis, users: UserStore) -> TokenService:
    return TokenService(
        client,
        users,
        token_keys(settings),
        settings.token_ttl,
        settings.refresh_ttl,
        settings.token_families_max,
    )
