"""The user store: users, roles and grants in redis, and password hashing.

Passwords are stored as argon2id hashes (slow, salted). Paying that hash on
every request would cap throughput, so a successful verification is cached in
memory under an HMAC of the credential for a short time (credential_cache.py);
the cache is dropped in every process the moment any user changes (a pub/sub
message this store follows), and bypassed entirely while that subscription is
down. The edge's htpasswd (its fast ``{SSHA}`` hash, and why it is fast) lives
in htpasswd.py.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import secrets
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import redis
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

from productionlab.audit import AUDIT_KEYS, Actor
from productionlab.contract import (
    GRANT_RULE,
    MAX_GRANTS,
    PREFIX_RE,
    ROLE_IMPLIES,
    ROLES,
    USER_NAME_RE,
    USER_NAME_RULE,
)
from productionlab.credential_cache import VerificationCache
from productionlab.errors import MalformedRequest, StoreUnavailable, UserExists, UserNotFound
from productionlab.htpasswd import HtpasswdFile, edge_hash
from productionlab.luascripts import script
from productionlab.subscription import Subscription

log = logging.getLogger("productionlab.users")

USER = "{plab}:user:"
USERS = "{plab}:users"
EVENTS = "{plab}:users:events"
# One counter for every user change: a user's ``gen`` never repeats, not even
# for a deleted user created again, so tokens bound to a generation die with it.
GENERATION = "{plab}:users:gen"
ADMIN_NAME = "admin"
# OWASP's argon2id minimum: 19 MiB, 2 passes, 1 lane.
HASHER = PasswordHasher(time_cost=2, memory_cost=19 * 1024, parallelism=1)

USER_SAVE = script("user_save")
USER_DELETE = script("user_delete")


def generate_password() -> str:
    """256 bits from the OS CSPRNG, URL-safe: what makes the fast edge hash acceptable."""
    return secrets.token_urlsafe(32)


def validate_name(name: object) -> str:
    if not isinstance(name, str) or not USER_NAME_RE.match(name):
        raise MalformedRequest(USER_NAME_RULE)
    return name


def validate_role(role: object) -> str:
    if role not in ROLES:
        raise MalformedRequest(f"role must be one of {', '.join(ROLES)}")
    return str(role)


def validate_prefixes(prefixes: object) -> list[str]:
    if not isinstance(prefixes, list) or len(prefixes) > MAX_GRANTS:
        raise MalformedRequest(f"prefixes must be a list of at most {MAX_GRANTS} key prefixes")
    cleaned: list[str] = []
    for prefix in prefixes:
        if prefix == "":
            # "" is a prefix of every key: a wildcard nobody meant. "*" says it.
            raise MalformedRequest("an empty prefix would grant every key; give '*' to mean that")
        if not isinstance(prefix, str) or not (prefix == "*" or PREFIX_RE.match(prefix)):
            raise MalformedRequest(GRANT_RULE)
        if prefix not in cleaned:
            cleaned.append(prefix)
    return cleaned


@dataclass(frozen=True)
class User:
    name: str
    role: str
    prefixes: tuple[str, ...]
    disabled: bool = False
    created: float = 0.0
    updated: float = 0.0
    generation: int = 0
    password_hash: str = field(default="", repr=False)
    edge_hash: str = field(default="", repr=False)

    @property
    def roles(self) -> tuple[str, ...]:
        return ROLE_IMPLIES.get(self.role, ())

    def covers(self, key: str) -> bool:
        """Whether this user's grants cover ``key``. Admins see every key."""
        if self.role == "admin":
            return True
        return any(p == "*" or (p and key.startswith(p)) for p in self.prefixes)

    @property
    def grants(self) -> tuple[str, ...]:
        return ("*",) if self.role == "admin" else self.prefixes

    def public(self) -> dict:
        return {
            "name": self.name,
            "role": self.role,
            "prefixes": list(self.prefixes),
            "disabled": self.disabled,
            "created": self.created,
            "updated": self.updated,
        }

    @classmethod
    def from_hash(cls, data: dict[bytes, bytes]) -> User:
        def text(name: str) -> str:
            return data.get(name.encode(), b"").decode()

        return cls(
            name=text("name"),
            role=text("role"),
            prefixes=tuple(json.loads(text("prefixes") or "[]")),
            disabled=text("disabled") == "1",
            created=float(text("created") or 0),
            updated=float(text("updated") or 0),
            generation=int(text("gen") or 0),
            password_hash=text("pw"),
            edge_hash=text("edge"),
        )


