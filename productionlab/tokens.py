"""Bearer tokens: short-lived signed access tokens and rotating refresh tokens.

A token is ``plab1.<kid>.<payload>.<mac>``: base64url JSON with the user's
name, the user's generation, a family id, a unique id (jti), issue and expiry
times, signed with HMAC-SHA256 under a key derived from ``PLAB_TOKEN_KEY``.
``kid`` names the signing key, so a previous key (``PLAB_TOKEN_KEY_PREVIOUS``
or the file ``<PLAB_TOKEN_KEY_FILE>.previous``) keeps verifying the tokens it
signed while they live: that is the overlap window of a key rotation.

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
import hashlib
import hmac
import json
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass

import redis
from flask import Blueprint, Flask, Response, current_app, g, jsonify, request

from productionlab.audit import AUDIT_KEYS, LUA_PRELUDE, Actor, AuditLog, clean
from productionlab.errors import BadRequest, Unauthorized
from productionlab.settings import Settings
from productionlab.users import USER, User, UserStore

PREFIX = "plab1"
FAMILY = "{plab}:tok:fam:"
USER_FAMILIES = "{plab}:tok:user:"
# Refusals the refresh script has already written to the audit log.
AUDITED_REFUSALS = ("unknown_family", "family_revoked", "reuse")
# Refusals that may be guessing (count towards the brute-force guard); the
# others are genuine tokens that expired or were revoked.
FORGERY_SIGNS = ("malformed", "unknown_key", "bad_signature")
# The brute-force guard counts forged refresh tokens per address under this name.
GUARD_NAME = "-refresh"
ACCESS_TTL = 15 * 60
REFRESH_TTL = 7 * 24 * 3600

_ISSUE = (
    LUA_PRELUDE
    + r"""
local fam, families = KEYS[3], KEYS[4]
local target, family, jti = ARGV[7], ARGV[8], ARGV[9]
local ttl_ms, expires, now = tonumber(ARGV[10]), tonumber(ARGV[11]), tonumber(ARGV[12])
redis.call('HSET', fam, 'user', ARGV[13], 'current', jti, 'revoked', '0', 'created', now)
redis.call('PEXPIRE', fam, ttl_ms)
redis.call('ZREMRANGEBYSCORE', families, '-inf', now)
redis.call('ZADD', families, expires, family)
redis.call('PEXPIRE', families, ttl_ms)
return audit('token.issue', target, 'ok', '')
"""
)

_REFRESH = (
    LUA_PRELUDE
    + r"""
local fam, families = KEYS[3], KEYS[4]
local target, family, presented, fresh = ARGV[7], ARGV[8], ARGV[9], ARGV[10]
local ttl_ms, expires, now = tonumber(ARGV[11]), tonumber(ARGV[12]), tonumber(ARGV[13])
local state = redis.call('HMGET', fam, 'current', 'revoked')
if not state[1] then
  audit('token.refresh', target, 'unknown_family', '')
  return 0
end
if state[2] == '1' then
  audit('token.refresh', target, 'family_revoked', '')
  return -1
end
if state[1] ~= presented then
  redis.call('HSET', fam, 'revoked', '1')
  audit('token.reuse', target, 'family_revoked', '')
  return -2
end
redis.call('HSET', fam, 'current', fresh)
redis.call('PEXPIRE', fam, ttl_ms)
redis.call('ZADD', families, expires, family)
redis.call('PEXPIRE', families, ttl_ms)
audit('token.refresh', target, 'ok', '')
return 1
"""
)

_REVOKE = (
    LUA_PRELUDE
    + r"""
