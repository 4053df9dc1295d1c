"""Blob GETs on the agent: authorize upstream, fetch over BitTorrent, verify, serve.

Any failure of the BitTorrent path (no sidecar, bad metainfo, no peers, a
stall, a digest mismatch) falls back to streaming the blob from the
registry, so the P2P layer never fails a pull. With ``p2p.stream``, a GET
without Range of a blob that is not cached is served while the download
runs (``registry_p2p.agent.stream``).
"""

import concurrent.futures
import hashlib
import io
import logging
import os
import re
import threading
import time
from dataclasses import dataclass, field

import requests
from flask import Response, request
from werkzeug.exceptions import RequestedRangeNotSatisfiable
from werkzeug.http import parse_range_header
from werkzeug.wsgi import ClosingIterator, wrap_file

from registry_p2p import logs, torrent
from registry_p2p.agent.stats import BlobStats
from registry_p2p.agent.stream import BlobStream, RegistryRange
from registry_p2p.cache_quota import CacheQuota
from registry_p2p.errors import P2PError
from registry_p2p.proxy import pass_through
from registry_p2p.registry_api import head_blob

log = logging.getLogger(__name__)

HASH_CHUNK = 1024 * 1024
# Seconds between two checks of a download's progress against
# p2p.stall_timeout, so a stall is detected at most this long after it.
PROGRESS_CHECK_SECONDS = 1.0

# Headers that distribution 2.8 sends with every blob it serves itself,
# sent the same way with a blob from the cache.
BLOB_CACHE_CONTROL = "max-age=31536000"
API_VERSION_HEADER = "Docker-Distribution-Api-Version"
API_VERSION = "registry/2.0"
# A suffix range of zero bytes ("bytes=-0"), which werkzeug 2.2 reads as
# the whole blob.
_EMPTY_SUFFIX_RANGE = re.compile(r"=\s*-0+\s*\Z")


def single_range(header, size):
    """Return whether a GET with ``Range: header`` can be served from a blob of ``size`` bytes.

    True without a Range header, or for one byte range that overlaps the
    blob. werkzeug, which serves the cached file, has no
    multipart/byteranges responses, ignores a malformed header and responds
    416 to a suffix longer than the blob, where the registry (Go's
    net/http) responds 206 with the whole blob. Such requests go to the
    registry instead.
    """
    if header is None:
        return True

    if _EMPTY_SUFFIX_RANGE.search(header):
        return False

    parsed = parse_range_header(header)
    if parsed is None or parsed.units != "bytes" or len(parsed.ranges) != 1:
        return False

    return parsed.range_for_length(size) is not None


def streamable(headers):
    """Return whether a GET with these request headers can be streamed while its blob downloads.

    A Range or If-None-Match request waits for the download and is then
    served from the cache, with the same evaluation as a cached blob.
    """
    return headers.get("Range") is None and headers.get("If-None-Match") is None


@dataclass
class Fetch:
    """One BitTorrent download of a blob into the cache, shared by every request for it.

    ``torrent`` resolves to the session's Download once the torrent is
    being downloaded, or to None when the blob turned out to be cached
    already. ``done`` resolves to True once the blob is verified and
    cached. Both fail with P2PError.
    """

    torrent: concurrent.futures.Future = field(default_factory=concurrent.futures.Future)
    done: concurrent.futures.Future = field(default_factory=concurrent.futures.Future)

    def fail(self, exc):
        for future in (self.torrent, self.done):
            if not future.done():
                future.set_exception(exc)


