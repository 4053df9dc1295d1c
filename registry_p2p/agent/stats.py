"""Records of the sources of the agent's blob bytes, of its blob GETs and of its fallbacks.

``BlobStats`` feeds both the JSON ``/p2p/v1/stats`` and the Prometheus
``/metrics`` of the agent, so the two always agree.
"""

import collections
import threading
import time

from prometheus_client import Histogram

from registry_p2p.errors import FALLBACK_REASONS

SIDECAR_FINGERPRINT = "-RS"

# Per-blob byte and event counters, summed into the snapshot's "totals".
# from_fallback counts the bytes fetched from the registry after a
# BitTorrent failure; from_registry includes them.
COUNTERS = ("from_sidecars", "from_peers", "from_registry", "from_fallback", "from_cache",
            "fallbacks")
# Sources of a served blob GET: a blob cached before the request, a
# download over BitTorrent (after or while it runs), the registry without
# trying BitTorrent, or the registry after BitTorrent failed. The registry
# is used directly for a blob below p2p.min_blob_size, a registry without
# sidecars and a multi-range request.
SERVED_SOURCES = ("cache", "p2p", "registry", "fallback")
# The agent keeps this many fallbacks for `registry-p2p status`.
RECENT_FALLBACKS = 20
# Upper bounds of the download duration histogram in seconds: from a small
# layer on a LAN to a multi-GB layer on a slow link.
DOWNLOAD_SECONDS_BUCKETS = (0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)


class BlobStats:
    """Per-blob record of where the agent got each blob's bytes, plus event counters."""

    def __init__(self):
        self._lock = threading.Lock()
        self.blobs = {}
        self.downloads = {}
        self.served = dict.fromkeys(SERVED_SOURCES, 0)
        self.fallback_reasons = dict.fromkeys(FALLBACK_REASONS, 0)
        self.recent_fallbacks = collections.deque(maxlen=RECENT_FALLBACKS)
        # Not registered anywhere: the agent's collector yields its samples.
        self.download_seconds = Histogram(
            "registry_p2p_download_duration_seconds",
            "Time from the start of a blob's BitTorrent download to its verified copy in "
            "the cache.", buckets=DOWNLOAD_SECONDS_BUCKETS, registry=None)

    def record(self, hex_digest, **values):
        """Add to the blob's counters (COUNTERS) and set its other fields."""
        with self._lock:
            entry = self.blobs.setdefault(hex_digest, {})
            for key, value in values.items():
                entry[key] = entry.get(key, 0) + value if key in COUNTERS else value

    def record_download(self, hex_digest, download, **values):
        """Attach a finished Download, whose per-peer counts are read at each snapshot.

        libtorrent 2.1 can report the last blocks of a torrent after it
        reported the torrent finished, so the counts are not final yet.
        """
        self.record(hex_digest, **values)
        with self._lock:
            self.downloads[hex_digest] = download

        if "seconds" in values:
            self.download_seconds.observe(values["seconds"])

    def record_served(self, source):
        """Count one blob GET served from ``source`` (one of SERVED_SOURCES)."""
        with self._lock:
            self.served[source] += 1

    def record_fallback(self, hex_digest, repository, error):
        """Count a fallback to the registry caused by ``error``, a P2PError, and keep it as recent."""
        reason = getattr(error, "reason", "other")
        if reason not in self.fallback_reasons:
            reason = "other"
        self.record(hex_digest, fallbacks=1, fallback_reason=str(error), source="fallback")

        with self._lock:
            self.fallback_reasons[reason] += 1
            self.recent_fallbacks.append({
                "time": time.time(),
                "digest": f"sha256:{hex_digest}",
                "repository": repository,
                "reason": reason,
                "message": str(error),
            })

    def events(self):
        """Return copies of the served counts, the fallback counts by reason and the recent fallbacks (oldest first)."""
        with self._lock:
            return dict(self.served), dict(self.fallback_reasons), list(self.recent_fallbacks)

    def snapshot(self):
        with self._lock:
            blobs = {key: dict(value) for key, value in self.blobs.items()}
            downloads = dict(self.downloads)

        for hex_digest, download in downloads.items():
            received = dict(download.bytes_by_client)
            from_sidecars = sum(count for client, count in received.items()
                                if client.startswith(SIDECAR_FINGERPRINT))
            blobs[hex_digest]["from_sidecars"] = from_sidecars
            blobs[hex_digest]["from_peers"] = sum(received.values()) - from_sidecars

        totals = {key: sum(entry.get(key, 0) for entry in blobs.values()) for key in COUNTERS}

        return {"totals": totals, "blobs": blobs}
