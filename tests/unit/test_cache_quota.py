"""Unit tests of registry_p2p.cache_quota: the LRU choice, reservations, leases and trimming."""

import hashlib
import io
import logging
import os

import pytest

from registry_p2p import config
from registry_p2p.blobcache import BlobCache
from registry_p2p.cache_quota import CachedBlob, CacheQuota, Percentage, choose_evictions
from registry_p2p.config import AGENT_OPTIONS, SIDECAR_OPTIONS, ConfigError

KIB = 1024


def blob(name, size, last_used):
    return CachedBlob(name, size, last_used)


# choose_evictions


def test_choice_oldest_first():
    blobs = [blob("b", 10, 200.0), blob("a", 10, 100.0), blob("c", 10, 300.0)]

    chosen = choose_evictions(blobs, 15)

    assert [entry.hex_digest for entry in chosen] == ["a", "b"]


def test_choice_stops_when_enough():
    blobs = [blob("a", 50, 100.0), blob("b", 10, 200.0)]

    assert [entry.hex_digest for entry in choose_evictions(blobs, 50)] == ["a"]


def test_choice_nothing_needed():
    assert choose_evictions([blob("a", 10, 100.0)], 0) == []
    assert choose_evictions([blob("a", 10, 100.0)], -5) == []


def test_choice_skips_protected():
    blobs = [blob("a", 10, 100.0), blob("b", 10, 200.0), blob("c", 10, 300.0)]

    chosen = choose_evictions(blobs, 10, protected={"a"})

    assert [entry.hex_digest for entry in chosen] == ["b"]


def test_choice_impossible_returns_none():
    blobs = [blob("a", 10, 100.0), blob("b", 10, 200.0)]

    assert choose_evictions(blobs, 15, protected={"b"}) is None
    assert choose_evictions(blobs, 21) is None
    assert choose_evictions([], 1) is None


def test_choice_ties_in_digest_order():
    forward = [blob("a", 10, 100.0), blob("b", 10, 100.0)]
    backward = list(reversed(forward))

    assert choose_evictions(forward, 10) == choose_evictions(backward, 10) == [forward[0]]


# CacheQuota with a real BlobCache


@pytest.fixture
def cache(tmp_path):
    return BlobCache(tmp_path / "cache")


def add_blob(cache, size, last_used):
    """Cache a blob of ``size`` bytes last used at Unix time ``last_used``; return its hex digest."""
    data = os.urandom(size)
    hex_digest = hashlib.sha256(data).hexdigest()
    cache.fill(hex_digest, size, io.BytesIO(data))
    os.utime(cache.info_path(hex_digest), (last_used, last_used))
    return hex_digest


class Evictions:
    """An eviction callback that deletes the blob and records the order."""

    def __init__(self, cache, fail=()):
        self.cache = cache
        self.fail = set(fail)
        self.evicted = []

    def __call__(self, hex_digest):
        if hex_digest in self.fail:
            return False
        self.evicted.append(hex_digest)
        self.cache.remove(hex_digest)
        return True


def test_reserve_within_limit_evicts_nothing(cache):
    add_blob(cache, 10 * KIB, 100)
    evict = Evictions(cache)
    quota = CacheQuota(cache, 30 * KIB, 0, evict)

    assert quota.reserve("f" * 64, 10 * KIB)
    assert evict.evicted == []
    assert quota.evictions == 0


def test_reserve_evicts_least_recently_used(cache, caplog):
    oldest = add_blob(cache, 10 * KIB, 100)
    newest = add_blob(cache, 10 * KIB, 300)
    middle = add_blob(cache, 10 * KIB, 200)
    evict = Evictions(cache)
    quota = CacheQuota(cache, 30 * KIB, 0, evict)

    with caplog.at_level(logging.INFO, logger="registry_p2p.cache_quota"):
        assert quota.reserve("f" * 64, 10 * KIB)

    assert evict.evicted == [oldest]
    assert quota.evictions == 1
    assert cache.load_info(oldest) is None
    assert cache.load_info(newest) is not None
    assert cache.load_info(middle) is not None
    assert f"evicted blob sha256:{oldest} ({10 * KIB} bytes" in caplog.text


def test_touch_changes_the_choice(cache):
    first = add_blob(cache, 10 * KIB, 100)
    second = add_blob(cache, 10 * KIB, 200)
    cache.touch(first)
    evict = Evictions(cache)
    quota = CacheQuota(cache, 20 * KIB, 0, evict)

    assert quota.reserve("f" * 64, 10 * KIB)

    assert evict.evicted == [second]


def test_leased_blob_is_not_evicted(cache):
    oldest = add_blob(cache, 10 * KIB, 100)
    newer = add_blob(cache, 10 * KIB, 200)
    evict = Evictions(cache)
    quota = CacheQuota(cache, 20 * KIB, 0, evict)

    with quota.lease(oldest) as leased:
        assert leased
        assert quota.reserve("f" * 64, 10 * KIB)

    assert evict.evicted == [newer]


def test_reservations_count_against_the_limit(cache):
    evict = Evictions(cache)
    quota = CacheQuota(cache, 25 * KIB, 0, evict)

    assert quota.reserve("e" * 64, 10 * KIB)
    assert quota.reserve("f" * 64, 10 * KIB)
    assert not quota.reserve("d" * 64, 10 * KIB)

    quota.unreserve("e" * 64)
    assert quota.reserve("d" * 64, 10 * KIB)


