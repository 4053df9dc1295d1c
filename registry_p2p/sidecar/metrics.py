"""The sidecar's Prometheus metrics, kept by the seeder process.

The sidecar runs several gunicorn workers plus one seeder process, and
the seeder keeps every count: the workers already send theirs to it over
IPC (``count`` requests), and it owns the tracker's peer table, the
libtorrent session and the cache. So the seeder alone has a metrics
registry, and a worker responds to GET /metrics with the text that the
seeder's ``metrics`` request returns. This avoids prometheus_client's
multiprocess mode, whose per-worker files would need cleaning when
workers restart, and every worker's scrape returns the same numbers.
"""

import logging

from registry_p2p.metrics import PREFIX, cache_families, counter, gauge, libtorrent_families

log = logging.getLogger(__name__)

# Prometheus name and help of each of the seeder's counters (seeder.COUNTER_NAMES).
SEEDER_COUNTERS = {
    "proxied_blob_bytes": ("proxied_blob_bytes_total",
                           "Blob bytes that the registry proxy sent to clients for blob GETs."),
    "storage_read_bytes": ("storage_read_bytes_total",
                           "Bytes read from the registry's storage to fill the cache."),
    "metainfo_served": ("metainfo_served_total", "Torrent files (.torrent) sent to agents."),
    "cache_fills": ("cache_fills_total", "Blobs read from storage, verified and cached."),
    "rejected_announces": ("tracker_rejected_announces_total",
                           "Tracker announces rejected because the torrent is not seeded here."),
    "notification_events": ("notification_events_total",
                            "Registry notification events processed."),
    "preheated_blobs": ("preheated_blobs_total",
                        "Blobs cached and seeded after a registry push notification."),
    "purged_blobs": ("purged_blobs_total",
                     "Blobs removed from the cache because the registry deleted them."),
}


class SeederCollector:
    """Collects the sidecar's metrics from the seeder (a prometheus_client custom collector)."""

    def __init__(self, seeder):
        self.seeder = seeder

    def collect(self):
        stats = self.seeder.stats()
        for key, (name, documentation) in SEEDER_COUNTERS.items():
            yield counter(PREFIX + name, documentation, value=stats[key])

        yield counter(PREFIX + "uploaded_bytes_total",
                      "Blob payload bytes that the seeder sent to peers over BitTorrent.",
                      value=stats["uploaded_bytes"])
        yield gauge(PREFIX + "seeded_blobs", "Blobs that the seeder seeds.",
                    value=stats["seeded_blobs"])

        swarms = stats["swarms"]
        yield gauge(PREFIX + "tracker_swarms", "Swarms with at least one live peer on the tracker.",
                    value=len(swarms))
        yield gauge(PREFIX + "tracker_peers",
                    "Live peers on the tracker, summed over its swarms (the seeder included).",
                    value=sum(swarms.values()))

        yield from cache_families(stats["cache_blobs"], stats["cache_bytes"],
                                  stats["cache_evictions"])
        yield from libtorrent_families(self.seeder.session.session_stats())
