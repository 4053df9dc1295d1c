"""Read a blob stored as several parts by fetching a few parts at a time, in order.

Swift stores a large blob as DLO segments and S3 serves any byte range of
an object; either way one stream is slower than several. ``PartReader``
keeps up to ``workers`` parts downloading while the caller reads the
earliest one, so memory use is about ``workers + 1`` parts.

A part whose download fails part-way is fetched again from the first byte
it lacks, up to ``attempts`` times in all. The caller still verifies the
blob's digest: a retry can only repair a transfer, not prove the content.
"""

import concurrent.futures
import logging
import threading
import time
from dataclasses import dataclass
from typing import Callable, Iterable

from registry_p2p.errors import BlobNotFound, StorageError

log = logging.getLogger(__name__)

# Seconds before the second attempt at a part; it doubles with each attempt.
RETRY_DELAY = 0.5


def part_pool(read_concurrency):
    """Create the thread pool a driver's PartReaders share: room for four blobs at full concurrency."""
    return concurrent.futures.ThreadPoolExecutor(max_workers=4 * read_concurrency,
                                                 thread_name_prefix="storage-part")


@dataclass(frozen=True)
class Part:
    """One piece of a blob: a Swift segment or a byte range of an S3 object."""

    name: str
    size: int
    offset: int = 0


class ChunkReader:
    """A file-like ``read()`` over an iterator of byte chunks."""

    def __init__(self, chunks):
        self._chunks = iter(chunks)
        self._buffer = b""
        self._offset = 0

    def read(self, size=-1):
        # Slices copy only what is returned, so reading a 20 MiB part in
        # 1 MiB reads does not copy the part's rest each time.
        parts = []
        remaining = size
        while size < 0 or remaining > 0:
            if self._offset >= len(self._buffer):
                chunk = next(self._chunks, None)
                if chunk is None:
                    break
                self._buffer, self._offset = chunk, 0
                continue

            end = len(self._buffer) if size < 0 else min(len(self._buffer), self._offset + remaining)
            parts.append(self._buffer[self._offset:end])
            remaining -= end - self._offset
            self._offset = end

        return b"".join(parts)

    def close(self):
        close = getattr(self._chunks, "close", None)
        if close is not None:
            close()

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.close()


class PartReader(ChunkReader):
    """The parts of one blob, fetched ``workers`` at a time and returned in order.

    ``fetch(part, offset)`` returns an iterable of the part's bytes from
    ``offset`` to its end. It raises StorageError for a failure worth
    retrying (a dropped connection, a 5xx) and BlobNotFound for a part that
    is gone. A part that still fails after ``attempts`` makes ``read()``
    raise StorageError; a missing part raises StorageError at once.
    """

    def __init__(self, parts: list[Part], fetch: Callable[[Part, int], Iterable[bytes]],
                 label: str, pool: concurrent.futures.Executor, workers: int = 4,
                 attempts: int = 3, stall_timeout: float = 60.0):
        self._fetch = fetch
        self._label = label
        self._pool = pool
        self._workers = workers
        self._attempts = attempts
        self._stall_timeout = stall_timeout
        self._pending = list(parts)
        self._window = []
        self._closed = threading.Event()
        self._last_progress = time.monotonic()
        super().__init__(self._in_order())

    def _fill_window(self):
        while self._pending and len(self._window) < self._workers:
            part = self._pending.pop(0)
            self._window.append(self._pool.submit(self._download, part))

    def _in_order(self):
        self._fill_window()
        while self._window:
            content = self._wait_for(self._window[0])
            self._window.pop(0)
            self._fill_window()
            yield content

    def _wait_for(self, future):
        """Return a part's bytes; raise StorageError when no part made progress for stall_timeout."""
        while True:
            try:
                return future.result(timeout=1.0)
            except concurrent.futures.TimeoutError:
                stalled = time.monotonic() - self._last_progress
                if stalled > self._stall_timeout:
                    log.error("no bytes of %s from storage for %.0f s; giving up", self._label,
                              stalled)
                    raise StorageError(f"no bytes of {self._label} arrived from storage for "
                                       f"{stalled:.0f} s") from None

    def _download(self, part):
        """Return the bytes of ``part``, resuming from the first missing byte after a failure."""
        received = bytearray()
        for attempt in range(1, self._attempts + 1):
            try:
                for chunk in self._fetch(part, len(received)):
                    if self._closed.is_set():
                        raise StorageError(f"read of {self._label} was closed")
                    received += chunk
                    self._last_progress = time.monotonic()
                    if len(received) > part.size:
                        break
            except BlobNotFound:
                raise StorageError(f"{part.name} of {self._label} is missing; the blob "
                                   f"was deleted or its storage is damaged") from None
            except StorageError as exc:
                if self._closed.is_set() or attempt == self._attempts:
                    raise
                self._before_retry(part, len(received), attempt, exc)
                continue

            if len(received) == part.size:
                return received
            if len(received) > part.size:
                # The part changed since it was listed; resuming cannot fix that.
                raise StorageError(f"{part.name} of {self._label} contains more than the "
                                   f"{part.size} bytes listed")
            if attempt == self._attempts:
                raise StorageError(f"{part.name} of {self._label} ended after "
                                   f"{len(received)} of {part.size} bytes, "
                                   f"{self._attempts} times")
            self._before_retry(part, len(received), attempt, "stream ended early")

        raise AssertionError("unreachable")

    def _before_retry(self, part, offset, attempt, reason):
        log.warning("retrying %s of %s from byte %d (attempt %d of %d): %s",
                    part.name, self._label, offset, attempt + 1, self._attempts, reason)
        time.sleep(RETRY_DELAY * 2 ** (attempt - 1))

    def close(self):
        """Stop the read. Downloads stuck in a socket read end at the socket's timeout, unwaited."""
        self._closed.set()
        self._pending = []
        for future in self._window:
            future.cancel()
        self._window = []
        super().close()
