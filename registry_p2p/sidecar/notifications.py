"""The registry's notification webhook: preheat pushed layers, purge deleted blobs.

docker-registry posts envelopes of events (``{"events": [...]}``, media
type ``application/vnd.docker.distribution.events.v1+json``) to the
endpoints in its ``notifications`` config, retrying until it gets a 2xx.
The sidecar checks the shared secret, queues the events and responds at
once. A worker thread then acts on them:

- ``push`` of a blob, or of a manifest whose layers it reads from
  storage: cache the blob and start seeding it, so that the first pull
  finds a seed ready.
- ``delete``: stop seeding and drop from the cache a blob that was
  deleted, and the layers of a deleted manifest that storage no longer has.

Events can be lost or repeated. Neither changes what a client may pull,
because every torrent request is still authorized by the registry. A lost
push event only makes the first pull slower, and a repeated one finds the
blob cached already.
"""

import hashlib
import hmac
import json
import logging
import queue
import threading
from dataclasses import dataclass

from registry_p2p import digest as digests
from registry_p2p.errors import (BlobNotFound, P2PError, RegistryHTTPError, RegistryP2PError,
                                 StorageError)

log = logging.getLogger(__name__)

EVENTS_MEDIA_TYPE = "application/vnd.docker.distribution.events.v1+json"
# Envelopes larger than this are rejected; the registry sends a few events at a time.
MAX_ENVELOPE_BYTES = 1024 * 1024
# Manifests larger than this are not read for preheating.
MAX_MANIFEST_BYTES = 4 * 1024 * 1024
# Events waiting for the worker; more are dropped (and logged), since
# correctness does not depend on them.
QUEUE_SIZE = 10_000

IMAGE_MANIFEST_TYPES = {
    "application/vnd.docker.distribution.manifest.v2+json",
    "application/vnd.oci.image.manifest.v1+json",
}
INDEX_TYPES = {
    "application/vnd.docker.distribution.manifest.list.v2+json",
    "application/vnd.oci.image.index.v1+json",
}
SCHEMA1_TYPES = {
    "application/vnd.docker.distribution.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.v1+prettyjws",
}
MANIFEST_TYPES = IMAGE_MANIFEST_TYPES | INDEX_TYPES | SCHEMA1_TYPES


@dataclass(frozen=True)
class Event:
    id: str
    action: str
    repository: str
    hex_digest: str
    media_type: str


def bad_request(detail):
    return RegistryHTTPError(400, "UNSUPPORTED", "invalid notification envelope", detail=detail)


def check_secret(authorization, secret):
    """Raise 401 unless ``authorization`` is ``Bearer <secret>``."""
    expected = f"Bearer {secret}".encode()
    if not hmac.compare_digest((authorization or "").encode(), expected):
        raise RegistryHTTPError(401, "UNAUTHORIZED", "notification secret missing or wrong",
                                headers={"WWW-Authenticate": 'Bearer realm="registry-p2p"'})


def parse_envelope(body):
    """Return the events of an envelope that the sidecar acts on.

    Events with other actions (pull, mount), or without a repository and a
    sha256 digest (tag deletes), are skipped. A body that is not an
    envelope raises 400.
    """
    try:
        envelope = json.loads(body)
    except (UnicodeDecodeError, ValueError) as exc:
        raise bad_request(f"body is not JSON: {exc}") from None
    except RecursionError:
        raise bad_request("body is nested too deeply") from None
    if not isinstance(envelope, dict) or not isinstance(envelope.get("events"), list):
        raise bad_request('expected an object with an "events" list')

    events = []
    for raw in envelope["events"]:
        event = _parse_event(raw)
        if event is not None:
            events.append(event)

    return events


def _parse_event(raw):
    if not isinstance(raw, dict) or not isinstance(raw.get("target"), dict):
        raise bad_request("every event must be an object with a target object")

    action = raw.get("action")
    target = raw["target"]
    repository = target.get("repository")
    digest = target.get("digest")
    if action not in ("push", "delete") or not repository or not digest:
        return None
    if not isinstance(repository, str) or not isinstance(digest, str):
        raise bad_request("target.repository and target.digest must be strings")

    try:
        digests.validate_repository(repository)
        hex_digest = digests.parse_digest(digest)
    except RegistryHTTPError as exc:
        log.warning("skipping %s event %s: %s", action, raw.get("id"), exc.detail or exc.message)
        return None

    return Event(id=str(raw.get("id", "")), action=action, repository=repository,
                 hex_digest=hex_digest, media_type=str(target.get("mediaType") or ""))


