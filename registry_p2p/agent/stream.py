"""Streaming a blob to a client while its BitTorrent download runs (``p2p.stream``).

A ``BlobStream`` sends the blob's bytes in order, from up to three sources:

1. pieces read through libtorrent once they pass their SHA-1 check. The
   pieces ahead of the client's position get deadlines, so libtorrent
   fetches them first;
2. once the download is verified and cached, the rest of the cached file;
3. when the download fails or stalls after part of the body was sent, the
   rest from the registry, with a ``Range`` request and the client's
   ``Authorization``.

The sha256 of every byte sent is checked before the last bytes go out. A
blob that does not hash to its digest ends the response early, so the
client sees a short body and never a complete blob with wrong bytes.
"""

import concurrent.futures
import hashlib
import logging
import time
from dataclasses import dataclass

import requests
import urllib3.exceptions

from registry_p2p.errors import P2PError
from registry_p2p.proxy import STREAM_CHUNK, BodyDigestMismatch, ShortUpstreamBody

log = logging.getLogger(__name__)

# Bytes of pieces ahead of a reader that are read into memory before the
# client takes them, and bytes of pieces ahead that get deadlines. Reads
# bound the piece data that one stream holds. Deadlines cost no memory,
# but while any piece has one, libtorrent keeps at most one request per
# peer outside the time-critical pieces (request_a_block() in libtorrent
# 2.0).
#
# NOTE: libtorrent reads pieces on its disk threads (aio_threads, 10 by
# default in 2.0.8 and 2.1.1), and glibc keeps freed buffers in per-thread
# arenas. Measured on a 2-core VM over loopback, an agent streaming a
# 1 GiB blob peaked at about 110 MiB more anonymous memory than one that
# waited for the whole download.
# TODO: with three agents streaming one layer, two stalled with the same
# piece missing while their peer that had the whole blob showed no pieces
# (tests/integration/test_p2p_pull.py); the cause is not found, so
# p2p.stream is off by default.
READ_AHEAD_BYTES = 8 * 1024 * 1024
MIN_READ_AHEAD_PIECES = 2
FILE_CHUNK = 1024 * 1024
# Seconds between checks of the download while a reader waits for a piece.
WAIT_INTERVAL = 1.0
# Seconds a reader whose piece read failed waits for the download's own
# outcome, which names the cause better.
FAILURE_SETTLE_SECONDS = 5.0


