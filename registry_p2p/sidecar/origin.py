"""The origin role: turn a registry blob into a seeded torrent for an authorized caller."""

import logging

from registry_p2p import digest as digests
from registry_p2p.blobcache import LockTimeout
from registry_p2p.errors import (BlobNotFound, DigestMismatch, RegistryHTTPError, StorageError,
                                 blob_unknown, unavailable)
from registry_p2p.registry_api import head_blob
from registry_p2p.sidecar.seeder import blob_metainfo

log = logging.getLogger(__name__)


class Origin:
    def __init__(self, registry_url, http, timeout, driver, cache, seeder, trackers):
        self.registry_url = registry_url
        self.http = http
        self.timeout = timeout
        self.driver = driver
        self.cache = cache
        self.seeder = seeder
        self.trackers = trackers

    def metainfo(self, repository, digest, authorization):
        """Return the .torrent bytes of a blob after the registry accepted the caller.

        The caller's Authorization goes on a HEAD of the blob to the
        registry, so the caller gets a torrent only for a blob that its
        credentials could pull from that repository.
        """
        digests.validate_repository(repository)
        hex_digest = digests.parse_digest(digest)

        size = self._authorize(repository, digest, authorization)
        if size == 0:
            # A torrent cannot describe 0 bytes; clients fetch such blobs
            # from the registry, as agents do for every small blob.
            raise RegistryHTTPError(400, "UNSUPPORTED", "empty blobs are not distributed "
                                    "over BitTorrent", detail=f"{repository}@{digest}")

        try:
            linked = self.driver.is_linked(repository, hex_digest)
        except StorageError as exc:
            log.error("cannot check the link of sha256:%s in %s in %s storage: %s",
                      hex_digest, repository, self.driver.name, exc)
            raise unavailable(f"cannot read the registry's storage: {exc}") from None
        if not linked:
            log.warning("registry serves sha256:%s in %s but storage has no link for it; "
                        "does the sidecar read the registry's storage?", hex_digest, repository)
            raise blob_unknown(digest)

        if self.cache.load_info(hex_digest) is None:
            self._fill(repository, hex_digest, size)

        self.seeder.call("seed", hex_digest=hex_digest)
        self.seeder.call("count", name="metainfo_served", value=1)
        # An agent downloads the blob next, so it becomes the most recently used.
        self.cache.touch(hex_digest)

        return blob_metainfo(self.cache, hex_digest, self.trackers)

    def _authorize(self, repository, digest, authorization):
        """HEAD the blob with the caller's credentials; return its size."""
        response = head_blob(self.http, self.registry_url, repository, digest, authorization,
                             self.timeout)
        if response.status_code == 401:
            challenge = response.headers.get("WWW-Authenticate")
            raise RegistryHTTPError(401, "UNAUTHORIZED", "authentication required",
                                    detail=f"{repository}@{digest}",
                                    headers={"WWW-Authenticate": challenge} if challenge else None)
        if response.status_code == 403:
            raise RegistryHTTPError(403, "DENIED", "requested access to the resource is denied",
                                    detail=f"{repository}@{digest}")
        if response.status_code == 404:
            raise blob_unknown(digest)
        if 400 <= response.status_code < 500:
            # A client error (a malformed Authorization, say): retrying
            # will not help, so it is not reported as UNAVAILABLE.
            raise RegistryHTTPError(response.status_code, "UNKNOWN",
                                    f"registry returned {response.status_code} for the blob",
                                    detail=f"{repository}@{digest}")
        if response.status_code != 200:
            raise unavailable(f"registry returned {response.status_code} for HEAD of the blob")

        try:
            return int(response.headers["Content-Length"])
        except (KeyError, ValueError):
            raise unavailable("registry sent no Content-Length for the blob") from None

    def preheat(self, repository, hex_digest, min_size):
        """Cache and seed a blob pushed to ``repository``; return whether this call cached it.

        No caller's credentials are involved: the push event came from the
        registry, and the blob is served later only to callers the
        registry authorizes. Blobs smaller than ``min_size`` are skipped,
        as agents fetch those from the registry.
        """
        filled = False
        if self.cache.load_info(hex_digest) is None:
            if not self.driver.is_linked(repository, hex_digest):
                log.info("not preheating sha256:%s: storage has no link to it in %s",
                         hex_digest, repository)
                return False
            size = self.driver.stat(hex_digest, repository)
            if size < max(min_size, 1):
                return False
            filled = self._fill(repository, hex_digest, size)

        self.seeder.call("seed", hex_digest=hex_digest)

        return filled

    def purge(self, hex_digest):
        """Stop seeding a blob and delete it from the cache; return whether it was cached."""
        with self.cache.lock(hex_digest):
            if self.cache.load_info(hex_digest) is None:
                return False
            self.seeder.call("unseed", hex_digest=hex_digest)
            self.cache.remove(hex_digest)

        return True

    def _fill(self, repository, hex_digest, size):
        """Copy a blob from storage into the cache; return False if it was there already.

        A request that finds another one filling the same blob waits for it
        at most ``timeout`` seconds, so a stalled storage read cannot tie up
        every thread of the sidecar.
        """
        try:
            with self.cache.lock(hex_digest, timeout=self.timeout):
                if self.cache.load_info(hex_digest) is not None:
                    return False
                self._reserve(hex_digest, size)
                try:
                    self._copy_from_storage(repository, hex_digest, size)
                finally:
                    self.seeder.call("unreserve", hex_digest=hex_digest)
        except LockTimeout as exc:
            log.warning("gave up waiting for another request's read of sha256:%s: %s",
                        hex_digest, exc)
            raise unavailable(f"blob sha256:{hex_digest} is being read from storage by "
                              f"another request; retry later") from None

        self.seeder.call("count", name="storage_read_bytes", value=size)
        self.seeder.call("count", name="cache_fills", value=1)
        log.info("cached blob sha256:%s (%d bytes) from %s storage",
                 hex_digest, size, self.driver.name)

        return True

    def _reserve(self, hex_digest, size):
        """Have the seeder make room for a blob in the cache, or raise UNAVAILABLE.

        Agents fall back to the registry for a blob whose torrent they cannot
        get, so a full cache costs registry traffic, not a failed pull.
        """
        if not self.seeder.call("reserve", hex_digest=hex_digest, size=size):
            raise unavailable(f"blob sha256:{hex_digest} ({size} bytes) does not fit in the "
                              f"sidecar's cache; see cache_max_size and cache_min_free_bytes")

    def _copy_from_storage(self, repository, hex_digest, size):
        """Read a blob from storage into the cache, turning storage failures into registry errors."""
        try:
            stored_size = self.driver.stat(hex_digest, repository)
            if stored_size != size:
                raise DigestMismatch(f"storage has {stored_size} bytes for sha256:"
                                     f"{hex_digest}, the registry reports {size}")
            with self.driver.open(hex_digest, repository) as stream:
                self.cache.fill(hex_digest, size, stream)
        except BlobNotFound:
            log.warning("blob sha256:%s not found in %s storage", hex_digest, self.driver.name)
            raise blob_unknown(f"sha256:{hex_digest}") from None
        except (DigestMismatch, StorageError) as exc:
            log.error("cannot cache blob sha256:%s from %s storage: %s",
                      hex_digest, self.driver.name, exc)
            raise unavailable(f"cannot read blob sha256:{hex_digest} from storage: "
                              f"{exc}") from None
