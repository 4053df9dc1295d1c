"""Prometheus names and values of the agent's and the sidecar's collectors."""

import hashlib

import libtorrent as lt
import pytest
from prometheus_client.parser import text_string_to_metric_families

from registry_p2p import metrics, torrent
from registry_p2p.agent.metrics import AgentCollector
from registry_p2p.agent.stats import RECENT_FALLBACKS, BlobStats
from registry_p2p.blobcache import BlobCache
from registry_p2p.cache_quota import CacheQuota
from registry_p2p.errors import FALLBACK_REASONS, P2PError
from registry_p2p.session import SESSION_STATS, Download
from registry_p2p.sidecar.metrics import SEEDER_COUNTERS, SeederCollector
from registry_p2p.sidecar.seeder import COUNTER_NAMES

BLOB = b"cached blob bytes " * 1000
HEX = hashlib.sha256(BLOB).hexdigest()
HEX_P2P = "a" * 64
HEX_FALLBACK = "b" * 64


class SessionStandIn:
    """The three TorrentSession methods that the collectors read, with fixed values."""

    def __init__(self, stats):
        self.stats = stats

    def session_stats(self):
        return dict(self.stats)

    def counters(self):
        return {"uploaded_bytes": self.stats["net.sent_payload_bytes"]}

    def stream_readers(self):
        return 2


class SeederStandIn:
    def __init__(self, stats, session):
        self._stats = stats
        self.session = session

    def stats(self):
        return dict(self._stats)


def libtorrent_values():
    return {name: index + 1 for index, name in enumerate(SESSION_STATS)}


def samples_of(registry_text):
    """Return {(sample name, sorted label pairs): value} and {family name: type}."""
    samples = {}
    kinds = {}
    for family in text_string_to_metric_families(registry_text):
        kinds[family.name] = family.type
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples, kinds


def exposition_text(collector):
    return metrics.exposition(metrics.new_registry(collector))[0].decode()


def family_names(collector):
    """Return (exposed name, type) per family; prometheus_client strips a counter's _total."""
    return [(family.name + "_total" if family.type == "counter" else family.name, family.type)
            for family in collector.collect()]


@pytest.fixture
def cache(tmp_path):
    cache = BlobCache(tmp_path / "cache")
    info = torrent.build_info(HEX, len(BLOB), b"")
    path = cache.data_path(HEX)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(BLOB)
    cache.write_info(HEX, info)
    return cache


@pytest.fixture
def quota(cache):
    quota = CacheQuota(cache, max_bytes=10 * len(BLOB), min_free_bytes=0,
                       evict=lambda hex_digest: True)
    quota.evictions = 2
    return quota


@pytest.fixture
def blob_stats():
    stats = BlobStats()
    download = Download(info_hash="0" * 40, length=3000)
    download.bytes_by_client = {"-RS0100-": 1000, "-RA0100-": 1500, "-RA0100x": 500}
    stats.record_download(HEX_P2P, download, source="p2p", size=3000, seconds=1.7)
    stats.record(HEX, from_registry=400, source="registry")
    stats.record_fallback(HEX_FALLBACK, "team/app", P2PError("no progress", reason="stalled"))
    stats.record(HEX_FALLBACK, from_registry=700, from_fallback=700)
    for source in ("p2p", "p2p", "cache", "registry", "fallback"):
        stats.record_served(source)
    return stats


def test_libtorrent_counter_name():
    assert (metrics.libtorrent_metric_name("net.sent_payload_bytes", "counter")
            == "registry_p2p_libtorrent_net_sent_payload_bytes_total")


def test_libtorrent_gauge_name():
    assert (metrics.libtorrent_metric_name("peer.num_peers_connected", "gauge")
            == "registry_p2p_libtorrent_peer_num_peers_connected")


def test_libtorrent_table_covers_session_stats():
    assert set(metrics.LIBTORRENT_METRICS) == set(SESSION_STATS)


def test_libtorrent_kinds_match_libtorrent():
    names = {"counter": lt.metric_type_t.counter, "gauge": lt.metric_type_t.gauge}
    kinds = {metric.name: metric.type for metric in lt.session_stats_metrics()}
    for name, (kind, _) in metrics.LIBTORRENT_METRICS.items():
        assert name in kinds, name
        assert kinds[name] == names[kind], name


@pytest.mark.parametrize("name, kind", [
    ("registry_p2p_downloaded_bytes_total", "counter"),
    ("registry_p2p_cache_bytes", "gauge"),
    ("registry_p2p_download_duration_seconds", "histogram"),
    ("registry_p2p_tracker_swarms", "gauge"),
])
def test_conventional_names_pass(name, kind):
    assert metrics.naming_problems(name, kind) == []


@pytest.mark.parametrize("name, kind, problem", [
    ("registry_p2p_downloaded_bytes", "counter", "_total must end counters and only counters"),
    ("registry_p2p_cache_bytes_total", "gauge", "_total must end counters and only counters"),
    ("p2p_cache_bytes", "gauge", "no registry_p2p_ prefix"),
    ("registry_p2p_CacheBytes", "gauge", "not lower snake case"),
    ("registry_p2p_bytes_sent_total", "counter", "a byte metric must end in _bytes"),
    ("registry_p2p_download_duration", "histogram", "a duration histogram must end in _seconds"),
])
def test_unconventional_names_fail(name, kind, problem):
    assert problem in metrics.naming_problems(name, kind)


def test_agent_family_names(blob_stats, cache, quota):
    collector = AgentCollector(blob_stats, SessionStandIn(libtorrent_values()), cache, quota)
    for name, kind in family_names(collector):
        assert metrics.naming_problems(name, kind) == [], name