class BlobService:
    def __init__(self, config, session, cache, http, upstreams):
        self.session = session
        self.cache = cache
        self.http = http
        self.upstreams = upstreams
        self.timeout = config["upstream_timeout"]
        self.metainfo_timeout = config["p2p.metainfo_timeout"]
        self.stall_timeout = config["p2p.stall_timeout"]
        self.min_blob_size = config["p2p.min_blob_size"]
        self.stream = config["p2p.stream"]
        self.stream_deadline_bytes = config["p2p.stream_deadline_bytes"]
        self.stats = BlobStats()
        self.quota = CacheQuota(cache, config["cache_max_size"], config["cache_min_free_bytes"],
                                self._evict)
        self._lock = threading.Lock()
        self._inflight = {}

    def reseed_cache(self):
        """Trim the cache to its limits, then seed every verified blob left by a previous run."""
        log.info("cache limit %d bytes, free-space floor %d bytes", self.quota.max_bytes,
                 self.quota.min_free_bytes)
        self.quota.trim()

        trackers = self.upstreams.announce_urls()
        if not trackers:
            return

        for hex_digest in self.cache.cached_digests():
            info = self.cache.load_info(hex_digest)
            raw = torrent.build_metainfo(hex_digest, info[b"length"], info[b"pieces"], trackers)
            self.session.add_seed(raw, self.cache.save_path(hex_digest)).result(30)
            log.info("seeding cached blob sha256:%s", hex_digest)

    def get(self, registry, repository, digest, hex_digest, upstream_target):
        """Serve a blob GET for ``repository`` on ``registry``."""
        started = time.monotonic()
        authorization = request.headers.get("Authorization")
        size = self._authorize(registry, repository, digest, authorization)
        if size is None:
            # The registry rejected the credentials or does not have the
            # blob: the client gets the registry's own response and body.
            return pass_through(self.http, registry.url + upstream_target, self.timeout)

        if not single_range(request.headers.get("Range"), size):
            # Several ranges, or a malformed or unsatisfiable one: the
            # registry's response (206 multipart/byteranges, 416) is the one
            # the client would get without the agent, and it needs no
            # download.
            self.stats.record_served("registry")
            return self._from_registry(registry, hex_digest, upstream_target, source=None)

        cached = self._serve_cached(hex_digest, digest, source="cache")
        if cached is not None:
            return cached

        if size < self.min_blob_size or not registry.sidecars:
            self.stats.record_served("registry")
            return self._from_registry(registry, hex_digest, upstream_target, source="registry")

        fetch = self._fetch_once(registry, repository, digest, hex_digest, size, authorization)
        if self.stream and streamable(request.headers):
            return self._stream(fetch, registry, repository, digest, hex_digest,
                                upstream_target, authorization, started)

        try:
            fetch.done.result()
        except P2PError as exc:
            return self._fall_back(registry, repository, digest, hex_digest, upstream_target, exc)

        response = self._serve_cached(hex_digest, digest, source="p2p")
        if response is None:
            # Another download evicted the blob between its completion and now.
            return self._fall_back(registry, repository, digest, hex_digest, upstream_target,
                                   P2PError("the blob was evicted from the cache before it "
                                            "was served", reason="cache_full"))

        return response

    def _stream(self, fetch, registry, repository, digest, hex_digest, upstream_target,
                authorization, started):
        """Respond 200 with the blob's bytes as its download delivers them."""
        release = None
        try:
            download = fetch.torrent.result()
            if download is None:
                cached = self._serve_cached(hex_digest, digest, source="cache")
                if cached is None:
                    raise P2PError("the blob was evicted from the cache before it was served",
                                   reason="cache_full")
                return cached

            # The download's reservation keeps evictions away from the blob
            # now, and the lease keeps it cached until the stream ends.
            if self.quota.acquire(hex_digest):
                release = call_once(self.quota.release, hex_digest)
            registry_range = RegistryRange(self.http, registry.url + upstream_target,
                                           authorization, self.timeout)
            stream = BlobStream(self.session, fetch, download, self.cache.data_path(hex_digest),
                                hex_digest, registry_range, self.stats, started,
                                self.stream_deadline_bytes, repository)
            stream.open()
        except P2PError as exc:
            if release is not None:
                release()
            return self._fall_back(registry, repository, digest, hex_digest, upstream_target, exc)
        except BaseException:
            if release is not None:
                release()
            raise

        self.stats.record_served("p2p")
        # A direct_passthrough body is handed to the server as it is, so the
        # server's close() of the body, not Response.call_on_close, ends the
        # stream, even one whose iteration never started.
        on_close = [stream.close] if release is None else [stream.close, release]
        response = Response(ClosingIterator(stream.body(), on_close), direct_passthrough=True,
                            mimetype="application/octet-stream")
        response.content_length = download.length
        _set_blob_headers(response, digest)

        return response

    def _fall_back(self, registry, repository, digest, hex_digest, upstream_target, exc):
        log.warning("P2P fetch of %s in %s failed, fetching it from %s instead: %s",
                    digest, repository, registry.name, exc)
        self.stats.record_fallback(hex_digest, repository, exc)
        self.stats.record_served("fallback")

        return self._from_registry(registry, hex_digest, upstream_target, source="fallback")

    def _authorize(self, registry, repository, digest, authorization):
        """HEAD the blob upstream with the client's credentials; its size, or None if refused."""
        response = head_blob(self.http, registry.url, repository, digest, authorization,
                             self.timeout)
        if response.status_code != 200:
            log.info("registry %s returned %d for HEAD %s@%s", registry.name,
                     response.status_code, repository, digest)
            return None

        try:
            return int(response.headers["Content-Length"])
        except (KeyError, ValueError):
            return None

    def _from_registry(self, registry, hex_digest, upstream_target, source):
        """Stream the blob GET from the registry.

        ``source`` becomes the blob's ``source`` in the stats; None leaves
        it unchanged, for a request that does not fetch the whole blob.
        """
        def count(sent):
            values = {"from_registry": sent}
            if source is not None:
                values["source"] = source
            if source == "fallback":
                values["from_fallback"] = sent
            self.stats.record(hex_digest, **values)

        # Range requests return part of the blob, which cannot be checked
        # against the digest.
        verify = None if request.headers.get("Range") else hex_digest

        return pass_through(self.http, registry.url + upstream_target, self.timeout,
                            on_body_bytes=count, expected_digest=verify)

    def _serve_cached(self, hex_digest, digest, source):
        """Serve the GET from the cache under a lease; return None if the blob is not cached.

        The lease keeps the blob from being evicted until the response is
        closed. ``source`` is how the GET is counted: "cache" for a blob
        cached before the request, "p2p" for one it downloaded.
        """
        if not self.quota.acquire(hex_digest):
            return None
        release = call_once(self.quota.release, hex_digest)
        if self.cache.load_info(hex_digest) is None:
            release()
            return None

        try:
            response = self._send(hex_digest, digest, release)
        except BaseException:
            release()
            raise
        self.cache.touch(hex_digest)

        self.stats.record_served(source)
        if source == "cache" and response.status_code == 200:
            self.stats.record(hex_digest, from_cache=response.content_length)

        return response

    def _send(self, hex_digest, digest, release):
        """Serve the GET from the cached blob, with the headers the registry sends.

        Range, If-None-Match and If-Range are evaluated against the blob's
        ETag, the quoted digest, as the registry does. There is no
        Last-Modified, because the registry sends none. ``release`` is
        called once the server closes the response's file.
        """
        blob = LeasedFile(self.cache.data_path(hex_digest), release)
        size = os.fstat(blob.fileno()).st_size
        response = Response(wrap_file(request.environ, blob), direct_passthrough=True,
                            mimetype="application/octet-stream")
        response.content_length = size
        _set_blob_headers(response, digest)

        try:
            return response.make_conditional(request.environ, accept_ranges=True,
                                             complete_length=size)
        except RequestedRangeNotSatisfiable:
            blob.close()
            raise

    def _fetch_once(self, registry, repository, digest, hex_digest, size, authorization):
        """Return the Fetch of a blob; concurrent requests for it share one download.

        The download runs in a thread of its own, so a client that goes
        away does not stop it for other clients or for the cache.
        """
        with self._lock:
            fetch = self._inflight.get(hex_digest)
            if fetch is not None:
                return fetch
            fetch = Fetch()
            self._inflight[hex_digest] = fetch

        thread = threading.Thread(
            target=self._run_fetch, name=f"fetch-{hex_digest[:12]}", daemon=True,
            args=(fetch, logs.current_request_id(), registry, repository, digest, hex_digest,
                  size, authorization))
        thread.start()

        return fetch

    def _run_fetch(self, fetch, request_id, registry, repository, digest, hex_digest, size,
                   authorization):
        # The download's log lines carry the id of the request that started it.
        logs.new_request_id(request_id)
        logs.set_blob(repository, digest)
        try:
            # Another request may have completed this blob between the cache
            # check in get() and starting this download.
            if self.cache.load_info(hex_digest) is not None:
                fetch.torrent.set_result(None)
                fetch.done.set_result(True)
                return
            self._fetch(fetch, registry, repository, digest, hex_digest, size, authorization)
            fetch.done.set_result(True)
        except P2PError as exc:
            log.warning("BitTorrent download of %s in %s failed: %s", digest, repository, exc)
            fetch.fail(exc)
        except Exception as exc:
            # Any error on this path, expected or not, becomes a fallback
            # to the registry instead of a failed pull.
            log.exception("download of %s in %s failed unexpectedly", digest, repository)
            fetch.fail(P2PError(f"{type(exc).__name__}: {exc}", reason="internal_error"))
        except BaseException as exc:
            fetch.fail(P2PError(f"download interrupted: {type(exc).__name__}",
                                reason="internal_error"))
            raise
        finally:
            with self._lock:
                del self._inflight[hex_digest]

    def _fetch(self, fetch, registry, repository, digest, hex_digest, size, authorization):
        started = time.monotonic()
        raw, sidecar = self._metainfo(registry, repository, digest, authorization)
        try:
            metainfo = torrent.parse_metainfo(raw, hex_digest, size)
        except P2PError as exc:
            raise P2PError(str(exc), reason="invalid_metainfo") from exc

        # The reservation evicts least recently used blobs to make room, and
        # keeps other downloads from counting on the same space.
        if not self.quota.reserve(hex_digest, size):
            raise P2PError(f"the cache cannot hold {size} more bytes", reason="cache_full")
        # The other sidecars' trackers accept this node only for torrents
        # that their own seeders have, so they are asked for it too.
        others = registry.sidecars[registry.sidecars.index(sidecar) + 1:]

        def seed_on_others(download):
            if others:
                self._seed_on_other_sidecars(others, repository, digest, hex_digest, size,
                                             authorization, download.info_hash)

        try:
            self._download(fetch, raw, metainfo, digest, hex_digest, size, seed_on_others)
        finally:
            self.quota.unreserve(hex_digest)

        seconds = time.monotonic() - started
        self.stats.record_download(hex_digest, fetch.torrent.result(), source="p2p",
                                   repository=repository, size=size, seconds=round(seconds, 3))
        log.info("fetched %s (%d bytes) over BitTorrent in %.2f s", digest, size, seconds)

    def _download(self, fetch, raw, metainfo, digest, hex_digest, size, on_started):
        """Download the torrent into the cache and verify it, or leave no file behind.

        ``on_started(download)`` is called once libtorrent has the torrent.

        libtorrent writes straight to the blob's place in the cache. The
        cache treats a blob as present only once its .info file exists,
        which is written after the sha256 check, and deletes data without
        .info at start. (Moving the file after the check with move_storage
        crashed libtorrent 2.0.8 when two downloads finished at once.)
        """
        save_path = self.cache.save_path(hex_digest)
        save_path.mkdir(parents=True, exist_ok=True)
        self.cache.data_path(hex_digest).unlink(missing_ok=True)
        download = None
        try:
            download = self.session.add_download(raw, save_path, size,
                                                 first_piece_first=self.stream).result(30)
            fetch.torrent.set_result(download)
            on_started(download)
            self._wait(download, digest)
            self._verify(self.cache.data_path(hex_digest), hex_digest)
            self.cache.write_info(hex_digest, torrent.build_info(hex_digest, size, metainfo.pieces))
        except BaseException:
            if download is not None:
                self._discard(download.info_hash, digest)
            self.cache.data_path(hex_digest).unlink(missing_ok=True)
            raise

    def _metainfo(self, registry, repository, digest, authorization):
        """Return the blob's torrent and the URL of the sidecar that sent it.

        The sidecars are asked in the order of the config, and the first
        torrent returned wins.
        """
        # NOTE: a sidecar that failed is tried first again for the next blob,
        # so one whose host drops packets delays every metainfo request by
        # upstream_timeout until it is removed from the config.
        errors = []
        for sidecar in registry.sidecars:
            try:
                response = self._request_torrent(sidecar, repository, digest, authorization)
            except requests.RequestException as exc:
                # The exception's text gives the reason, such as a certificate that
                # does not chain to the registry's ca_bundle.
                log.warning("metainfo request for %s in %s to sidecar %s failed: %s: %s",
                            digest, repository, sidecar, type(exc).__name__, exc)
                errors.append(f"{sidecar}: {type(exc).__name__}")
                continue

            if response.status_code == 200:
                return response.content, sidecar
            errors.append(f"{sidecar}: HTTP {response.status_code}")

        raise P2PError(f"no sidecar returned a torrent ({'; '.join(errors)})",
                       reason="no_metainfo")

    def _request_torrent(self, sidecar, repository, digest, authorization):
        headers = {"Authorization": authorization} if authorization else {}
        url = f"{sidecar}/p2p/v1/{repository}/blobs/{digest}/torrent"

        return self.http.get(url, headers=headers, timeout=(self.timeout, self.metainfo_timeout))

    def _seed_on_other_sidecars(self, sidecars, repository, digest, hex_digest, size,
                                authorization, info_hash):
        """Ask ``sidecars`` for the blob's torrent in the background, then announce again.

        A sidecar's tracker accepts announces only for blobs that its own
        seeder seeds. The torrent from the first sidecar also lists the
        trackers of its ``trackers`` option, and those reject the agent's
        announces until their sidecars have been asked for the torrent. After that they can
        hand out peers and their own seed when the first sidecar fails.
        """
        thread = threading.Thread(
            target=self._request_other_torrents, name=f"sidecars-{hex_digest[:12]}",
            daemon=True, args=(logs.current_request_id(), sidecars, repository, digest,
                               hex_digest, size, authorization, info_hash))
        thread.start()

    def _request_other_torrents(self, request_id, sidecars, repository, digest, hex_digest,
                                size, authorization, info_hash):
        logs.new_request_id(request_id)
        logs.set_blob(repository, digest)
        seeded = 0
        for sidecar in sidecars:
            try:
                response = self._request_torrent(sidecar, repository, digest, authorization)
            except requests.RequestException as exc:
                log.warning("metainfo request for %s in %s to sidecar %s failed; its tracker "
                            "will reject this node: %s: %s", digest, repository, sidecar,
                            type(exc).__name__, exc)
                continue

            if response.status_code != 200:
                log.warning("sidecar %s returned %d for the torrent of %s in %s; its tracker "
                            "will reject this node", sidecar, response.status_code, digest,
                            repository)
                continue

            try:
                metainfo = torrent.parse_metainfo(response.content, hex_digest, size)
            except P2PError as exc:
                log.error("sidecar %s sent an invalid torrent for %s: %s", sidecar, digest, exc)
                continue
            if metainfo.info_hash != info_hash:
                log.error("sidecar %s sent torrent %s for %s, but the download is torrent %s; "
                          "do the sidecars run the same registry-p2p version?", sidecar,
                          metainfo.info_hash, digest, info_hash)
                continue
            seeded += 1

        if not seeded:
            return

        try:
            self.session.reannounce(info_hash).result(10)
        except (P2PError, concurrent.futures.TimeoutError) as exc:
            # A failed download has already removed its torrent.
            log.info("cannot announce torrent %s of %s again: %s", info_hash, digest, exc)

    def _wait(self, download, digest):
        reannounced_at = 0.0
        while not download.finished.wait(PROGRESS_CHECK_SECONDS):
            stalled = time.monotonic() - download.last_progress
            # Halfway to giving up, announce again, because the tracker hands
            # out the origin to a leecher whose left count has not changed.
            if stalled > self.stall_timeout / 2 and download.last_progress > reannounced_at:
                log.info("no progress on %s for %.0f s; announcing again (%s)", digest, stalled,
                         self._stall_report(download.info_hash))
                self.session.reannounce(download.info_hash).result(10)
                reannounced_at = time.monotonic()
            if stalled > self.stall_timeout:
                raise P2PError(f"no download progress for {stalled:.0f} s "
                               f"({download.total_done} of {download.length} bytes)",
                               reason="stalled")

        if download.disk_full:
            raise P2PError(f"the cache's file system is full: {download.error}",
                           reason="cache_full")
        if download.error:
            raise P2PError(f"torrent failed: {download.error}", reason="torrent_error")

    def _stall_report(self, info_hash):
        try:
            return self.session.stall_report(info_hash).result(10)
        except Exception as exc:
            # The report is a diagnostic, so its failure does not end the download.
            log.warning("stall report of torrent %s failed: %r", info_hash, exc)
            return "no report"

    def _verify(self, path, hex_digest):
        sha256 = hashlib.sha256()
        with open(path, "rb") as blob:
            while chunk := blob.read(HASH_CHUNK):
                sha256.update(chunk)

        if sha256.hexdigest() != hex_digest:
            log.error("downloaded blob sha256:%s hashes to sha256:%s; discarding it",
                      hex_digest, sha256.hexdigest())
            raise P2PError(f"downloaded bytes hash to sha256:{sha256.hexdigest()}",
                           reason="digest_mismatch")

    def _evict(self, hex_digest):
        """Stop seeding a cached blob, then delete it; return whether it is gone.

        The torrent leaves the session first, because libtorrent would
        otherwise go on reading the deleted file for its peers.
        """
        info = self.cache.load_info(hex_digest)
        if info is not None:
            info_hash = torrent.info_hash(torrent.build_info(hex_digest, info[b"length"],
                                                             info[b"pieces"]))
            try:
                self.session.remove(info_hash).result(30)
            except (P2PError, concurrent.futures.TimeoutError) as exc:
                log.error("cannot evict blob sha256:%s: removing torrent %s failed: %r",
                          hex_digest, info_hash, exc)
                return False

        self.cache.remove(hex_digest)

        return True

    def _discard(self, info_hash, digest):
        try:
            self.session.remove(info_hash, delete_files=True).result(30)
        except (P2PError, concurrent.futures.TimeoutError) as exc:
            log.error("cannot remove torrent %s of %s: %s", info_hash, digest, exc)


class LeasedFile(io.FileIO):
    """A cached blob opened for a response; closing it also calls ``release`` (once).

    It is a real file, so gunicorn still sends it with sendfile().
    """

    def __init__(self, path, release):
        self._release = None
        super().__init__(path, "rb")
        self._release = release

    def close(self):
        try:
            super().close()
        finally:
            release, self._release = self._release, None
            if release is not None:
                release()


def call_once(function, *args):
    """Return a callable that calls ``function(*args)`` the first time only."""
    called = threading.Event()
    lock = threading.Lock()

    def call():
        with lock:
            if called.is_set():
                return
            called.set()
        function(*args)

    return call


def _set_blob_headers(response, digest):
    """Set the headers that distribution 2.8 sends with a blob it serves itself."""
    response.headers["Accept-Ranges"] = "bytes"
    response.headers["Cache-Control"] = BLOB_CACHE_CONTROL
    response.headers["Docker-Content-Digest"] = digest
    response.headers[API_VERSION_HEADER] = API_VERSION
    response.set_etag(digest)
