"""The Lua scripts in productionlab/lua/ and their one call helper (luascripts.py):
every file compiles on a real redis-server, every one is used, includes resolve,
and a call that names a key or arg wrongly never reaches redis."""

from __future__ import annotations

import importlib
import pkgutil
import re
from collections.abc import Iterator

import pytest
import redis

import productionlab
from productionlab import luascripts, ratelimit, shardkv
from productionlab.audit import Actor
from productionlab.luascripts import SCRIPTS, ScriptCallError, ScriptError, script
from productionlab.redis_process import RedisProcess
from productionlab.store.layout import shard_for


@pytest.fixture(scope="module")
def client() -> Iterator[redis.Redis]:
    """A throwaway redis-server (free loopback port, temp dir, AOF on)."""
    with RedisProcess() as connection:
        yield connection


def test_the_package_ships_scripts_and_fragments():
    assert len(SCRIPTS) >= 14
    assert set(luascripts.fragment_names()) >= {
        "audit_prelude.lua",
        "shard_quota.lua",
        "shard_write.lua",
    }


@pytest.mark.parametrize("name", sorted(SCRIPTS))
def test_every_script_compiles_on_redis(client, name):
    loaded = client.script_load(SCRIPTS[name].text)
    assert loaded == SCRIPTS[name].sha


def test_every_script_is_used_by_a_module_and_every_fragment_by_a_script():
    for module in pkgutil.walk_packages(productionlab.__path__, "productionlab."):
        if not module.name.endswith("__main__"):
            importlib.import_module(module.name)
    assert luascripts.REQUESTED == set(SCRIPTS), "a .lua script no module calls"
    included = set()
    for name in [*SCRIPTS, *(f[:-4] for f in luascripts.fragment_names())]:
        text = (luascripts.LUA_DIR / f"{name}.lua").read_text()
        included |= set(re.findall(r"^--! include (\S+)$", text, re.M))
    assert included == set(luascripts.fragment_names()), "a fragment nothing includes"


def test_a_fragment_is_inlined_where_declared_and_only_once():
    put = SCRIPTS["shard_put_fused"].text
    prelude = (luascripts.LUA_DIR / "audit_prelude.lua").read_text()
    body = "\n".join(line for line in prelude.splitlines() if not line.startswith("--!"))
    assert body in put
    # shard_write.lua includes the prelude and shard_quota.lua, which includes
    # shard_marks.lua: each once, in the order the includes stand
    assert put.count("local function audit(") == 1
    assert put.count("local function shard_of_tag(") == 1
    order = [
        put.index(marker)
        for marker in (
            "local function audit(",
            "local function shard_of_tag(",
            "local function uncharge(",
            "local function put_item(",
            "local function take_limit(",
            "local function ledger_total(",
            "local S = shard_of_tag(",
        )
    ]
    assert order == sorted(order)
    assert "--!" not in put
    # a #!lua line stays first; the fragment's text follows
    delete = SCRIPTS["shard_delete_fused"].text
    assert delete.startswith("#!lua flags=allow-oom\n")
    assert delete.count("#!lua") == 1


def test_declared_slots_match_what_the_script_reads():
    for name, loaded in SCRIPTS.items():
        for slots, array in ((loaded.keys, "KEYS"), (loaded.args, "ARGV")):
            fixed = sum(size for _, size in slots.fields)
            variadic = any(size == 0 for _, size in slots.fields)
            used = [int(n) for n in re.findall(rf"\b{array}\[(\d+)\]", loaded.text)]
            highest = max(used, default=0)
            if variadic:
                assert highest <= fixed + 1, (name, array, highest, slots.declared)
            else:
                assert highest == fixed, (name, array, highest, slots.declared)
        if "local function audit(" in loaded.text:
            assert loaded.keys.fields[0] == ("audit", 2), name
            assert loaded.args.fields[0] == ("audit", 6), name


def test_lua_constants_are_the_python_ones():
    assert f"local USAGE_TOTAL = '{shardkv.USAGE_TOTAL}'" in SCRIPTS["shard_settle"].text
    assert ratelimit.NO_TICKET.counter.startswith(ratelimit.LIMITS)
    assert ratelimit.NO_TICKET.limit == 0


