"""The agent's Prometheus metrics, read from its BlobStats, cache and libtorrent session at each scrape."""

import logging

from registry_p2p.agent.stats import SERVED_SOURCES
from registry_p2p.errors import FALLBACK_REASONS
from registry_p2p.metrics import (PREFIX, cache_families, counter, gauge, libtorrent_families,
                                  new_registry)

log = logging.getLogger(__name__)

# The source label of the downloaded bytes: other agents, the sidecars'
# seeders (origins), the registry without trying BitTorrent, and the
# registry after BitTorrent failed.
DOWNLOAD_SOURCES = ("peer", "origin", "registry", "fallback")


def downloaded_bytes(totals):
    """Return the blob bytes received per DOWNLOAD_SOURCES entry from a BlobStats snapshot's totals."""
    return {
        "peer": totals["from_peers"],
        "origin": totals["from_sidecars"],
        "registry": totals["from_registry"] - totals["from_fallback"],
        "fallback": totals["from_fallback"],
    }


class AgentCollector:
    """Collects the agent's metrics (a prometheus_client custom collector)."""

    def __init__(self, stats, session, cache, quota):
        self.stats = stats
        self.session = session
        self.cache = cache
        self.quota = quota

    def collect(self):
        totals = self.stats.snapshot()["totals"]
        received = downloaded_bytes(totals)
        served, fallbacks, _ = self.stats.events()

        yield counter(
            PREFIX + "downloaded_bytes_total",
            "Blob bytes the agent received, by source: peer (other agents), origin (sidecar "
            "seeders), registry (direct, without BitTorrent), fallback (registry after "
            "BitTorrent failed).",
            labels=["source"], samples=[([source], received[source])
                                        for source in DOWNLOAD_SOURCES])
        yield counter(PREFIX + "uploaded_bytes_total",
                      "Blob payload bytes sent to peers over BitTorrent.",
                      value=self.session.counters()["uploaded_bytes"])
        yield counter(
            PREFIX + "blobs_served_total",
            "Blob GETs answered, by source: cache (cached before the request), p2p (downloaded "
            "over BitTorrent), registry (direct), fallback (registry after BitTorrent failed).",
            labels=["source"], samples=[([source], served[source]) for source in SERVED_SOURCES])
        yield counter(PREFIX + "fallbacks_total",
                      "BitTorrent downloads or streams that fell back to the registry, by reason.",
                      labels=["reason"], samples=[([reason], fallbacks[reason])
                                                  for reason in FALLBACK_REASONS])
        yield from self.stats.download_seconds.collect()
        yield gauge(PREFIX + "stream_readers",
                    "Blob GETs being streamed while their download runs.",
                    value=self.session.stream_readers())

        blob_count, cache_bytes = self.cache.usage()
        yield from cache_families(blob_count, cache_bytes, self.quota.evictions)
        yield from libtorrent_families(self.session.session_stats())


def agent_registry(stats, session, cache, quota):
    """Return the agent's CollectorRegistry."""
    return new_registry(AgentCollector(stats, session, cache, quota))
