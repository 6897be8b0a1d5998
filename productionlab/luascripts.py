"""The Lua scripts redis runs for us (``productionlab/lua/*.lua``) and the one way
to call them.

Every change a request makes happens in one script, so the check, the change
and its audit entry are atomic and cost one round trip (see shardkv.py, audit.py).
A file is either a *script* or a *fragment*. A script declares, in its header,
the names of its KEYS and ARGV in order::

    --! keys: audit[2] item counter index
    --! args: audit[6] tag shard key value ttl_ms cond expected owner grant_keys grant_bytes

``name`` is one slot, ``name[N]`` a group of N slots (its value is a sequence
of N), and a last ``name...`` takes the rest (a sequence of any length). A
fragment (``--! fragment``) holds Lua shared by several scripts (the audit
append, the per-user limit, the quota accounting, ...); ``--! include
<file>.lua`` inlines it where the line stands (once per script: a second
include of the same fragment, also through another fragment, is dropped).
Other ``--!`` lines are dropped, and a ``#!lua`` first line (flags such as
``allow-oom``) stays first.

Every file is read and composed once, at import. A call names its keys and
args::

    SHARD_PUT = luascripts.script("shard_put")
    SHARD_PUT(client, keys={"audit": place.audit, "item": ...}, args={...})

A missing or unknown name raises :class:`ScriptCallError` before anything
reaches redis (a programming error). The call is ``EVALSHA`` straight through
``execute_command`` (redis-py's ``Script.__call__`` adds a deprecation-checking
wrapper per call), and loads the script when redis has lost it (a restart, a
``SCRIPT FLUSH``), as redis-py's ``Script`` does; with a cluster client the
command goes to the keys' node and ``SCRIPT LOAD`` to every primary.
"""

from __future__ import annotations

import functools
import hashlib
import re
from collections.abc import Callable, Mapping
from operator import itemgetter
from pathlib import Path
from typing import Any

from redis.exceptions import NoScriptError

LUA_DIR = Path(__file__).with_name("lua")
_DIRECTIVE = "--!"
_INCLUDE = re.compile(r"\A--!\s*include\s+([a-z0-9_]+\.lua)\s*\Z")
_DECLARE = re.compile(r"\A--!\s*(keys|args):(.*)\Z")
_SLOT = re.compile(r"\A([a-z][a-z0-9_]*)(?:\[([1-9][0-9]*)\]|(\.\.\.))?\Z")


class ScriptError(Exception):
    """A script file is malformed (bad header, unknown include, a #! line in a fragment)."""


class ScriptCallError(TypeError):
    """A call names a key or arg the script does not declare, or leaves one out."""


def _getter(names: list[str]) -> Callable[[Mapping[str, Any]], tuple]:
    """Reads ``names`` from a mapping, in order, as a tuple (KeyError if one is missing)."""
    if len(names) == 1:
        name = names[0]
        return lambda given: (given[name],)
    if not names:
        return lambda given: ()
    return itemgetter(*names)


class Slots:
    """One script's declared KEYS or ARGV: names mapped to positions once, at load."""

    __slots__ = ("count", "declared", "fields", "names", "pick", "runs", "script", "what")

    def __init__(self, script: str, what: str, declaration: str):
        self.script, self.what, self.declared = script, what, declaration.strip()
        fields: list[tuple[str, int]] = []  # (name, size); size 1 one slot, 0 the rest
        tokens = self.declared.split()
        for position, token in enumerate(tokens):
            match = _SLOT.match(token)
            if match is None:
                raise ScriptError(f"{script}.lua: {what}: {token!r} is not a slot name")
            name, size, rest = match.groups()
            if rest and position != len(tokens) - 1:
                raise ScriptError(f"{script}.lua: {what}: only the last name may be {token}")
            if any(name == seen for seen, _ in fields):
                raise ScriptError(f"{script}.lua: {what}: {name} is declared twice")
            fields.append((name, 0 if rest else int(size or 1)))
        self.fields = tuple(fields)
        self.names = frozenset(name for name, _ in fields)
        self.count = len(fields)
        # The declaration as runs: consecutive one-slot names read by one C-level
        # itemgetter (-> a tuple), a group or the rest by its name. Nothing else
        # is worked out per call.
        runs: list[tuple[Callable | str, int]] = []
        plain: list[str] = []
        for name, size in fields:
            if size == 1:
                plain.append(name)
                continue
            if plain:
                runs.append((_getter(plain), 1))
                plain = []
            runs.append((name, size))
        if plain or not runs:
            runs.append((_getter(plain), 1))
        self.runs = tuple(runs)
        self.pick = runs[0][0] if len(runs) == 1 and runs[0][1] == 1 else None

    def flatten(self, given: Mapping[str, Any]) -> tuple | list:
        """The values in declared order (groups and the rest spliced in)."""
        if len(given) != self.count:
            raise self._refusal(given)
        try:
            if self.pick is not None:
                return self.pick(given)
            flat: list = []
            for part, size in self.runs:
                if size == 1:
                    flat += part(given)
                    continue
                value = given[part]
                if size > 1 and len(value) != size:
                    raise ScriptCallError(
                        f"{self.script}.lua: {self.what} {part} takes {size} values, "
                        f"not {len(value)}"
                    )
                flat += value
            return flat
        except KeyError:
            raise self._refusal(given) from None

    def _refusal(self, given: Mapping[str, Any]) -> ScriptCallError:
        missing = sorted(self.names - set(given))
        unknown = sorted(set(given) - self.names)
        return ScriptCallError(
            f"{self.script}.lua: {self.what} missing {missing or 'none'}, "
            f"unknown {unknown or 'none'} (declared: {self.declared or 'none'})"
        )


