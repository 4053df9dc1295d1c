"""The seeder process: one per registry host.

It owns the host's libtorrent session, which seeds every blob in the
sidecar's cache, and the tracker's peer table. The gunicorn workers send
it requests over the Unix socket described in ``sidecar.ipc``.
"""

import argparse
import logging
import os
import signal
import sys
import threading
import time
from multiprocessing import AuthenticationError
from multiprocessing.connection import Listener

from registry_p2p import config as configuration, logs, tls, torrent
from registry_p2p.blobcache import BlobCache
from registry_p2p.cache_quota import CacheQuota
from registry_p2p.errors import RegistryP2PError
from registry_p2p.metrics import exposition, new_registry
from registry_p2p.session import TorrentSession
from registry_p2p.tracker import AnnounceError, PeerTable, compact_reply, failure_reply, parse_announce
from registry_p2p.sidecar import ipc
from registry_p2p.sidecar.metrics import SeederCollector

log = logging.getLogger(__name__)

COUNTER_NAMES = ("proxied_blob_bytes", "storage_read_bytes", "metainfo_served", "cache_fills",
                 "rejected_announces", "notification_events", "preheated_blobs", "purged_blobs")


def tracker_urls(config):
    """Return the announce URLs put in every torrent: this sidecar's first."""
    return [config["public_url"] + "/announce", *config["trackers"]]


def blob_metainfo(cache, hex_digest, trackers):
    """Return the .torrent bytes of a cached blob, or None if it is not cached."""
    info = cache.load_info(hex_digest)
    if info is None:
        return None

    return torrent.build_metainfo(hex_digest, info[b"length"], info[b"pieces"], trackers)


