"""Filesystem storage driver: the registry's ``storage.filesystem.rootdirectory``."""

import errno
import logging

from registry_p2p import layout
from registry_p2p.errors import BlobNotFound, StorageError
from registry_p2p.storage.base import StorageDriver

log = logging.getLogger(__name__)


class FilesystemDriver(StorageDriver):
    name = "filesystem"

    def __init__(self, root):
        self.root = root

    @classmethod
    def from_config(cls, config):
        return cls(config["storage.filesystem.rootdirectory"])

    def stat(self, hex_digest, repository=None):
        data = self.root / layout.blob_data_path(hex_digest)
        try:
            return data.stat().st_size
        except OSError as exc:
            raise self._error(exc, data) from None

    def is_linked(self, repository, hex_digest):
        link = self.root / layout.layer_link_path(repository, hex_digest)
        try:
            content = link.read_bytes()
        except FileNotFoundError:
            return False
        except OSError as exc:
            raise self._error(exc, link) from None

        # distribution writes the digest itself into the link file.
        return content.strip() == f"sha256:{hex_digest}".encode()

    def open(self, hex_digest, repository=None):
        data = self.root / layout.blob_data_path(hex_digest)
        try:
            return open(data, "rb")
        except OSError as exc:
            raise self._error(exc, data) from None

    def _error(self, exc, path):
        if exc.errno in (errno.ENOENT, errno.ENOTDIR):
            return BlobNotFound(f"{path} not found")

        return StorageError(f"filesystem storage: cannot read {path}: {exc.strerror}")