def test_reserve_fails_when_all_blobs_leased(cache, caplog):
    only = add_blob(cache, 10 * KIB, 100)
    evict = Evictions(cache)
    quota = CacheQuota(cache, 15 * KIB, 0, evict)

    with quota.lease(only), caplog.at_level(logging.WARNING, logger="registry_p2p.cache_quota"):
        assert not quota.reserve("f" * 64, 10 * KIB)

    assert evict.evicted == []
    assert cache.load_info(only) is not None
    assert "serving it without caching" in caplog.text
    assert quota.state()["cache_reserved_bytes"] == 0


def test_reserve_fails_for_blob_over_limit(cache):
    evict = Evictions(cache)
    quota = CacheQuota(cache, 10 * KIB, 0, evict)

    assert not quota.reserve("f" * 64, 10 * KIB + 1)


def test_failed_eviction_fails_reservation(cache):
    stuck = add_blob(cache, 10 * KIB, 100)
    evict = Evictions(cache, fail={stuck})
    quota = CacheQuota(cache, 10 * KIB, 0, evict)

    assert not quota.reserve("f" * 64, 10 * KIB)
    assert quota.evictions == 0
    assert cache.load_info(stuck) is not None


def test_lease_refused_during_eviction(cache):
    victim = add_blob(cache, 10 * KIB, 100)
    leases = []

    def evict(hex_digest):
        leases.append(quota.acquire(hex_digest))
        cache.remove(hex_digest)
        return True

    quota = CacheQuota(cache, 10 * KIB, 0, evict)

    assert quota.reserve("f" * 64, 10 * KIB)
    assert leases == [False]
    assert quota.acquire(victim)


class FixedFreeSpaceCache(BlobCache):
    """A BlobCache whose file system reports ``free`` bytes available, whatever the disk has."""

    free = 0

    def free_bytes(self):
        return self.free


def test_free_space_floor_evicts(tmp_path):
    cache = FixedFreeSpaceCache(tmp_path / "cache")
    blobs = [add_blob(cache, 10 * KIB, 100 + index) for index in range(3)]
    cache.free = 100 * KIB
    evict = Evictions(cache)
    # 100 KiB free - 10 KiB new blob leaves 90 KiB, so a floor of 105 KiB needs 15 KiB freed.
    quota = CacheQuota(cache, 10**15, 105 * KIB, evict)

    assert quota.reserve("f" * 64, 10 * KIB)

    assert evict.evicted == blobs[:2]


def test_free_space_floor_counts_unwritten_reservations(tmp_path):
    cache = FixedFreeSpaceCache(tmp_path / "cache")
    cache.free = 100 * KIB
    quota = CacheQuota(cache, 10**15, 50 * KIB, Evictions(cache))

    assert quota.reserve("e" * 64, 40 * KIB)
    assert not quota.reserve("f" * 64, 40 * KIB)


def test_free_space_floor_off_at_zero(cache):
    add_blob(cache, 10 * KIB, 100)
    evict = Evictions(cache)
    quota = CacheQuota(cache, 10**15, 0, evict)

    assert quota.reserve("f" * 64, cache.free_bytes() * 2)
    assert evict.evicted == []


def test_trim_at_start(cache):
    oldest = add_blob(cache, 10 * KIB, 100)
    newer = add_blob(cache, 10 * KIB, 200)
    evict = Evictions(cache)
    quota = CacheQuota(cache, 15 * KIB, 0, evict)

    quota.trim()

    assert evict.evicted == [oldest]
    assert cache.load_info(newer) is not None


def test_percentage_limit(cache):
    stat = os.statvfs(cache.root)
    quota = CacheQuota(cache, Percentage(50), 0, Evictions(cache))

    assert quota.max_bytes == stat.f_blocks * stat.f_frsize // 2


# BlobCache support


def test_entries_report_size_and_last_use(cache):
    hex_digest = add_blob(cache, 3 * KIB, 1234)

    assert list(cache.entries()) == [CachedBlob(hex_digest, 3 * KIB, 1234.0)]


def test_touch_of_missing_blob_is_logged(cache, caplog):
    with caplog.at_level(logging.INFO, logger="registry_p2p.blobcache"):
        cache.touch("a" * 64)

    assert f"blob sha256:{'a' * 64} left the cache" in caplog.text


# Config


@pytest.mark.parametrize("options", [SIDECAR_OPTIONS, AGENT_OPTIONS], ids=["sidecar", "agent"])
def test_default_cache_limits(options):
    loaded = config.load(options)

    assert loaded["cache_max_size"] == Percentage(50)
    assert loaded["cache_min_free_bytes"] == 1024 * 1024 * 1024


@pytest.mark.parametrize("text, expected", [
    ("cache_max_size = 5000000", 5000000),
    ('cache_max_size = "12.5%"', Percentage(12.5)),
    ('cache_max_size = "100%"', Percentage(100)),
])
def test_cache_max_size_values(text, expected):
    assert config.load(AGENT_OPTIONS, text=text)["cache_max_size"] == expected


@pytest.mark.parametrize("text", [
    "cache_max_size = 0",
    "cache_max_size = -1",
    "cache_max_size = true",
    'cache_max_size = "0%"',
    'cache_max_size = "150%"',
    'cache_max_size = "half%"',
    'cache_max_size = "50"',
    "cache_min_free_bytes = -1",
])
def test_invalid_cache_limits_rejected(text):
    with pytest.raises(ConfigError) as caught:
        config.load(AGENT_OPTIONS, text=text)

    assert text.split(" = ")[0] in str(caught.value)