local fam = KEYS[3]
if redis.call('EXISTS', fam) == 0 then return 0 end
redis.call('HSET', fam, 'revoked', '1')
audit('token.revoke', ARGV[7], 'ok', '')
return 1
"""
)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


@dataclass(frozen=True)
class SigningKey:
    """A token-signing key, named by an id derived from it (the secret never leaves)."""

    secret: str

    @property
    def material(self) -> bytes:
        return hmac.new(self.secret.encode(), b"productionlab token signing v1", "sha256").digest()

    @property
    def kid(self) -> str:
        return hashlib.sha256(b"kid\0" + self.material).hexdigest()[:12]


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
        keys: list[str],
        access_ttl: int = ACCESS_TTL,
        refresh_ttl: int = REFRESH_TTL,
    ):
        if not keys or not keys[0]:
            raise ValueError("a token-signing key is required")
        self.client = client
        self.users = users
        self.keys = [SigningKey(k) for k in keys if k]
        self.by_kid = {k.kid: k for k in self.keys}
        self.access_ttl = access_ttl
        self.refresh_ttl = refresh_ttl
        self._issue = client.register_script(_ISSUE)
        self._refresh = client.register_script(_REFRESH)
        self._revoke = client.register_script(_REVOKE)

    # --- encoding -------------------------------------------------------------
    def sign(self, claims: dict) -> str:
        key = self.keys[0]
        payload = _b64(json.dumps(claims, separators=(",", ":")).encode())
        signed = f"{PREFIX}.{key.kid}.{payload}"
        mac = hmac.new(key.material, signed.encode(), hashlib.sha256).digest()
        return f"{signed}.{_b64(mac)}"

    def decode(self, token: str, typ: str, now: float | None = None) -> Claims:
        """Check the signature (current or previous key), type and expiry."""
        parts = token.split(".")
        if len(parts) != 4 or parts[0] != PREFIX or len(token) > 2048:
            raise TokenError("malformed")
        key = self.by_kid.get(parts[1])
        if key is None:
            raise TokenError("unknown_key")
        expected = hmac.new(key.material, ".".join(parts[:3]).encode(), hashlib.sha256).digest()
        try:
            given = _unb64(parts[3])
            data = json.loads(_unb64(parts[2]))
        except (ValueError, json.JSONDecodeError) as exc:
            raise TokenError("malformed") from exc
        if not hmac.compare_digest(expected, given):
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
        if claims.exp <= (now if now is not None else time.time()):
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
        self._issue(
            keys=[*AUDIT_KEYS, FAMILY + fam, USER_FAMILIES + user.name],
            args=[
                *actor.audit_args(),
                clean(f"{user.name}:{fam}"),
                fam,
                refresh["jti"],
                self.refresh_ttl * 1000,
                now + self.refresh_ttl,
                now,
                user.name,
            ],
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
            self._refresh(
                keys=[*AUDIT_KEYS, FAMILY + claims.fam, USER_FAMILIES + claims.sub],
                args=[
                    *actor.audit_args(),
                    clean(f"{claims.sub}:{claims.fam}"),
                    claims.fam,
                    claims.jti,
                    fresh["jti"],
                    self.refresh_ttl * 1000,
                    now + self.refresh_ttl,
                    now,
                ],
            )
        )
        if result != 1:
            raise TokenError({0: "unknown_family", -1: "family_revoked"}.get(result, "reuse"))
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
        return self._still_valid(claims, data)

    def revoke_family(self, family: str, actor: Actor) -> bool:
        if not family.isalnum() or len(family) > 64:
            raise BadRequest("a family id is hexadecimal")
        user = self.client.hget(FAMILY + family, "user")
        target = clean(f"{(user or b'-').decode()}:{family}")
        return bool(
            int(
                self._revoke(
                    keys=[*AUDIT_KEYS, FAMILY + family],
                    args=[*actor.audit_args(), target],
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

    def key_ids(self) -> dict:
        return {
            "current": self.keys[0].kid,
            "previous": [k.kid for k in self.keys[1:]],
        }


# --- configuration ------------------------------------------------------------
def signing_keys(settings: Settings) -> list[str]:
    """The current key first, then the previous one while it is configured
    (``PLAB_TOKEN_KEY_PREVIOUS`` / ``_FILE``, or ``<key file>.previous``)."""
    keys = [settings.token_key]
    previous = settings.token_key_previous
    if previous and previous != settings.token_key:
        keys.append(previous)
    return keys


def build_service(settings: Settings, client: redis.Redis, users: UserStore) -> TokenService:
    access, refresh = settings.token_ttl, settings.refresh_ttl
    return TokenService(client, users, signing_keys(settings), access, refresh)


def service() -> TokenService:
    return current_app.extensions["plab_tokens"]


def audit_log() -> AuditLog:
    return current_app.extensions["plab_audit"]


def init_app(app: Flask, auth) -> TokenService:
    """Accept Bearer access tokens on every authenticated route of this plane."""
    tokens = build_service(
        app.extensions["plab_settings"], app.extensions["plab_redis"], auth.users
    )
    app.extensions["plab_tokens"] = tokens

    def verify(token: str) -> User | None:
        try:
            return tokens.verify_access(token)
        except TokenError:
            return None

    auth.token_verifier = verify
    return tokens


# --- routes (control plane) ---------------------------------------------------
def _actor(name: str) -> Actor:
    return Actor(name, request.remote_addr or "", g.get("request_id", ""))


def token_blueprint(auth) -> Blueprint:
    bp = Blueprint("tokens", __name__)

    @bp.post("/auth/token")
    @auth.route_limits.token
    @auth.basic.login_required
    def issue() -> Response:
        user: User = g.user
        pair = service().issue(user, _actor(user.name))
        return jsonify(pair.as_dict())

    @bp.post("/auth/refresh")
    @auth.route_limits.token
    def refresh() -> Response:
        body = request.get_json(force=True, silent=True)
        token = body.get("refresh_token") if isinstance(body, dict) else None
        if not isinstance(token, str) or not token:
            raise BadRequest('the body must be {"refresh_token": "..."}')
        address = request.remote_addr or "-"
        auth.guard.check(address, GUARD_NAME)
        try:
            pair = service().refresh(token, _actor)
        except TokenError as exc:
            reason = str(exc)
            if reason in FORGERY_SIGNS:
                auth.guard.failed(address, GUARD_NAME, f"refresh_{reason}")
            elif reason not in AUDITED_REFUSALS:
                audit_log().append(_actor("-"), "token.refresh", "-", reason)
            raise Unauthorized("the refresh token is not valid") from None
        return jsonify(pair.as_dict())

    return bp
