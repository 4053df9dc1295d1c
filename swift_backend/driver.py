"""Read blobs as distribution 2.8's swift driver writes them.

Objects are ``<prefix>/files/docker/registry/v2/...`` in one container.
Blobs uploaded through the registry are Dynamic Large Objects: a 0-byte
manifest whose ``X-Object-Manifest`` names ``<container>/<segment prefix>``,
with the bytes in numbered segments under ``<prefix>/segments/``. A DLO is
read by listing its segments and fetching several at a time, in order,
because Swift's dlo middleware serves one segment per second after the
tenth when the manifest itself is read (its defaults
rate_limit_after_segment = 10 and rate_limit_segments_per_sec = 1).
"""

import concurrent.futures
import logging
import threading

from registry_p2p import layout
from registry_p2p.errors import BlobNotFound, ConfigError, StorageError
from registry_p2p.storage.base import StorageDriver
from swift_backend import auth

try:
    from swiftclient.client import ClientException, Connection
except ImportError:
    # python-swiftclient is needed only with storage.driver = "swift";
    # from_config then raises ConfigError naming the package.
    ClientException = Connection = None

log = logging.getLogger(__name__)

SEGMENT_WORKERS = 4


class SwiftDriver(StorageDriver):
    name = "swift"

    def __init__(self, connect, container, prefix=""):
        """``connect()`` returns a new swiftclient Connection; one is used per thread."""
        self._connect = connect
        self.container = container
        self.prefix = prefix.strip("/")
        self._local = threading.local()

    @classmethod
    def from_config(cls, config):
        if Connection is None:
            raise ConfigError("storage.driver = \"swift\" needs python-swiftclient: apt-get "
                              "install python3-swiftclient, or pip install python-swiftclient")
        if not config["storage.swift.container"]:
            raise ConfigError("storage.driver is \"swift\" but storage.swift.container is empty; "
                              "set it to the registry's storage.swift.container")

        options = auth.connection_options(config)

        def connect():
            # swiftclient authenticates again by itself when a token expires
            # (401), through the shared keystoneauth1 session with Keystone v3.
            return Connection(**options)

        return cls(connect, config["storage.swift.container"], config["storage.swift.prefix"])

    @property
    def connection(self):
        connection = getattr(self._local, "connection", None)
        if connection is None:
            connection = self._local.connection = self._connect()
        return connection

    def object_name(self, relative_path):
        files = f"{self.prefix}/files" if self.prefix else "files"
        return f"{files}/{relative_path}"

    def stat(self, hex_digest, repository=None):
        name = self.object_name(layout.blob_data_path(hex_digest))

        return int(self._head(name)["content-length"])

    def is_linked(self, repository, hex_digest):
        name = self.object_name(layout.layer_link_path(repository, hex_digest))
        try:
            _, content = self.connection.get_object(self.container, name)
        except ClientException as exc:
            if exc.http_status == 404:
                return False
            raise self._error(exc, name) from None

        return content.strip() == f"sha256:{hex_digest}".encode()

    def open(self, hex_digest, repository=None):
        name = self.object_name(layout.blob_data_path(hex_digest))
        manifest = self._head(name).get("x-object-manifest")
        if manifest is None:
            try:
                _, body = self.connection.get_object(self.container, name,
                                                     resp_chunk_size=1024 * 1024)
            except ClientException as exc:
                raise self._error(exc, name) from None
            return _ChunkReader(body)

        segment_container, _, segment_prefix = manifest.partition("/")
        try:
            _, listing = self.connection.get_container(segment_container, prefix=segment_prefix,
                                                       full_listing=True)
        except ClientException as exc:
            raise self._error(exc, manifest) from None

        segments = [entry["name"] for entry in listing]
        log.debug("reading %s as %d segments of %s", name, len(segments), segment_container)

        return _SegmentReader(self, segment_container, segments)

    def fetch_segment(self, container, name):
        try:
            _, content = self.connection.get_object(container, name)
        except ClientException as exc:
            raise self._error(exc, f"{container}/{name}") from None
        return content

    def _head(self, name):
        try:
            return self.connection.head_object(self.container, name)
        except ClientException as exc:
            raise self._error(exc, name) from None

    def _error(self, exc, name):
        if exc.http_status == 404:
            return BlobNotFound(f"swift object {self.container}/{name} not found")

        log.warning("swift request for %s/%s failed: %s", self.container, name, exc)
        return StorageError(f"swift storage: cannot read {self.container}/{name}: {exc}")


class _ChunkReader:
    """A file-like ``read()`` over an iterator of byte chunks."""

    def __init__(self, chunks):
        self._chunks = iter(chunks)
        self._buffer = b""
        self._offset = 0

    def read(self, size=-1):
        # Slices copy only what is returned, so reading a 20 MiB segment in
        # 1 MiB reads does not copy the segment's rest each time.
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


class _SegmentReader(_ChunkReader):
    """Segments fetched SEGMENT_WORKERS at a time and returned in order.

    A failed segment raises StorageError from ``read()``. Memory use is
    about SEGMENT_WORKERS + 1 segments.
    """

    def __init__(self, driver, container, segments):
        self._pool = concurrent.futures.ThreadPoolExecutor(max_workers=SEGMENT_WORKERS,
                                                           thread_name_prefix="swift-segment")
        self._driver = driver
        self._container = container
        self._pending = list(segments)
        self._window = []
        super().__init__(self._in_order())

    def _fill_window(self):
        while self._pending and len(self._window) < SEGMENT_WORKERS:
            name = self._pending.pop(0)
            self._window.append(self._pool.submit(self._driver.fetch_segment,
                                                  self._container, name))

    def _in_order(self):
        self._fill_window()
        while self._window:
            content = self._window.pop(0).result()
            self._fill_window()
            yield content

    def close(self):
        for future in self._window:
            future.cancel()
        self._pool.shutdown(wait=True)
