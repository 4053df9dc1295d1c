"""Prometheus metrics shared by the agent and the sidecar.

Both processes export their metrics through a collector that reads the
state they already keep (byte counters, the cache, the libtorrent
session's stats) when /metrics is scraped, so /metrics and the JSON
/p2p/v1/stats report the same numbers. Each process uses a registry of
its own instead of prometheus_client's global one. docs/operations.md
lists every metric.
"""

import re

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

PREFIX = "registry_p2p_"

# Kind and help of each libtorrent metric in session.SESSION_STATS. The
# kinds are libtorrent's own (lt.session_stats_metrics()).
LIBTORRENT_METRICS = {
    "net.sent_payload_bytes": ("counter", "Payload bytes sent to peers."),
    "net.recv_payload_bytes": ("counter", "Payload bytes received from peers."),
    "net.sent_bytes": ("counter", "Bytes sent to peers, protocol overhead included."),
    "net.recv_bytes": ("counter", "Bytes received from peers, protocol overhead included."),
    "net.recv_failed_bytes": ("counter", "Payload bytes received in pieces that failed "
                                         "their hash check."),
    "net.recv_redundant_bytes": ("counter", "Payload bytes received that the session had "
                                            "already."),
    "peer.num_peers_connected": ("gauge", "Peers connected to the session."),
    "peer.num_peers_half_open": ("gauge", "Outgoing peer connections not yet established."),
    "peer.connect_timeouts": ("counter", "Outgoing peer connections that timed out."),
    "peer.error_peers": ("counter", "Peer connections closed because of an error."),
    "ses.num_seeding_torrents": ("gauge", "Torrents that the session seeds."),
    "ses.num_downloading_torrents": ("gauge", "Torrents that the session downloads."),
    "ses.num_checking_torrents": ("gauge", "Torrents whose files the session checks."),
    "ses.num_piece_passed": ("counter", "Pieces that passed their hash check."),
    "ses.num_piece_failed": ("counter", "Pieces that failed their hash check."),
    "disk.queued_disk_jobs": ("gauge", "Disk jobs waiting for a libtorrent disk thread."),
}

_NAME_RE = re.compile(r"[a-z][a-z0-9_]*\Z")


def libtorrent_metric_name(name, kind):
    """Return the Prometheus name of a libtorrent session metric, such as ``net.sent_bytes``."""
    base = PREFIX + "libtorrent_" + name.replace(".", "_")

    return base + "_total" if kind == "counter" else base


def naming_problems(name, kind):
    """Return what breaks the project's naming rules in a metric family's name, or [].

    The rules are Prometheus' conventions: snake case, the project prefix,
    ``_total`` on counters and only on counters, and a unit on byte and
    duration metrics.
    """
    problems = []
    if not _NAME_RE.match(name):
        problems.append("not lower snake case")
    if not name.startswith(PREFIX):
        problems.append(f"no {PREFIX} prefix")
    if (kind == "counter") != name.endswith("_total"):
        problems.append("_total must end counters and only counters")
    base = name.removesuffix("_total")
    if "bytes" in base and not base.endswith("_bytes"):
        problems.append("a byte metric must end in _bytes")
    if kind == "histogram" and not base.endswith("_seconds"):
        problems.append("a duration histogram must end in _seconds")

    return problems


def counter(name, documentation, value=None, labels=(), samples=()):
    """Return a counter family with one value, or one sample per (label values, value) pair."""
    family = CounterMetricFamily(name, documentation, value=value,
                                 labels=labels if value is None else None)
    for label_values, sample in samples:
        family.add_metric(label_values, sample)

    return family


def gauge(name, documentation, value=None, labels=(), samples=()):
    """Return a gauge family with one value, or one sample per (label values, value) pair."""
    family = GaugeMetricFamily(name, documentation, value=value,
                               labels=labels if value is None else None)
    for label_values, sample in samples:
        family.add_metric(label_values, sample)

    return family


def libtorrent_families(stats):
    """Yield a family per LIBTORRENT_METRICS entry from ``TorrentSession.session_stats()``."""
    for name, (kind, documentation) in LIBTORRENT_METRICS.items():
        family = counter if kind == "counter" else gauge
        yield family(libtorrent_metric_name(name, kind), f"libtorrent {name}: {documentation}",
                     value=stats.get(name, 0))


def cache_families(blob_count, cache_bytes, evictions):
    """Yield the cache's families: verified blobs, their bytes and the evictions."""
    yield gauge(PREFIX + "cache_blobs", "Verified blobs in the cache.", value=blob_count)
    yield gauge(PREFIX + "cache_bytes", "Bytes of the verified blobs in the cache.",
                value=cache_bytes)
    yield counter(PREFIX + "cache_evictions_total",
                  "Blobs removed from the cache to free space.", value=evictions)


def new_registry(collector):
    """Return a new CollectorRegistry that contains only ``collector``."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector)

    return registry


def exposition(registry):
    """Return the registry's metrics in the Prometheus text format, and its content type."""
    return generate_latest(registry), CONTENT_TYPE_LATEST