class Seeder:
    def __init__(self, config):
        self.config = config
        self.cache = BlobCache(config["cache_dir"])
        # NOTE: the seeder leases no blob, because no HTTP client reads the
        # sidecar's cache. A blob that peers are downloading can be evicted;
        # metainfo requests mark a blob as used, so it is the last to go.
        self.quota = CacheQuota(self.cache, config["cache_max_size"],
                                config["cache_min_free_bytes"], self._evict)
        host, port = config["torrent.listen"]
        self.session = TorrentSession(host, port, role="S",
                                      upload_rate_limit=config["torrent.upload_rate_limit"],
                                      overrides=config["torrent.settings"])
        self.peers = PeerTable(ttl=config["tracker.peer_ttl"],
                               origin_fanout=config["tracker.origin_fanout"],
                               peer_selection=config["tracker.peer_selection"])
        self.trackers = tracker_urls(config)
        self.counters = dict.fromkeys(COUNTER_NAMES, 0)
        self.seeded = {}
        self.seeded_info_hashes = set()
        self._lock = threading.Lock()
        self.handlers = {
            "ping": self.ping,
            "announce": self.announce,
            "seed": self.seed,
            "unseed": self.unseed,
            "reserve": self.reserve,
            "unreserve": self.unreserve,
            "count": self.count,
            "stats": self.stats,
            "metrics": self.metrics,
        }
        self.metrics_registry = new_registry(SeederCollector(self))

    def start(self):
        self.cache.remove_leftovers()
        tls.trust_for_https_trackers([self.config["tracker_ca_bundle"]], self.config["cache_dir"])
        self.session.start()
        log.info("cache limit %d bytes, free-space floor %d bytes", self.quota.max_bytes,
                 self.quota.min_free_bytes)
        self.quota.trim()
        for hex_digest in self.cache.cached_digests():
            try:
                self.seed(hex_digest)
            except Exception:
                # One blob libtorrent rejects must not keep the sidecar down.
                log.exception("cannot seed cached blob sha256:%s; skipping it", hex_digest)
        log.info("seeding %d cached blobs, announcing to %s", len(self.seeded), self.trackers)
        threading.Thread(target=self._expire_peers, name="tracker-expiry", daemon=True).start()

    def _expire_peers(self):
        """Drop expired peers, including those of swarms that get no more announces."""
        while True:
            time.sleep(self.config["tracker.interval"])
            self.peers.swarm_sizes()

    def stop(self):
        self.session.stop()

    # Requests from workers

    def ping(self):
        return "pong"

    def announce(self, query, remote_addr):
        try:
            request = parse_announce(query, remote_addr)
        except (AnnounceError, ValueError) as exc:
            log.info("rejected announce from %s: %s", remote_addr, exc)
            return failure_reply(str(exc))

        # The tracker serves only the swarms of blobs this host seeds, so it
        # cannot be used as a general-purpose tracker, and its table stays
        # bounded by the cache.
        if request.info_hash.hex() not in self.seeded_info_hashes:
            self._count_rejected_announce(remote_addr, request.info_hash.hex())
            return failure_reply("unknown torrent: this tracker serves blobs of its registry only")

        peers = self.peers.announce(request)

        return compact_reply(peers, self.config["tracker.interval"])

    def _count_rejected_announce(self, remote_addr, info_hash):
        # Logged once per 100 rejections, because a misconfigured node
        # repeats its announce every interval.
        with self._lock:
            self.counters["rejected_announces"] += 1
            count = self.counters["rejected_announces"]
        if count % 100 == 1:
            log.info("rejected announce from %s for unknown torrent %s (%d rejected so far)",
                     remote_addr, info_hash, count)

    def seed(self, hex_digest):
        """Start seeding a cached blob unless it is seeded already; return its infohash."""
        with self._lock:
            if hex_digest in self.seeded:
                return self.seeded[hex_digest]

            info = self.cache.load_info(hex_digest)
            if info is None:
                raise RegistryP2PError(f"blob sha256:{hex_digest} is not in the cache")

            # The tracker must know the torrent before libtorrent sends the
            # seeder's first announce, which add_seed() triggers at once.
            expected = torrent.info_hash(torrent.build_info(hex_digest, info[b"length"],
                                                            info[b"pieces"]))
            self.seeded_info_hashes.add(expected)
            raw = torrent.build_metainfo(hex_digest, info[b"length"], info[b"pieces"],
                                         self.trackers)
            info_hash = self.session.add_seed(
                raw, self.cache.save_path(hex_digest),
                super_seeding=self.config["torrent.super_seeding"]).result(30)
            self.seeded[hex_digest] = info_hash
            log.info("seeding blob sha256:%s as torrent %s", hex_digest, info_hash)

            return info_hash

    def unseed(self, hex_digest):
        """Stop seeding a blob; return whether it was seeded."""
        with self._lock:
            info_hash = self.seeded.pop(hex_digest, None)
            if info_hash is None:
                return False

            self.seeded_info_hashes.discard(info_hash)
            self.session.remove(info_hash).result(30)
            log.info("stopped seeding blob sha256:%s (torrent %s)", hex_digest, info_hash)

            return True

    def reserve(self, hex_digest, size):
        """Make room in the cache for a blob a worker is about to fill; return whether it fits."""
        return self.quota.reserve(hex_digest, size)

    def unreserve(self, hex_digest):
        """End a worker's reservation, once its blob is cached or the fill failed."""
        self.quota.unreserve(hex_digest)

    def _evict(self, hex_digest):
        """Stop seeding a blob, then delete it (CacheQuota's eviction); return True.

        The blob's lock waits for a purge of the same blob running in a worker.
        """
        with self.cache.lock(hex_digest):
            self.unseed(hex_digest)
            self.cache.remove(hex_digest)

        return True

    def count(self, name, value):
        with self._lock:
            self.counters[name] += value

    def stats(self):
        blob_count, cache_bytes = self.cache.usage()
        with self._lock:
            counters = dict(self.counters)
            digests = {info_hash: hex_digest for hex_digest, info_hash in self.seeded.items()}
        swarms = self.peers.swarm_sizes()

        return {
            **counters,
            **self.session.counters(),
            "seeded_blobs": len(digests),
            "cache_blobs": blob_count,
            "cache_bytes": cache_bytes,
            "cache_evictions": self.quota.evictions,
            "swarms": swarms,
            "swarm_digests": {info_hash: f"sha256:{digests[info_hash]}"
                              for info_hash in swarms if info_hash in digests},
        }

    def metrics(self):
        """Return the sidecar's metrics in the Prometheus text format (bytes)."""
        return exposition(self.metrics_registry)[0]

    # Socket server

    def handle(self, conn):
        with conn:
            ipc.serve_requests(conn, self.handlers)

    def serve(self, stop):
        path = ipc.socket_path(self.config["cache_dir"])
        if os.path.exists(path):
            os.unlink(path)

        key = ipc.create_key(self.config["cache_dir"])
        old_umask = os.umask(0o077)
        try:
            listener = Listener(path, family="AF_UNIX", authkey=key, backlog=128)
        finally:
            os.umask(old_umask)

        log.info("seeder listening on %s", path)
        try:
            while not stop.is_set():
                try:
                    conn = listener.accept()
                except (OSError, EOFError, AuthenticationError) as exc:
                    # A client without the key (say, a worker of an earlier
                    # sidecar on the same cache) must not stop the seeder.
                    log.warning("rejected a connection on %s: %s", path, exc)
                    continue
                threading.Thread(target=self.handle, args=(conn,), daemon=True).start()
        finally:
            listener.close()


def _exit_with_parent(parent_pid):
    """Stop this process once the sidecar that started it is gone."""
    while os.getppid() == parent_pid:
        time.sleep(1)
    log.warning("parent process %d exited; stopping the seeder", parent_pid)
    os.kill(os.getpid(), signal.SIGTERM)


def main(argv=None):
    parser = argparse.ArgumentParser(prog="registry-p2p-seeder",
                                     description="Seeder process of a registry-p2p sidecar.")
    parser.add_argument("-c", "--config", required=True, help="sidecar config file (TOML)")
    args = parser.parse_args(argv)

    config = configuration.load(configuration.SIDECAR_OPTIONS, args.config)
    logs.setup(config["log_level"], "registry-p2p-seeder")

    def terminate(signum, _frame):
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, terminate)
    threading.Thread(target=_exit_with_parent, args=(os.getppid(),), daemon=True).start()

    seeder = Seeder(config)
    stop = threading.Event()
    try:
        seeder.start()
        seeder.serve(stop)
    except KeyboardInterrupt:
        pass
    finally:
        stop.set()
        seeder.stop()
        log.info("seeder stopped")


if __name__ == "__main__":
    sys.exit(main())
