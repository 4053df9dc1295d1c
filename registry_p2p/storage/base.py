"""The interface every storage driver implements."""

from abc import ABC, abstractmethod


class StorageDriver(ABC):
    """Read-only access to the blobs and repository links of a registry's storage.

    Contract:
    - ``hex_digest`` is the 64-character hex part of a sha256 digest and
      ``repository`` a name already validated by ``validate_repository``.
    - A missing blob or link raises ``BlobNotFound``; any other failure of
      the backend raises ``StorageError`` naming the backend and the path.
    - ``stat`` and ``is_linked`` never read blob content.
    - ``open`` returns a binary file object positioned at byte 0; it does
      not verify the digest, which is the caller's job.
    - ``stat`` and ``open`` take the repository the blob is read for, which
      the caller has checked with ``is_linked``. Drivers that read the
      storage itself ignore it; one that reads through the registry's API
      needs it to name the blob.
    """

    name = "abstract"
    # Whether stat and open need the repository, as reads through the
    # registry's API do; such a driver cannot check a blob on its own.
    needs_repository = False

    @classmethod
    @abstractmethod
    def from_config(cls, config):
        """Create the driver from a sidecar ``Config``."""

    @abstractmethod
    def stat(self, hex_digest, repository=None):
        """Return the size in bytes of a blob."""

    @abstractmethod
    def is_linked(self, repository, hex_digest):
        """Return whether ``repository`` links the blob, i.e. the registry serves it there."""

    @abstractmethod
    def open(self, hex_digest, repository=None):
        """Open a blob's bytes for reading."""

    def close(self):
        """Release connections; the driver is not used afterwards."""
