"""Bearer tokens: short-lived signed access tokens and rotating refresh tokens.

A token is ``plab2.<kid>.<payload>.<sig>``: base64url JSON with the user's
name, the user's generation, a family id, a unique id (jti), issue and expiry
times, signed with Ed25519 by the control plane and verified by both planes
with the keys of token_keys.py (which also covers key rotation and retirement).

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

import json
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass

import redis
from flask import g, has_request_context

from productionlab.audit import AUDIT_KEYS, Actor, clean
from productionlab.errors import MalformedRequest
from productionlab.luascripts import script
from productionlab.settings import Settings
from productionlab.token_keys import TokenError, TokenKeys, b64, token_keys, unb64
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
        payload = b64(json.dumps(claims, separators=(",", ":")).encode())
        signed = f"{PREFIX}.{signer.kid}.{payload}"
        return f"{signed}.{b64(signer.sign(signed.encode()))}"

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
            given = unb64(parts[3])
            data = json.loads(unb64(parts[2]))
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


def build_service(settings: Settings, client: redis.Redis, users: UserStore) -> TokenService:
    return TokenService(
        client,
        users,
        token_keys(settings),
        settings.token_ttl,
        settings.refresh_ttl,
        settings.token_families_max,
    )
