"""On-disk cache of sha256-verified blobs and their torrent info dictionaries.

Layout under the cache root::

    blobs/<2 hex>/<hex>        blob bytes; libtorrent seeds it from blobs/<2 hex>
    blobs/<2 hex>/<hex>.info   bencoded info dictionary of the blob's torrent
    tmp/                       files being written; emptied at start
    locks/<hex>.lock           serializes fills of one blob across processes

The ``.info`` file is renamed into place only after the blob's size and
sha256 matched, so a blob counts as cached only when it has both files.
``fill`` renames a verified file into ``blobs/``. The agent lets libtorrent
write into ``blobs/`` directly and writes ``.info`` after its own sha256
check, so data without ``.info`` is incomplete and is deleted at start.
"""

import contextlib
import fcntl
import logging
import os
import shutil
import tempfile
import time
from pathlib import Path

from registry_p2p import torrent
from registry_p2p.bencode import bdecode, bencode
from registry_p2p.cache_quota import CachedBlob
from registry_p2p.errors import DigestMismatch, RegistryP2PError, StorageError

log = logging.getLogger(__name__)

CHUNK_SIZE = 1024 * 1024


class BlobCache:
    def __init__(self, root):
        self.root = Path(root)
        self.blobs_dir = self.root / "blobs"
        self.tmp_dir = self.root / "tmp"
        self.locks_dir = self.root / "locks"
        for directory in (self.blobs_dir, self.tmp_dir, self.locks_dir):
            directory.mkdir(parents=True, exist_ok=True)

    def remove_leftovers(self):
        """Delete temporary files and blobs without ``.info``, left by a crash.

        Call once at process start, before any fill can be running.
        """
        for leftover in self.tmp_dir.iterdir():
            log.info("removing leftover temporary file %s", leftover)
            _unlink(leftover)

        for data in self.blobs_dir.glob("*/*"):
            if data.suffix == "" and not data.with_suffix(".info").exists():
                log.info("removing blob %s that has no info file", data.name)
                _unlink(data)

    def save_path(self, hex_digest):
        """Directory that libtorrent seeds the blob from (the file's name is the hex digest)."""
        return self.blobs_dir / hex_digest[:2]

    def data_path(self, hex_digest):
        return self.save_path(hex_digest) / hex_digest

    def info_path(self, hex_digest):
        return self.save_path(hex_digest) / f"{hex_digest}.info"

    def load_info(self, hex_digest):
        """Return the info dictionary (bytes keys) of a complete cached blob, or None.

        An info file whose data file is gone (deleted by hand, say) counts
        as not cached, so the blob is fetched again instead of failing.
        """
        try:
            info = bdecode(self.info_path(hex_digest).read_bytes())
        except FileNotFoundError:
            return None

        if not self.data_path(hex_digest).exists():
            log.warning("blob sha256:%s has an info file but no data; treating it as not cached",
                        hex_digest)
            return None

        return info

    def cached_digests(self):
        """Yield the hex digest of every complete blob in the cache."""
        for info in self.blobs_dir.glob("*/*.info"):
            if self.data_path(info.stem).exists():
                yield info.stem

    @contextlib.contextmanager
    def lock(self, hex_digest, timeout=None):
        """Hold an exclusive lock on one blob, shared by every process using this cache.

        With ``timeout`` (seconds), LockTimeout is raised when another
        holder keeps the lock that long, instead of waiting on.
        """
        with open(self.locks_dir / f"{hex_digest}.lock", "wb") as handle:
            _acquire(handle, timeout, hex_digest)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def fill(self, hex_digest, expected_size, stream):
        """Copy a blob from ``stream`` into the cache and return its info dictionary.

        The bytes are hashed (sha256 and torrent pieces) while written to a
        temporary file. A size or digest mismatch raises DigestMismatch, a
        read or write failure StorageError; either way nothing stays in the
        cache. Returns the info dictionary with str keys.
        """
        hasher = torrent.BlobHasher(expected_size)
        fd, tmp_name = tempfile.mkstemp(prefix=f"{hex_digest}.", dir=self.tmp_dir)
        tmp = Path(tmp_name)
        try:
            with os.fdopen(fd, "wb") as out:
                _copy(stream, out, hasher, expected_size, hex_digest)
                _flush(out, hex_digest)

            if hasher.received != expected_size:
                raise DigestMismatch(f"blob sha256:{hex_digest}: read {hasher.received} "
                                     f"bytes, expected {expected_size}")
            if hasher.sha256.hexdigest() != hex_digest:
                raise DigestMismatch(f"blob sha256:{hex_digest}: content hashes to "
                                     f"sha256:{hasher.sha256.hexdigest()}")

            info = torrent.build_info(hex_digest, expected_size, hasher.pieces())
            self._commit_filled(hex_digest, tmp, info)
        except BaseException:
            _unlink(tmp)
            raise

        return info

    def _commit_filled(self, hex_digest, verified_file, info):
        try:
            self.commit(hex_digest, verified_file, info)
        except OSError as exc:
            # The data may have been moved in before writing its .info failed.
            _unlink(self.data_path(hex_digest))
            raise StorageError(f"blob sha256:{hex_digest}: writing to the cache failed: "
                               f"{exc}") from exc

    def commit(self, hex_digest, verified_file, info):
        """Move a verified file into the cache and write its info next to it."""
        self.save_path(hex_digest).mkdir(exist_ok=True)
        os.replace(verified_file, self.data_path(hex_digest))
        self.write_info(hex_digest, info)

    def write_info(self, hex_digest, info):
        """Mark a verified blob already at ``data_path`` as complete."""
        fd, info_tmp = tempfile.mkstemp(prefix=f"{hex_digest}.info.", dir=self.tmp_dir)
        try:
            with os.fdopen(fd, "wb") as out:
                out.write(bencode(info))
            os.replace(info_tmp, self.info_path(hex_digest))
        except BaseException:
            _unlink(Path(info_tmp))
            raise

    def remove(self, hex_digest):
        """Delete a blob from the cache (info first, so readers stop trusting the data)."""
        _unlink(self.info_path(hex_digest))
        _unlink(self.data_path(hex_digest))

    def entries(self):
        """Yield a CachedBlob (size, last use) for every complete blob in the cache."""
        for hex_digest in self.cached_digests():
            try:
                size = self.data_path(hex_digest).stat().st_size
                last_used = self.info_path(hex_digest).stat().st_mtime
            except FileNotFoundError:
                # Removed since it was listed.
                continue
            yield CachedBlob(hex_digest, size, last_used)

    def touch(self, hex_digest):
        """Record that a cached blob was used now, for least recently used eviction.

        The time is the ``.info`` file's modification time, which libtorrent
        never changes, so the order survives a restart.
        """
        try:
            os.utime(self.info_path(hex_digest))
        except FileNotFoundError:
            log.info("blob sha256:%s left the cache before its use was recorded", hex_digest)

    def free_bytes(self):
        """Return the bytes available to this process on the cache's file system."""
        stat = os.statvfs(self.root)
        return stat.f_bavail * stat.f_frsize

    def allocated_bytes(self, hex_digest):
        """Return the disk bytes that a blob's data file takes up so far (0 if it has none)."""
        try:
            return self.data_path(hex_digest).stat().st_blocks * 512
        except FileNotFoundError:
            return 0

    def usage(self):
        """Return (blob count, bytes) of the cached blobs."""
        sizes = [self.data_path(hex_digest).stat().st_size for hex_digest in self.cached_digests()]

        return len(sizes), sum(sizes)


