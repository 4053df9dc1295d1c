"""Drop cached blobs that the registry's storage no longer has.

The registry's garbage collection deletes blob data without sending any
notification. Every ``cache_sweep_interval`` seconds one sidecar worker
process checks each cached blob against storage and purges those that are
gone, so the seeder stops seeding them and the cache gives their space
back. The registry already responds 404 for them, so no client could get
them meanwhile.
"""

import fcntl
import logging
import threading
import time

from registry_p2p.errors import BlobNotFound, P2PError, StorageError

log = logging.getLogger(__name__)


class StorageSweeper:
    def __init__(self, origin, interval):
        self.origin = origin
        self.cache = origin.cache
        self.driver = origin.driver
        self.interval = interval
        self.lock_path = self.cache.root / "sweep.lock"

    def start(self):
        """Start the sweep thread, unless sweeps are off or the driver cannot check blobs."""
        if not self.interval:
            return
        if self.driver.needs_repository:
            log.info("cached blobs are not checked against storage: the %s driver needs a "
                     "repository for each blob", self.driver.name)
            return

        threading.Thread(target=self._run, name="storage-sweep", daemon=True).start()

    def _run(self):
        while True:
            time.sleep(self.interval)
            try:
                self.sweep_once()
            except Exception:
                log.exception("sweep of the cache against %s storage failed", self.driver.name)

    def sweep_once(self):
        """Purge cached blobs missing from storage, if no other worker is sweeping; return the count."""
        with open(self.lock_path, "wb") as lock:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return 0
            try:
                return self._sweep()
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def _sweep(self):
        purged = 0
        for hex_digest in list(self.cache.cached_digests()):
            try:
                self.driver.stat(hex_digest)
                continue
            except BlobNotFound:
                pass
            except StorageError as exc:
                # Storage that cannot be read proves nothing: keep every blob.
                log.warning("stopping the cache sweep at sha256:%s: %s", hex_digest, exc)
                return purged

            if self.origin.purge(hex_digest):
                purged += 1
                log.info("purged sha256:%s: %s storage no longer has it", hex_digest,
                         self.driver.name)

        if purged:
            try:
                self.origin.seeder.call("count", name="purged_blobs", value=purged)
            except P2PError as exc:
                log.warning("cannot count %d purged blobs: %s", purged, exc)

        return purged