class Notifications:
    """Event handling in a thread of the gunicorn worker process that received the events."""

    def __init__(self, origin, min_blob_size):
        self.origin = origin
        self.driver = origin.driver
        self.min_blob_size = min_blob_size
        self._queue = queue.Queue(QUEUE_SIZE)
        self._worker = None
        self._lock = threading.Lock()

    def accept(self, events):
        """Queue events for the worker thread; drop them when the queue is full."""
        self._start_worker()
        dropped = []
        for event in events:
            try:
                self._queue.put_nowait(event)
            except queue.Full:
                dropped.append(event)

        if dropped:
            first = dropped[0]
            log.warning("notification queue full; dropped %d events, the first %s event %s "
                        "for %s@sha256:%s", len(dropped), first.action, first.id,
                        first.repository, first.hex_digest)

    def _start_worker(self):
        # Started on first use, in the worker process that serves requests.
        with self._lock:
            if self._worker is None:
                self._worker = threading.Thread(target=self._run, name="notifications",
                                                daemon=True)
                self._worker.start()

    def _run(self):
        while True:
            event = self._queue.get()
            try:
                if event.action == "push":
                    self._push(event)
                else:
                    self._delete(event)
            except (RegistryP2PError, RegistryHTTPError) as exc:
                log.error("%s event %s for %s@sha256:%s failed: %s", event.action, event.id,
                          event.repository, event.hex_digest, exc)
            except Exception:
                log.exception("%s event %s for %s@sha256:%s failed", event.action, event.id,
                              event.repository, event.hex_digest)
            finally:
                self._queue.task_done()
                self._count("notification_events", 1)

    def _push(self, event):
        if event.media_type in MANIFEST_TYPES:
            for hex_digest in self._layers(event.repository, event.hex_digest):
                self._preheat(event.repository, hex_digest)
        else:
            self._preheat(event.repository, event.hex_digest)

    def _preheat(self, repository, hex_digest):
        if self.origin.preheat(repository, hex_digest, self.min_blob_size):
            self._count("preheated_blobs", 1)
            log.info("preheated sha256:%s of %s", hex_digest, repository)

    def _delete(self, event):
        # Delete events of manifests and of blobs look alike: a repository
        # and a digest. The cache contains layer blobs only, so a cached digest
        # was deleted as a blob and is dropped even if storage keeps it
        # until garbage collection. A manifest's layers are dropped only
        # once storage lost them, because other images may share them.
        if self.origin.purge(event.hex_digest):
            self._count("purged_blobs", 1)
            log.info("purged sha256:%s after its delete in %s", event.hex_digest,
                     event.repository)

        for hex_digest in self._layers(event.repository, event.hex_digest, missing_ok=True):
            if self._gone_from_storage(hex_digest, event.repository) and (
                    self.origin.purge(hex_digest)):
                self._count("purged_blobs", 1)
                log.info("purged sha256:%s, gone from storage after a delete in %s",
                         hex_digest, event.repository)

    def _gone_from_storage(self, hex_digest, repository):
        try:
            self.driver.stat(hex_digest, repository)
        except BlobNotFound:
            return True
        return False

    def _layers(self, repository, hex_digest, missing_ok=False):
        """Return the digests of the blobs a manifest in storage refers to, children included.

        A digest that is not a manifest has no layers.
        """
        try:
            manifest = self._read_manifest(repository, hex_digest)
        except BlobNotFound:
            if missing_ok:
                return []
            raise

        if manifest is None:
            return []
        layers = manifest_blobs(manifest)
        for child in manifest_children(manifest):
            child_manifest = self._read_manifest(repository, child)
            if child_manifest is not None:
                layers += manifest_blobs(child_manifest)

        return layers

    def _read_manifest(self, repository, hex_digest):
        """Return a manifest read from storage and checked against its digest, or None."""
        size = self.driver.stat(hex_digest, repository)
        if size > MAX_MANIFEST_BYTES:
            log.warning("manifest sha256:%s of %s is %d bytes; not reading it for preheating",
                        hex_digest, repository, size)
            return None

        try:
            with self.driver.open(hex_digest, repository) as stream:
                content = stream.read(MAX_MANIFEST_BYTES + 1)
        except StorageError as exc:
            log.warning("cannot read manifest sha256:%s of %s: %s", hex_digest, repository, exc)
            return None

        if hashlib.sha256(content).hexdigest() != hex_digest:
            log.warning("manifest sha256:%s of %s in storage does not match its digest",
                        hex_digest, repository)
            return None
        try:
            manifest = json.loads(content)
        except (UnicodeDecodeError, ValueError):
            log.info("sha256:%s of %s is not a JSON manifest", hex_digest, repository)
            return None

        return manifest if isinstance(manifest, dict) else None

    def _count(self, name, value):
        try:
            self.origin.seeder.call("count", name=name, value=value)
        except P2PError as exc:
            log.warning("cannot count %s: %s", name, exc)


def manifest_blobs(manifest):
    """Return the hex digests of an image manifest's layers (schema2, OCI or schema1)."""
    if manifest.get("schemaVersion") == 1:
        entries = [layer.get("blobSum") for layer in _list(manifest.get("fsLayers"))]
    else:
        entries = [layer.get("digest") for layer in _list(manifest.get("layers"))]

    return _sha256_digests(entries)


def manifest_children(manifest):
    """Return the hex digests of the manifests a manifest list or OCI index names."""
    return _sha256_digests(entry.get("digest") for entry in _list(manifest.get("manifests")))


def _list(value):
    return [entry for entry in value if isinstance(entry, dict)] if isinstance(value, list) else []


def _sha256_digests(values):
    """Return the hex parts of the well-formed sha256 digests in ``values``, once each, in order."""
    found = {}
    for value in values:
        if isinstance(value, str) and value.startswith("sha256:"):
            hex_digest = value.removeprefix("sha256:")
            if len(hex_digest) == 64 and all(c in "0123456789abcdef" for c in hex_digest):
                found.setdefault(hex_digest, None)

    return list(found)