class LockTimeout(RegistryP2PError):
    """Another request held a blob's lock longer than the caller would wait."""


def _acquire(handle, timeout, hex_digest):
    if timeout is None:
        fcntl.flock(handle, fcntl.LOCK_EX)
        return

    deadline = time.monotonic() + timeout
    while True:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            if time.monotonic() > deadline:
                raise LockTimeout(f"blob sha256:{hex_digest} stayed locked for {timeout:.0f} s "
                                  f"by another request") from None
            time.sleep(0.1)


def _copy(stream, out, hasher, expected_size, hex_digest):
    while True:
        try:
            chunk = stream.read(CHUNK_SIZE)
        except OSError as exc:
            raise StorageError(f"blob sha256:{hex_digest}: read failed after "
                               f"{hasher.received} bytes: {exc}") from exc
        if not chunk:
            return

        hasher.update(chunk)
        if hasher.received > expected_size:
            raise DigestMismatch(f"blob sha256:{hex_digest}: more than the expected "
                                 f"{expected_size} bytes")
        try:
            out.write(chunk)
        except OSError as exc:
            # ENOSPC (the cache's file system is full) is the usual cause.
            raise StorageError(f"blob sha256:{hex_digest}: writing to the cache failed after "
                               f"{hasher.received - len(chunk)} bytes: {exc}") from exc


def _flush(out, hex_digest):
    try:
        out.flush()
        os.fsync(out.fileno())
    except OSError as exc:
        raise StorageError(f"blob sha256:{hex_digest}: writing to the cache failed: "
                           f"{exc}") from exc


def _unlink(path):
    try:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink()
    except FileNotFoundError:
        pass