def test_a_wrong_name_is_refused_before_redis(client):
    put = script("shard_put_fused")
    place = shard_for("k")
    keys = {**shardkv.shard_keys(place, "k"), "limit": ratelimit.NO_TICKET.counter}
    keys |= {"usage": shardkv.USAGE_TOTAL + "t"}
    args = {"audit": Actor("t").audit_args(), "tag": place.tag, "shard": place.number}
    args |= {"key": "k", "value": b"v", "ttl_ms": 0, "cond": "", "expected": "", "owner": "t"}
    args |= {"max_keys": 10, "max_bytes": 1000, "limit": 0, "window": 0}
    client.config_resetstat()
    with pytest.raises(ScriptCallError, match=r"missing \['window'\]"):
        put(client, keys=keys, args={k: v for k, v in args.items() if k != "window"})
    with pytest.raises(ScriptCallError, match=r"unknown \['ttl'\]"):
        put(client, keys=keys, args={**args, "ttl": 5})
    with pytest.raises(ScriptCallError, match=r"missing \['ttl_ms'\], unknown \['ttl'\]"):
        put(client, keys=keys, args={**{k: v for k, v in args.items() if k != "ttl_ms"}, "ttl": 5})
    with pytest.raises(ScriptCallError, match="audit takes 6 values"):
        put(client, keys=keys, args={**args, "audit": ["", ""]})
    with pytest.raises(ScriptCallError, match=r"keys missing \['limit'\]"):
        put(client, keys={k: v for k, v in keys.items() if k != "limit"}, args=args)
    assert "cmdstat_evalsha" not in client.info("commandstats")
    assert client.dbsize() == 0
    # the same call with every name right runs
    assert put(client, keys=keys, args=args)[0] == 0
    assert client.hget(place.item("k"), "v") == b"v"
    with pytest.raises(ScriptError, match="no Lua script"):
        script("kv_nothing")


def test_a_script_redis_lost_is_loaded_again(client):
    usage = script("shard_usage")
    place = shard_for("nobody")
    keys = {"usage": place.usage("nobody")}
    args = {"tag": place.tag, "shard": place.number, "user": "nobody", "batch": 10}
    assert usage(client, keys=keys, args=args)[:4] == [0, b"nobody", b"0", b"0"]
    client.script_flush()
    assert client.script_exists(usage.sha) == [False]
    assert usage(client, keys=keys, args=args)[:4] == [0, b"nobody", b"0", b"0"]
    assert client.script_exists(usage.sha) == [True]


def test_the_loader_refuses_malformed_files(tmp_path, monkeypatch):
    monkeypatch.setattr(luascripts, "LUA_DIR", tmp_path)
    (tmp_path / "a.lua").write_text("--! fragment\n--! include b.lua\nlocal a = 1\n")
    (tmp_path / "b.lua").write_text("--! fragment\n--! include a.lua\nlocal b = 1\n")
    (tmp_path / "loop.lua").write_text("--! keys:\n--! args:\n--! include a.lua\nreturn 1\n")
    (tmp_path / "plain.lua").write_text("--! keys: x\n--! args:\nreturn 1\n")
    (tmp_path / "uses_plain.lua").write_text("--! keys:\n--! args:\n--! include plain.lua\n")
    (tmp_path / "missing.lua").write_text("--! keys:\n--! args:\n--! include none.lua\n")
    (tmp_path / "bad.lua").write_text("--! keys: Item\n--! args:\nreturn 1\n")
    (tmp_path / "rest.lua").write_text("--! keys: more... x\n--! args:\nreturn 1\n")
    (tmp_path / "nohead.lua").write_text("return 1\n")
    (tmp_path / "typo.lua").write_text("--! keys:\n--! args:\n--! includ c.lua\nreturn 1\n")
    for name, message in [
        ("uses_plain", "not a fragment"),
        ("missing", "no Lua file none.lua"),
        ("bad", "not a slot name"),
        ("rest", "only the last name"),
        ("nohead", "declares no"),
        ("typo", "unknown directive"),
    ]:
        with pytest.raises(ScriptError, match=message):
            luascripts._load(name)
    (tmp_path / "ok.lua").write_text(
        "#!lua flags=allow-oom\n--! keys: k\n--! args: x[2] rest...\n--! include c.lua\nreturn 1\n"
    )
    (tmp_path / "c.lua").write_text("--! fragment\nlocal c = 1\n")
    assert luascripts._load("loop").text == "local b = 1\nlocal a = 1\nreturn 1\n"
    (tmp_path / "shebang.lua").write_text("--! keys:\n--! args:\n--! include d.lua\n")
    (tmp_path / "d.lua").write_text("#!lua flags=allow-oom\n--! fragment\n")
    with pytest.raises(ScriptError, match="a fragment cannot carry"):
        luascripts._load("shebang")
    loaded = luascripts._load("ok")
    assert loaded.text == "#!lua flags=allow-oom\nlocal c = 1\nreturn 1\n"
    assert loaded.args.flatten({"x": [1, 2], "rest": [3, 4, 5]}) == [1, 2, 3, 4, 5]
    assert loaded.args.flatten({"x": (1, 2), "rest": []}) == [1, 2]
