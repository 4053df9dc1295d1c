"""The size limit of a blob cache: least recently used eviction, leases and reservations.

Before a process writes a new blob into its cache it reserves the blob's
size. When the cached blobs plus the reservations would go over the limit
(``cache_max_size``), or the file system would keep less free space than
``cache_min_free_bytes``, the least recently used blobs are evicted first.
A blob is never evicted while it has a lease (a client is being served
from it) or a reservation (it is being downloaded). When not enough blobs
can be evicted, the reservation fails and the caller serves the blob
without caching it.

The last use of a blob is the modification time of its ``.info`` file
(``BlobCache.touch``), so the order survives a restart.

Leases and reservations are kept in memory, so they cover the requests of
one process: the agent, which serves every request of a node in one
worker process.
"""

import contextlib
import logging
import os
import threading
from dataclasses import dataclass

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CachedBlob:
    """A complete blob in the cache: its size in bytes and its last use (Unix time)."""

    hex_digest: str
    size: int
    last_used: float


@dataclass(frozen=True)
class Percentage:
    """A size limit given as a percentage of the size of the file system that contains the cache."""

    percent: float

    def of(self, path):
        """Return the limit in bytes for the file system that contains ``path``."""
        stat = os.statvfs(path)
        return int(stat.f_blocks * stat.f_frsize * self.percent / 100)

    def __str__(self):
        return f"{self.percent:g}%"


def choose_evictions(blobs, needed_bytes, protected=frozenset()):
    """Return the blobs to evict to free ``needed_bytes``, least recently used first.

    Blobs whose digest is in ``protected`` are never chosen. Returns [] when
    nothing needs to be freed, and None when the other blobs together are
    too small. Blobs used at the same time are taken in digest order, so the
    choice does not depend on the order of ``blobs``.
    """
    if needed_bytes <= 0:
        return []

    chosen = []
    freed = 0
    for blob in sorted(blobs, key=lambda blob: (blob.last_used, blob.hex_digest)):
        if blob.hex_digest in protected:
            continue
        chosen.append(blob)
        freed += blob.size
        if freed >= needed_bytes:
            return chosen

    return None


class CacheQuota:
    """Keeps a BlobCache under its size limit and free-space floor.

    ``evict(hex_digest)`` removes one blob: it must stop seeding the blob
    before it deletes the files, and return whether the blob is gone.
    ``max_bytes`` is the limit in bytes or a Percentage. A
    ``min_free_bytes`` of 0 turns the free-space check off, so a full file
    system shows only as a failed write.
    """

    def __init__(self, cache, max_bytes, min_free_bytes, evict):
        self.cache = cache
        if isinstance(max_bytes, Percentage):
            max_bytes = max_bytes.of(cache.root)
        self.max_bytes = max_bytes
        self.min_free_bytes = min_free_bytes
        self.evict = evict
        self.evictions = 0
        self._lock = threading.Lock()
        # Reservations are made one at a time, so two of them never choose
        # the same blobs or both count on the same free space.
        self._reserve_lock = threading.Lock()
        self._leases = {}
        self._reserved = {}
        self._evicting = set()

    @contextlib.contextmanager
    def lease(self, hex_digest):
        """Keep a blob from being evicted inside the block; yield False if it is being evicted."""
        acquired = self.acquire(hex_digest)
        try:
            yield acquired
        finally:
            if acquired:
                self.release(hex_digest)

    def acquire(self, hex_digest):
        """Take a lease on a blob; return False, without a lease, if it is being evicted."""
        with self._lock:
            if hex_digest in self._evicting:
                return False
            self._leases[hex_digest] = self._leases.get(hex_digest, 0) + 1

        return True

    def release(self, hex_digest):
        """Give back a lease taken with ``acquire``."""
        with self._lock:
            count = self._leases.pop(hex_digest, 0) - 1
            if count > 0:
                self._leases[hex_digest] = count

    def reserve(self, hex_digest, size):
        """Make room for a new blob of ``size`` bytes; return whether it may be cached.

        Evicts least recently used blobs when needed. On True the caller
        writes the blob and calls ``unreserve`` once it is cached or given
        up. On False nothing is reserved, and the logged warning gives the reason.
        """
        with self._reserve_lock:
            if self.max_bytes and size > self.max_bytes:
                log.warning("not caching blob sha256:%s: its %d bytes exceed cache_max_size "
                            "(%d bytes); serving it without caching", hex_digest, size,
                            self.max_bytes)
                return False

            blobs = list(self.cache.entries())
            needed = self._bytes_to_free(blobs, size)
            with self._lock:
                protected = set(self._leases) | set(self._reserved)
            victims = choose_evictions(blobs, needed, protected)
            if victims is None:
                log.warning("not caching blob sha256:%s (%d bytes): %d bytes must be freed, "
                            "more than the cached blobs that are not being served or "
                            "downloaded hold; serving it without caching",
                            hex_digest, size, needed)
                return False

            for victim in victims:
                if not self._evict_one(victim):
                    log.warning("not caching blob sha256:%s (%d bytes): blob sha256:%s could "
                                "not be evicted; serving it without caching", hex_digest, size,
                                victim.hex_digest)
                    return False

            with self._lock:
                self._reserved[hex_digest] = size

        return True

    def unreserve(self, hex_digest):
        """End the reservation of a blob that is now cached or was given up."""
        with self._lock:
            self._reserved.pop(hex_digest, None)

    def trim(self):
        """Evict least recently used blobs until the cache fits its limits; call at start."""
        with self._reserve_lock:
            blobs = list(self.cache.entries())
            needed = self._bytes_to_free(blobs, 0)
            with self._lock:
                protected = set(self._leases) | set(self._reserved)
            victims = choose_evictions(blobs, needed, protected) or []
            for victim in victims:
                self._evict_one(victim)

    def state(self):
        """Return the limit, the floor, the eviction count and the reserved bytes."""
        with self._lock:
            reserved = sum(self._reserved.values())

        return {"cache_max_bytes": self.max_bytes, "cache_min_free_bytes": self.min_free_bytes,
                "cache_evictions": self.evictions, "cache_reserved_bytes": reserved}

    def _bytes_to_free(self, blobs, size):
        """Return how many cached bytes must go before ``size`` more bytes fit."""
        with self._lock:
            reserved = dict(self._reserved)

        over_limit = 0
        if self.max_bytes:
            used = sum(blob.size for blob in blobs) + sum(reserved.values())
            over_limit = used + size - self.max_bytes

        under_floor = 0
        if self.min_free_bytes:
            # Downloads in progress will still write their missing bytes.
            unwritten = sum(max(0, length - self.cache.allocated_bytes(hex_digest))
                            for hex_digest, length in reserved.items())
            under_floor = self.min_free_bytes + size + unwritten - self.cache.free_bytes()

        return max(over_limit, under_floor)

    def _evict_one(self, blob):
        """Evict one blob unless a lease was taken on it since it was chosen."""
        with self._lock:
            if blob.hex_digest in self._leases or blob.hex_digest in self._reserved:
                return False
            self._evicting.add(blob.hex_digest)

        try:
            removed = self.evict(blob.hex_digest)
        finally:
            with self._lock:
                self._evicting.discard(blob.hex_digest)

        if not removed:
            return False

        with self._lock:
            self.evictions += 1
        log.info("evicted blob sha256:%s (%d bytes, last used at %.0f) from the cache",
                 blob.hex_digest, blob.size, blob.last_used)

        return True
