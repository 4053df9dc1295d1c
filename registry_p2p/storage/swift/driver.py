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

import logging
import threading

from registry_p2p import layout
from registry_p2p.errors import BlobNotFound, ConfigError, StorageError
from registry_p2p.storage.base import StorageDriver
from registry_p2p.storage.parallel import ChunkReader, Part, PartReader, part_pool
from registry_p2p.storage.swift import auth

try:
    import requests
    import urllib3
    from swiftclient.client import ClientException, Connection
    _TRANSPORT_ERRORS = (requests.RequestException, urllib3.exceptions.HTTPError, OSError)
except ImportError:
    # python-swiftclient is needed only with storage.driver = "swift";
    # from_config then raises ConfigError naming the package.
    ClientException = Connection = None
    _TRANSPORT_ERRORS = ()

log = logging.getLogger(__name__)

# Bytes per read of an object's body.
CHUNK_SIZE = 1024 * 1024


class SwiftDriver(StorageDriver):
    name = "swift"

    def __init__(self, connect, container, prefix="", read_concurrency=4, stall_timeout=60.0):
        """``connect()`` returns a new swiftclient Connection; one is used per thread."""
        self._connect = connect
        self.container = container
        self.prefix = prefix.strip("/")
        self.read_concurrency = read_concurrency
        self.stall_timeout = stall_timeout
        self._local = threading.local()
        self._connections = []
        self._connections_lock = threading.Lock()
        self._pool = part_pool(read_concurrency)

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

        return cls(connect, config["storage.swift.container"], config["storage.swift.prefix"],
                   config["storage.read_concurrency"], 2 * config["upstream_timeout"])

    @property
    def connection(self):
        connection = getattr(self._local, "connection", None)
        if connection is None:
            connection = self._local.connection = self._connect()
            with self._connections_lock:
                self._connections.append(connection)
        return connection

    def close(self):
        self._pool.shutdown(wait=True)
        with self._connections_lock:
            connections, self._connections = self._connections, []
        for connection in connections:
            connection.close()

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
        except _TRANSPORT_ERRORS as exc:
            self._drop_connection()
            raise self._transport_error(exc, name) from None

        return content.strip() == f"sha256:{hex_digest}".encode()

    def open(self, hex_digest, repository=None):
        name = self.object_name(layout.blob_data_path(hex_digest))
        label = f"blob sha256:{hex_digest}"
        manifest = self._head(name).get("x-object-manifest")
        if manifest is None:
            return ChunkReader(self._stream(self.container, name, 0))

        segment_container, _, segment_prefix = manifest.partition("/")
        try:
            _, listing = self.connection.get_container(segment_container, prefix=segment_prefix,
                                                       full_listing=True)
        except ClientException as exc:
            raise self._error(exc, manifest) from None
        except _TRANSPORT_ERRORS as exc:
            self._drop_connection()
            raise self._transport_error(exc, manifest) from None

        listed = [Part(entry["name"], int(entry["bytes"])) for entry in listing]
        segments = _complete_numbering(listed, segment_prefix, label,
                                       lambda name: self._segment_size(segment_container, name))
        log.debug("reading %s as %d segments of %s", name, len(segments), segment_container)

        return PartReader(segments, lambda part, offset: self._stream(segment_container,
                                                                      part.name, offset),
                          label, self._pool, workers=self.read_concurrency,
                          stall_timeout=self.stall_timeout)

    def _stream(self, container, name, offset):
        """Yield an object's bytes from ``offset``; failures raise StorageError or BlobNotFound."""
        headers = {"Range": f"bytes={offset}-"} if offset else {}
        try:
            _, body = self.connection.get_object(container, name, headers=headers,
                                                 resp_chunk_size=CHUNK_SIZE)
            yield from body
        except ClientException as exc:
            raise self._error(exc, f"{container}/{name}") from None
        except _TRANSPORT_ERRORS as exc:
            # The connection may be half-read; the next request opens a new one.
            self._drop_connection()
            raise self._transport_error(exc, f"{container}/{name}") from None

    def _segment_size(self, container, name):
        """Return the size of a segment missing from the listing, or None if it does not exist."""
        try:
            headers = self.connection.head_object(container, name)
        except ClientException as exc:
            if exc.http_status == 404:
                return None
            raise self._error(exc, f"{container}/{name}") from None
        except _TRANSPORT_ERRORS as exc:
            self._drop_connection()
            raise self._transport_error(exc, f"{container}/{name}") from None

        log.info("segment %s/%s is not in the container listing yet; read it anyway",
                 container, name)
        return int(headers["content-length"])

    def _head(self, name):
        try:
            return self.connection.head_object(self.container, name)
        except ClientException as exc:
            raise self._error(exc, name) from None
        except _TRANSPORT_ERRORS as exc:
            self._drop_connection()
            raise self._transport_error(exc, name) from None

    def _drop_connection(self):
        connection = getattr(self._local, "connection", None)
        self._local.connection = None
        if connection is not None:
            with self._connections_lock:
                self._connections.remove(connection)
            connection.close()

    def _transport_error(self, exc, name):
        log.warning("swift transfer of %s failed: %s", name, exc)
        return StorageError(f"swift storage: transfer of {name} failed: {exc}")

    def _error(self, exc, name):
        if exc.http_status == 404:
            return BlobNotFound(f"swift object {self.container}/{name} not found")
        if exc.http_status == 401:
            log.error("swift rejected the sidecar's credentials reading %s/%s: %s",
                      self.container, name, exc)
            return StorageError(f"swift storage rejected the credentials (HTTP 401) reading "
                                f"{self.container}/{name}; check the storage.swift settings "
                                f"against the registry's")

        log.warning("swift request for %s/%s failed: %s", self.container, name, exc)
        return StorageError(f"swift storage: cannot read {self.container}/{name}: {exc}")


def _complete_numbering(listed, prefix, label, segment_size):
    """Return a DLO's segments in order, with those the listing lacks, as distribution reads them.

    distribution writes segments ``<prefix>/%016d`` from 1 and, because
    container listings lag behind writes, looks up each number the listing
    lacks until one is not found. A number that is not found while later
    ones exist is a lost segment, which raises StorageError instead of
    reading as a shorter blob. ``segment_size(name)`` returns a segment's
    size or None. Segments named otherwise are returned as listed.
    """
    by_number = {}
    for segment in listed:
        number = segment.name.removeprefix(f"{prefix}/")
        if not number.isdigit() or segment.name == number:
            return listed
        by_number[int(number)] = segment

    segments = []
    number = 1
    while True:
        name = f"{prefix}/{number:016d}"
        if number in by_number:
            segments.append(by_number[number])
        else:
            size = segment_size(name)
            if size is None:
                if any(later > number for later in by_number):
                    raise StorageError(f"swift storage: segment {name} of {label} is missing")
                return segments
            segments.append(Part(name, size))
        number += 1
