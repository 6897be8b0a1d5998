"""The virtual-shard layout (productionlab/store/layout.py): a key's shard never
moves, the shards' tags sit where the layout says on a real cluster, versions
carry their shard, and every per-shard key name stays inside its shard's slot."""

from __future__ import annotations

import hashlib
import re
from collections import Counter

import pytest

from productionlab.contract import KEY_MAX, KEY_RE
from productionlab.store.layout import (
    MAIN_TAG,
    SHARD_KEY_PREFIX,
    SHARDS,
    SLOTS,
    TAGS,
    all_shards,
    key_of_item,
    shard,
    shard_for,
    shard_of,
    shard_of_version,
    version_of,
)
from tests.cluster_kit import RedisClusterKit


def crc32_bitwise(data: bytes) -> int:
    """CRC-32 (IEEE 802.3, reflected, polynomial 0xEDB88320) bit by bit: an
    implementation of the standard that shares nothing with zlib's."""
    crc = 0xFFFFFFFF
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ (0xEDB88320 if crc & 1 else 0)
    return crc ^ 0xFFFFFFFF


def crc16_xmodem(data: bytes) -> int:
    """Redis Cluster's CRC16 (XMODEM, polynomial 0x1021), bit by bit."""
    crc = 0
    for byte in data:
        crc ^= byte << 8
        for _ in range(8):
            crc = ((crc << 1) ^ 0x1021) if crc & 0x8000 else crc << 1
            crc &= 0xFFFF
    return crc


def hash_tag(key: str) -> str:
    """What Redis Cluster hashes: the text between the first ``{`` and the next ``}``."""
    start = key.find("{")
    end = key.find("}", start + 1)
    if start < 0 or end <= start + 1:
        return key
    return key[start + 1 : end]


def slot_of(key: str) -> int:
    return crc16_xmodem(hash_tag(key).encode()) % SLOTS


# sha256 of shard_of("k0") ... shard_of("k5999") in hex digits, one per key.
PINNED_DIGEST = "75cabf5350e147d3e4b42a26052ada05c340e521234cd589cac8e76a5a72d807"


def sample_keys() -> list[str]:
    """Many valid KV keys: short, long, every key character, and sequences."""
    chars = "ABCXYZabcxyz0189_-"
    keys = [f"k{i}" for i in range(4000)]
    keys += [f"user-{i:05d}/x".replace("/", "_") for i in range(1000)]
    keys += [c * n for c in chars for n in (1, 2, 7, 64, KEY_MAX)]
    keys += [hashlib.sha256(str(i).encode()).hexdigest()[: 1 + i % 64] for i in range(1000)]
    assert all(KEY_RE.match(key) for key in keys)
    return keys


def test_the_shard_of_a_key_is_the_standard_crc32_modulo_the_shard_count():
    assert shard_of("123456789") == 0xCBF43926 % SHARDS  # CRC-32's check value
    for key in sample_keys():
        assert shard_of(key) == crc32_bitwise(key.encode()) % SHARDS, key


def test_the_shard_of_every_sample_key_is_pinned():
    """A key must never change shard (its data would be lost to the lookup): the
    shards of 6,000 sequential keys are pinned by their digest."""
    shards = "".join(format(shard_of(f"k{i}"), "x") for i in range(6000))
    digest = hashlib.sha256(shards.encode()).hexdigest()
    assert digest == PINNED_DIGEST, f"shard_of moved keys: {shards[:64]}..."


def test_keys_spread_over_every_shard():
    counts = Counter(shard_of(f"k{i}") for i in range(16000))
    assert sorted(counts) == list(range(SHARDS))
    # 1000 expected per shard; a uniform hash stays far inside this.
    assert all(800 <= n <= 1200 for n in counts.values()), counts


def test_tags_are_the_shards_and_sit_in_the_middle_of_their_sixteenth_of_the_slots():
    assert len(TAGS) == SHARDS and len(set(TAGS)) == SHARDS
    for number, tag in enumerate(TAGS):
        assert re.fullmatch(r"\{plab:s(\d\d)\.\d+\}", tag), tag
        assert tag.startswith(f"{SHARD_KEY_PREFIX}{number:02d}.")
        assert slot_of(tag) == 1024 * number + 512, tag


def test_every_shard_key_is_in_its_shards_slot_and_none_in_the_main_tag():
    main_slot = slot_of(MAIN_TAG)
    for each in all_shards():
        names = [*each.keys().values(), each.item("k-1"), each.usage("alice")]
        names += [each.usage("alice") + ":exp", each.usage("alice") + ":ttl"]
        for name in names:
            assert name.startswith(each.tag + ":") and name.startswith(SHARD_KEY_PREFIX), name
            assert slot_of(name) == slot_of(each.tag) != main_slot, name
        assert len(set(each.keys().values())) == len(each.keys())
    # The keys that stay under {plab} never match the shards' ACL prefix.
    assert not (MAIN_TAG + ":kv:x").startswith(SHARD_KEY_PREFIX)


def test_shard_for_a_key_holds_its_item():
    for key in ("a", "k" * KEY_MAX, "alpha-1"):
        assert shard_for(key) == shard(shard_of(key))
        assert shard_for(key).item(key) == f"{TAGS[shard_of(key)]}:kv:{key}"


@pytest.mark.parametrize("number", [-1, SHARDS, 99])
def test_there_is_no_shard_outside_the_count(number):
    with pytest.raises(ValueError, match="no shard"):
        shard(number)


def test_versions_carry_their_shard_and_never_repeat_across_shards():
    seen: set[int] = set()
    for number in range(SHARDS):
        previous = -1
        for counter in range(1, 200):
            version = version_of(counter, number)
            assert shard_of_version(version) == number
            assert version > previous
            previous = version
            seen.add(version)
    assert len(seen) == SHARDS * 199


def test_the_tags_spread_over_the_masters_of_a_real_cluster():
    """On a three-master cluster made by ``redis-cli --cluster create``, redis's
    own CLUSTER KEYSLOT puts every tag on its placed slot, and no master holds
    more than six of the sixteen shards (the plain ``{plab:sNN}`` tags put eight
    on one)."""
    kit = RedisClusterKit().start()
    try:
        per_master: Counter[int] = Counter()
        for number, tag in enumerate(TAGS):
            assert kit.slot_of(tag) == 1024 * number + 512
            assert kit.slot_of(shard(number).item("some-key")) == 1024 * number + 512
            per_master[kit.owner_of_slot(kit.slot_of(tag)).port] += 1
        assert len(per_master) == 3 and max(per_master.values()) <= 6, per_master
        plain = Counter(
            kit.owner_of_slot(kit.slot_of(f"{{plab:s{n:02d}}}")).port for n in range(SHARDS)
        )
        assert max(plain.values()) == 8, plain  # why the tags are placed
    finally:
        kit.stop()


def test_an_items_name_gives_its_key_back():
    for key in ("a", "k" * KEY_MAX, "x-1_y"):
        assert key_of_item(shard_for(key).item(key)) == key
    wrong_shard = shard((shard_of("a") + 1) % SHARDS).item("a")
    for name in ("{plab}:kv:a", wrong_shard, TAGS[0] + ":kv:", TAGS[0] + ":usage:a", "a"):
        assert key_of_item(name) is None, name