class UserStore:
    def __init__(
        self,
        client: redis.Redis,
        cache_secret: bytes,
        cache_seconds: float = 60.0,
        htpasswd_path: Path | None = None,
        verify_concurrency: int = 4,
        verify_retry_after: int = 1,
    ):
        self.client = client
        self.cache = VerificationCache(cache_secret, cache_seconds)
        # A process-wide bound on argon2id verifications running at once (19 MiB and
        # tens of ms of CPU each): past it a login is refused with 503 + Retry-After
        # rather than queued, so a flood of cache-missing logins from many addresses
        # cannot take every core and every thread.
        self._slow_slots = threading.BoundedSemaphore(verify_concurrency)
        self.verify_retry_after = verify_retry_after
        self.htpasswd_path = htpasswd_path
        self.events = Subscription(
            client,
            (EVENTS,),
            self._event,
            name="users-events",
            started=self._subscribed,
            lost=self._unsubscribed,
        )
        self.htpasswd = HtpasswdFile(htpasswd_path) if htpasswd_path is not None else None

    # --- reading -----------------------------------------------------------
    def get(self, name: str) -> User:
        data = self.client.hgetall(USER + validate_name(name))
        if not data:
            raise UserNotFound(f"no user {name!r}")
        return User.from_hash(data)

    def all(self) -> list[User]:
        names = sorted(n.decode() for n in self.client.smembers(USERS))
        pipe = self.client.pipeline(transaction=False)
        for name in names:
            pipe.hgetall(USER + name)
        return [User.from_hash(d) for d in pipe.execute() if d]

    # --- verification ------------------------------------------------------
    def verify(self, name: str, password: str) -> User | None:
        """The user if the password is right and the user enabled, else None.

        Runs the slow hash on a cache miss even for unknown users, so timing
        does not reveal which names exist.
        """
        cached = self.cache.get(name, password)
        if cached is not None:
            return cached
        with self.cache.single_flight(name, password):
            cached = self.cache.get(name, password)
            if cached is not None:
                return cached
            if not self._slow_slots.acquire(blocking=False):
                raise StoreUnavailable(
                    "too many password checks in progress; retry later",
                    retry_after=self.verify_retry_after,
                )
            try:
                return self._verify_slowly(name, password)
            finally:
                self._slow_slots.release()

    def _verify_slowly(self, name: str, password: str) -> User | None:
        cached = self.cache.get(name, password)
        if cached is not None:
            return cached
        if not USER_NAME_RE.match(name or "") or len(password) > 1024:
            _burn(password)
            return None
        epoch = self.cache.epoch
        data = self.client.hgetall(USER + name)
        if not data:
            _burn(password)
            return None
        user = User.from_hash(data)
        try:
            HASHER.verify(user.password_hash, password)
        except (VerifyMismatchError, VerificationError, InvalidHashError):
            return None
        if user.disabled:
            return None
        self.cache.put(name, password, user, epoch)
        return user

    # --- changing ----------------------------------------------------------
    def _write(
        self, mode: str, name: str, action: str, actor: Actor, fields: dict[str, str]
    ) -> int:
        flat: list[str] = []
        for key, value in fields.items():
            flat += [key, value]
        result = int(
            USER_SAVE(
                self.client,
                keys={
                    "audit": AUDIT_KEYS,
                    "user": USER + name,
                    "users": USERS,
                    "events": EVENTS,
                    "generation": GENERATION,
                },
                args={
                    "audit": actor.audit_args(),
                    "mode": mode,
                    "name": name,
                    "action": action,
                    "fields": flat,
                },
            )
        )
        if result == 1:
            self.changed()
        return result

    def create(
        self,
        name: str,
        role: str,
        prefixes: Iterable[str],
        actor: Actor,
        password: str | None = None,
    ) -> tuple[User, str]:
        """Create a user with a generated password; the password is returned this once."""
        validate_name(name)
        validate_role(role)
        prefixes = validate_prefixes(prefixes)
        password = password or generate_password()
        now = f"{time.time():.3f}"
        fields = {
            "name": name,
            "role": role,
            "prefixes": json.dumps(prefixes),
            "pw": HASHER.hash(password),
            "edge": edge_hash(password),
            "disabled": "0",
            "created": now,
            "updated": now,
        }
        if self._write("create", name, "user.create", actor, fields) == 0:
            raise UserExists(f"user {name!r} already exists")
        return self.get(name), password

    def update(self, name: str, actor: Actor, action: str, **changes: str) -> User:
        validate_name(name)
        changes["updated"] = f"{time.time():.3f}"
        if self._write("update", name, action, actor, changes) < 0:
            raise UserNotFound(f"no user {name!r}")
        return self.get(name)

    def set_grants(self, name: str, role: str, prefixes: Iterable[str], actor: Actor) -> User:
        return self.update(
            name,
            actor,
            "user.grants",
            role=validate_role(role),
            prefixes=json.dumps(validate_prefixes(prefixes)),
        )

    def migrate_empty_grants(self, actor: Actor) -> list[str]:
        """Releases before c64ef11's successor stored ``""`` as a grant, a silent
        wildcard. It is refused now; a stored one becomes the explicit ``"*"`` it
        always meant (audited as ``user.grants``, visible in listings and access
        reviews) so no user loses access on upgrade. Returns the users changed."""
        changed = []
        for user in self.all():
            if "" not in user.prefixes:
                continue
            prefixes = list(dict.fromkeys("*" if p == "" else p for p in user.prefixes))
            self.set_grants(user.name, user.role, prefixes, actor)
            changed.append(user.name)
        return changed

    def set_disabled(self, name: str, disabled: bool, actor: Actor) -> User:
        action = "user.disable" if disabled else "user.enable"
        return self.update(name, actor, action, disabled="1" if disabled else "0")

    def revoke_tokens(self, name: str, actor: Actor) -> User:
        """A new generation for the user: every token issued before dies."""
        return self.update(name, actor, "user.revoke_tokens")

    def rotate_password(self, name: str, actor: Actor) -> tuple[User, str]:
        password = generate_password()
        user = self.update(
            name, actor, "user.rotate", pw=HASHER.hash(password), edge=edge_hash(password)
        )
        return user, password

    def delete(self, name: str, actor: Actor) -> None:
        validate_name(name)
        deleted = USER_DELETE(
            self.client,
            keys={"audit": AUDIT_KEYS, "user": USER + name, "users": USERS, "events": EVENTS},
            args={"audit": actor.audit_args(), "name": name},
        )
        if not int(deleted):
            raise UserNotFound(f"no user {name!r}")
        self.changed()

    def changed(self) -> None:
        """This process changed a user: drop its cache now and re-render the edge file."""
        self.cache.clear()
        self.render_htpasswd()

    # --- first start -------------------------------------------------------
    def ensure_admin(self, password_file: Path) -> str | None:
        """Create ``admin`` on first start, writing its password to a 0600 file.

        Returns the file's path when it created the user, else None.
        """
        if self.client.exists(USER + ADMIN_NAME):
            return None
        password = generate_password()
        password_file.parent.mkdir(parents=True, exist_ok=True)
        descriptor = os.open(password_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(descriptor, "w") as handle:
            handle.write(password + "\n")
        os.chmod(password_file, 0o600)
        try:
            self.create(ADMIN_NAME, "admin", ["*"], Actor("system"), password=password)
        except UserExists:
            return None  # another process won the race; its password file stands
        return str(password_file)

    # --- the edge's htpasswd ------------------------------------------------
    def render_htpasswd(self) -> None:
        """Write the edge's htpasswd (control plane only; see htpasswd.py)."""
        if self.htpasswd is not None:
            self.htpasswd.render(self.all)

    # --- cross-process invalidation ----------------------------------------
    def start_listener(self) -> None:
        """Follow user changes from every process; the cache is only on while subscribed."""
        self.events.start()

    def stop_listener(self) -> None:
        self.events.stop()

    def _subscribed(self) -> None:
        self.cache.clear()
        self.cache.enabled = True

    def _event(self, message: dict) -> None:
        """Clear the cache on every event and on every (re)subscription: a
        subscribe confirmation means events may have been missed."""
        self.cache.clear()
        if message.get("type") != "subscribe" and self.htpasswd_path is not None:
            self.render_htpasswd()

    def _unsubscribed(self) -> None:
        self.cache.enabled = False
        self.cache.clear()


@functools.cache
def _dummy_hash() -> str:
    return HASHER.hash(secrets.token_urlsafe(16))


def _burn(password: str) -> None:
    """Spend the same time as a real verification for an unknown user."""
    try:
        HASHER.verify(_dummy_hash(), password or "-")
    except (VerificationError, InvalidHashError):
        pass