@dataclass(frozen=True)
class PieceWindow:
    """The pieces of a blob, and how far ahead of a reader they get deadlines and are read."""

    length: int
    piece_length: int
    # Bytes ahead of the reader whose pieces get deadlines once the client has
    # its first bytes (p2p.stream_deadline_bytes). Until then the first piece
    # always gets one.
    deadline_bytes: int = 0

    @property
    def count(self):
        return -(-self.length // self.piece_length)

    @property
    def read_pieces(self):
        return max(MIN_READ_AHEAD_PIECES, READ_AHEAD_BYTES // self.piece_length)

    @property
    def deadline_pieces(self):
        return self.deadline_bytes // self.piece_length

    def piece_at(self, offset):
        """Return the index of the piece that contains byte ``offset``."""
        if not 0 <= offset < self.length:
            raise ValueError(f"offset {offset} outside a blob of {self.length} bytes")
        return offset // self.piece_length

    def piece_size(self, piece):
        """Return the size of ``piece``, which is shorter for the last piece of most blobs."""
        return min(self.piece_length, self.length - piece * self.piece_length)

    def deadline_end(self, position, first=False):
        """Return the index after the last piece with a deadline for a reader at ``position``.

        ``first`` is true while the client waits for its first bytes: that
        piece gets a deadline whatever the window, so the client's first
        byte does not wait for the rest of the download.
        """
        pieces = max(1, self.deadline_pieces) if first else self.deadline_pieces
        return min(position + pieces, self.count)

    def read_end(self, position):
        """Return the index after the last piece read ahead for a reader at ``position``."""
        return min(position + self.read_pieces, self.count)


class DigestCheck:
    """The sha256 and byte count of a blob body as it is sent, checked before its last byte.

    ``add`` raises BodyDigestMismatch when a chunk would complete the body
    with the wrong digest, or go beyond its length, so the caller drops
    that chunk and the connection.
    """

    def __init__(self, hex_digest, length):
        self.hex_digest = hex_digest
        self.length = length
        self.sent = 0
        self._sha256 = hashlib.sha256()

    @property
    def complete(self):
        return self.sent == self.length

    def add(self, chunk):
        if self.sent + len(chunk) > self.length:
            log.error("blob sha256:%s: %d more bytes after %d would exceed its %d bytes, "
                      "so the response ends early", self.hex_digest, len(chunk), self.sent,
                      self.length)
            raise BodyDigestMismatch(self.hex_digest)

        self._sha256.update(chunk)
        self.sent += len(chunk)
        if self.complete and self._sha256.hexdigest() != self.hex_digest:
            log.error("streamed blob sha256:%s hashes to sha256:%s, so the response ends "
                      "before its last %d bytes", self.hex_digest, self._sha256.hexdigest(),
                      len(chunk))
            raise BodyDigestMismatch(self.hex_digest)


class RegistryRange:
    """The rest of a blob from the registry: ``GET`` with ``Range: bytes=<offset>-``.

    Redirects are followed, as for the HEAD that authorizes the request,
    because a registry on S3 or Swift storage redirects blob GETs to a
    signed URL. requests drops ``Authorization`` when the host changes.
    """

    def __init__(self, http, url, authorization, timeout):
        self.http = http
        self.url = url
        self.authorization = authorization
        self.timeout = timeout

    def chunks(self, offset):
        """Yield the blob's bytes from ``offset``, or raise ShortUpstreamBody on a failure."""
        headers = {"Range": f"bytes={offset}-"}
        if self.authorization:
            headers["Authorization"] = self.authorization
        try:
            response = self.http.get(self.url, headers=headers, stream=True, timeout=self.timeout)
        except requests.RequestException as exc:
            log.warning("GET %s from byte %d failed: %s", self.url, offset, exc)
            raise ShortUpstreamBody(self.url) from None

        with response:
            skip = self._bytes_to_skip(response, offset)
            try:
                for chunk in response.raw.stream(STREAM_CHUNK, decode_content=False):
                    if skip:
                        dropped = min(skip, len(chunk))
                        chunk = chunk[dropped:]
                        skip -= dropped
                    if chunk:
                        yield chunk
            except (requests.RequestException, urllib3.exceptions.HTTPError, OSError) as exc:
                log.warning("body of GET %s from byte %d broke: %s", self.url, offset, exc)
                raise ShortUpstreamBody(self.url) from None

    def _bytes_to_skip(self, response, offset):
        """Return how many leading bytes of ``response`` come before ``offset``."""
        if response.status_code == 206:
            content_range = response.headers.get("Content-Range", "")
            if content_range.startswith(f"bytes {offset}-"):
                return 0
            log.warning("GET %s from byte %d returned Content-Range %r", self.url, offset,
                        content_range)
            raise ShortUpstreamBody(self.url)

        if response.status_code == 200:
            # A registry may ignore Range and send the whole blob.
            return offset

        log.warning("GET %s from byte %d returned HTTP %d", self.url, offset,
                    response.status_code)
        raise ShortUpstreamBody(self.url)


class BlobStream:
    """One client's GET of a blob whose BitTorrent download ``fetch`` is running.

    ``open()`` waits for the first bytes and raises P2PError if BitTorrent
    fails before them, so the caller can still send the registry's own
    response. ``body()`` then yields every byte in order. ``close()``
    drops this reader's piece deadlines; the download goes on for other
    readers and for the cache.
    """

    def __init__(self, session, fetch, download, data_path, hex_digest, registry_range, stats,
                 started, deadline_bytes=0, repository=""):
        """``started`` is the request's start on the ``time.monotonic()`` clock.

        ``deadline_bytes`` is how far ahead of the client the pieces get
        deadlines (p2p.stream_deadline_bytes). ``repository`` names the
        blob's repository in the record of a fallback.
        """
        self.session = session
        self.fetch = fetch
        self.download = download
        self.data_path = data_path
        self.hex_digest = hex_digest
        self.repository = repository
        self.registry_range = registry_range
        self.stats = stats
        self.started = started
        self.window = PieceWindow(download.length, download.piece_length, deadline_bytes)
        self._check = DigestCheck(hex_digest, download.length)
        self._reader = object()
        self._pending = {}
        self._released = False
        self._first = None
        self._source = None

    def open(self):
        """Wait for the first bytes, or raise P2PError if BitTorrent fails before them."""
        try:
            self._source = self._from_torrent(0)
            self._first = next(self._source, None)
            if self._first is None:
                # The download was cached before its first piece was read.
                self.close()
                self._source = self._from_cache(0)
                self._first = next(self._source)
        except BaseException:
            self.close()
            raise

    def body(self):
        """Yield the blob's bytes, from libtorrent, the cache or the registry, in order."""
        try:
            self._check.add(self._first)
            first = self._first
            self._first = None
            self.stats.record(self.hex_digest,
                              first_byte_seconds=round(time.monotonic() - self.started, 3))
            yield first

            for chunk in self._rest():
                self._check.add(chunk)
                yield chunk
        finally:
            self.close()

        if not self._check.complete:
            log.warning("stream of blob sha256:%s ended after %d of %d bytes",
                        self.hex_digest, self._check.sent, self._check.length)
            raise ShortUpstreamBody(f"blob sha256:{self.hex_digest}")

    def close(self):
        """Drop this reader's piece deadlines and reads (idempotent)."""
        if self._released:
            return
        self._released = True
        self._pending.clear()
        self.session.release_reader(self.download.info_hash, self._reader)

    def _rest(self):
        try:
            yield from self._source
        except P2PError as exc:
            error = self._failure(exc)
            if error is not None:
                yield from self._from_registry(error)
                return
            # The download completed after all, so the rest is in the cache.

        if not self._check.complete:
            # Pieces read ahead are no longer needed once the file is cached.
            self.close()
            yield from self._from_cache(self._check.sent)

    def _from_torrent(self, offset):
        """Yield whole pieces from ``offset`` until the blob is cached, or raise P2PError."""
        position = start = self.window.piece_at(offset)
        while position < self.window.count:
            if self._cached():
                return

            wanted = [piece for piece in range(position, self.window.read_end(position))
                      if piece not in self._pending]
            self._pending.update(self.session.read_pieces(
                self.download.info_hash, self._reader, position,
                self.window.deadline_end(position, first=position == start), wanted))
            data = self._wait(self._pending[position])
            if data is None:
                return
            del self._pending[position]
            if len(data) != self.window.piece_size(position):
                raise P2PError(f"piece {position} of sha256:{self.hex_digest} was read as "
                               f"{len(data)} bytes, expected {self.window.piece_size(position)}",
                               reason="piece_read")

            if position == self.window.count - 1:
                self._await_cache()
            yield data
            position += 1

    def _wait(self, future):
        """Return a piece's bytes, or None once the blob is cached, or raise P2PError on failure."""
        while True:
            try:
                return future.result(timeout=WAIT_INTERVAL)
            except concurrent.futures.TimeoutError:
                pass
            except concurrent.futures.CancelledError:
                raise P2PError("piece read cancelled because the stream was closed",
                               reason="piece_read") from None

            if self.fetch.done.done():
                if self.fetch.done.exception() is not None:
                    raise self.fetch.done.exception()
                return None

    def _cached(self):
        return self.fetch.done.done() and self.fetch.done.exception() is None

    def _await_cache(self):
        """Wait until the download is verified and cached, or failed.

        The last piece goes out only then, so a client that has received a
        whole blob finds it cached and counted in the stats. The wait is
        about as long as the sha256 check of the file.
        """
        concurrent.futures.wait([self.fetch.done])
        if self.fetch.done.exception() is not None:
            log.warning("download of sha256:%s failed after its last piece was read: %s",
                        self.hex_digest, self.fetch.done.exception())

    def _failure(self, exc):
        """Return the P2PError that failed this stream, or None if the blob was cached after all."""
        done, _ = concurrent.futures.wait([self.fetch.done], timeout=FAILURE_SETTLE_SECONDS)
        if not done:
            return exc
        if self.fetch.done.exception() is None:
            return None

        return self.fetch.done.exception()

    def _from_cache(self, offset):
        with open(self.data_path, "rb") as blob:
            blob.seek(offset)
            while chunk := blob.read(FILE_CHUNK):
                yield chunk

    def _from_registry(self, error):
        offset = self._check.sent
        log.warning("BitTorrent stream of sha256:%s failed after %d of %d bytes; fetching the "
                    "rest from the registry: %s", self.hex_digest, offset, self._check.length,
                    error)
        self.close()
        self.stats.record_fallback(self.hex_digest, self.repository, error)

        received = 0
        try:
            for chunk in self.registry_range.chunks(offset):
                received += len(chunk)
                yield chunk
        finally:
            self.stats.record(self.hex_digest, from_registry=received, from_fallback=received)