def test_seeder_family_names():
    stats = {**dict.fromkeys(COUNTER_NAMES, 0), "uploaded_bytes": 0, "seeded_blobs": 0,
             "swarms": {}, "cache_blobs": 0, "cache_bytes": 0, "cache_evictions": 0}
    collector = SeederCollector(SeederStandIn(stats, SessionStandIn(libtorrent_values())))
    for name, kind in family_names(collector):
        assert metrics.naming_problems(name, kind) == [], name


def test_seeder_counters_cover_counter_names():
    assert set(SEEDER_COUNTERS) == set(COUNTER_NAMES)


def test_agent_downloaded_bytes_by_source(blob_stats, cache, quota):
    collector = AgentCollector(blob_stats, SessionStandIn(libtorrent_values()), cache, quota)
    samples, _ = samples_of(exposition_text(collector))

    def downloaded(source):
        return samples[("registry_p2p_downloaded_bytes_total", (("source", source),))]

    assert downloaded("origin") == 1000
    assert downloaded("peer") == 2000
    assert downloaded("registry") == 400
    assert downloaded("fallback") == 700


def test_agent_fallbacks_by_reason(blob_stats, cache, quota):
    collector = AgentCollector(blob_stats, SessionStandIn(libtorrent_values()), cache, quota)
    samples, _ = samples_of(exposition_text(collector))

    for reason in FALLBACK_REASONS:
        expected = 1 if reason == "stalled" else 0
        assert samples[("registry_p2p_fallbacks_total", (("reason", reason),))] == expected


def test_agent_served_and_cache(blob_stats, cache, quota):
    collector = AgentCollector(blob_stats, SessionStandIn(libtorrent_values()), cache, quota)
    samples, kinds = samples_of(exposition_text(collector))

    assert samples[("registry_p2p_blobs_served_total", (("source", "p2p"),))] == 2
    assert samples[("registry_p2p_blobs_served_total", (("source", "cache"),))] == 1
    assert samples[("registry_p2p_cache_bytes", ())] == len(BLOB)
    assert samples[("registry_p2p_cache_blobs", ())] == 1
    assert samples[("registry_p2p_cache_evictions_total", ())] == 2
    assert samples[("registry_p2p_stream_readers", ())] == 2
    assert kinds["registry_p2p_download_duration_seconds"] == "histogram"


def test_agent_download_histogram(blob_stats, cache, quota):
    collector = AgentCollector(blob_stats, SessionStandIn(libtorrent_values()), cache, quota)
    samples, _ = samples_of(exposition_text(collector))

    assert samples[("registry_p2p_download_duration_seconds_count", ())] == 1
    assert samples[("registry_p2p_download_duration_seconds_sum", ())] == 1.7
    assert samples[("registry_p2p_download_duration_seconds_bucket", (("le", "1.0"),))] == 0
    assert samples[("registry_p2p_download_duration_seconds_bucket", (("le", "2.5"),))] == 1


def test_agent_libtorrent_values(blob_stats, cache, quota):
    values = libtorrent_values()
    collector = AgentCollector(blob_stats, SessionStandIn(values), cache, quota)
    samples, _ = samples_of(exposition_text(collector))

    for name, (kind, _) in metrics.LIBTORRENT_METRICS.items():
        assert samples[(metrics.libtorrent_metric_name(name, kind), ())] == values[name], name
    assert samples[("registry_p2p_uploaded_bytes_total", ())] == values["net.sent_payload_bytes"]


def test_seeder_tracker_and_counters():
    stats = {**{name: index + 10 for index, name in enumerate(COUNTER_NAMES)},
             "uploaded_bytes": 5000, "seeded_blobs": 3, "cache_blobs": 3, "cache_bytes": 900,
             "cache_evictions": 7, "swarms": {"1" * 40: 4, "2" * 40: 1}}
    collector = SeederCollector(SeederStandIn(stats, SessionStandIn(libtorrent_values())))
    samples, _ = samples_of(exposition_text(collector))

    assert samples[("registry_p2p_tracker_swarms", ())] == 2
    assert samples[("registry_p2p_tracker_peers", ())] == 5
    assert samples[("registry_p2p_seeded_blobs", ())] == 3
    assert samples[("registry_p2p_uploaded_bytes_total", ())] == 5000
    assert samples[("registry_p2p_cache_bytes", ())] == 900
    assert samples[("registry_p2p_cache_evictions_total", ())] == 7
    for key, (name, _) in SEEDER_COUNTERS.items():
        assert samples[("registry_p2p_" + name, ())] == stats[key], key


def test_recent_fallbacks_bounded():
    stats = BlobStats()
    for index in range(RECENT_FALLBACKS + 5):
        stats.record_fallback(f"{index:064x}", "team/app", P2PError(f"failure {index}"))

    _, reasons, recent = stats.events()

    assert len(recent) == RECENT_FALLBACKS
    assert recent[0]["digest"] == f"sha256:{5:064x}"
    assert recent[-1]["message"] == f"failure {RECENT_FALLBACKS + 4}"
    assert reasons["other"] == RECENT_FALLBACKS + 5


def test_unknown_fallback_reason_counts_as_other():
    stats = BlobStats()
    stats.record_fallback(HEX, "team/app", P2PError("odd", reason="not-a-reason"))
    stats.record_fallback(HEX, "team/app", RuntimeError("not a P2PError"))

    _, reasons, recent = stats.events()

    assert reasons["other"] == 2
    assert [entry["reason"] for entry in recent] == ["other", "other"]
    assert stats.snapshot()["totals"]["fallbacks"] == 2