class LuaScript:
    """One composed script: its text, SHA-1 and declared keys and args."""

    __slots__ = ("args", "keys", "name", "sha", "text")

    def __init__(self, name: str, text: str, keys: Slots, args: Slots):
        self.name, self.text, self.keys, self.args = name, text, keys, args
        self.sha = hashlib.sha1(text.encode()).hexdigest()  # noqa: S324 - redis names scripts by SHA-1  # nosec B324

    def __call__(
        self,
        client: Any,
        keys: Mapping[str, Any],
        args: Mapping[str, Any],
        held: bool = False,
    ) -> Any:
        """Run the script; ``held``: on the calling thread's kept connection, where
        the client keeps one (``PinnableRedis.execute_held``: the hot KV routes)."""
        flat_keys = self.keys.flatten(keys)
        flat_args = self.args.flatten(args)
        execute = getattr(client, "execute_held", None) if held else None
        if execute is None:
            execute = client.execute_command
        try:
            return execute("EVALSHA", self.sha, len(flat_keys), *flat_keys, *flat_args)
        except NoScriptError:
            client.script_load(self.text)
            return execute("EVALSHA", self.sha, len(flat_keys), *flat_keys, *flat_args)

    def __repr__(self) -> str:
        return f"<LuaScript {self.name} {self.sha[:12]}>"


def _read(name: str) -> tuple[str, ...]:
    path = LUA_DIR / name
    if not path.is_file():
        raise ScriptError(f"no Lua file {name} in {LUA_DIR}")
    return _lines(path)


@functools.cache
def _lines(path: Path) -> tuple[str, ...]:
    """A file's lines, read once: loading reads each header and fragment several times
    (listing the scripts, each script's header, every include)."""
    return tuple(path.read_text(encoding="ascii").splitlines())


def compose(filename: str, included: set[str] | None = None, stack: tuple = ()) -> list[str]:
    """The file's lines with its includes inlined and its directives dropped.

    A fragment is inlined once per script (``included``), so two fragments that
    include each other do not loop."""
    included = set() if included is None else included
    composed: list[str] = []
    for number, line in enumerate(_read(filename)):
        stripped = line.strip()
        if number == 0 and stripped.startswith("#!"):
            if stack:
                raise ScriptError(f"{filename}: a fragment cannot carry a #! line")
            composed.append(line)
            continue
        if not stripped.startswith(_DIRECTIVE):
            composed.append(line)
            continue
        include = _INCLUDE.match(stripped)
        if include is None:
            if stripped != "--! fragment" and _DECLARE.match(stripped) is None:
                raise ScriptError(f"{filename}: unknown directive {stripped!r}")
            continue
        fragment = include.group(1)
        if fragment in included:
            continue
        if not _header(fragment).get("fragment"):
            raise ScriptError(f"{filename} includes {fragment}, which is not a fragment")
        included.add(fragment)
        composed += compose(fragment, included, (*stack, filename))
    return composed


def _header(filename: str) -> dict[str, str]:
    """The file's ``--! keys:``, ``--! args:`` and ``--! fragment`` declarations."""
    found: dict[str, str] = {}
    for line in _read(filename):
        stripped = line.strip()
        if stripped == "--! fragment":
            found["fragment"] = "yes"
        declared = _DECLARE.match(stripped)
        if declared is not None:
            found[declared.group(1)] = declared.group(2)
    return found


def _load(name: str) -> LuaScript:
    header = _header(f"{name}.lua")
    if header.get("fragment") or "keys" not in header or "args" not in header:
        raise ScriptError(f"{name}.lua declares no '--! keys:' and '--! args:' (a fragment?)")
    text = "\n".join(compose(f"{name}.lua")) + "\n"
    keys, args = Slots(name, "keys", header["keys"]), Slots(name, "args", header["args"])
    return LuaScript(name, text, keys, args)


def script_names() -> list[str]:
    """Every script in the package (fragments left out)."""
    return sorted(
        path.stem for path in LUA_DIR.glob("*.lua") if not _header(path.name).get("fragment")
    )


def fragment_names() -> list[str]:
    return sorted(path.name for path in LUA_DIR.glob("*.lua") if _header(path.name).get("fragment"))


SCRIPTS: dict[str, LuaScript] = {name: _load(name) for name in script_names()}
# The scripts modules asked for (a test checks that no file is an orphan).
REQUESTED: set[str] = set()


def script(name: str) -> LuaScript:
    """The loaded script ``<name>.lua``; a module takes it once, at import."""
    try:
        found = SCRIPTS[name]
    except KeyError:
        raise ScriptError(f"no Lua script {name}.lua in {LUA_DIR}") from None
    REQUESTED.add(name)
    return found
