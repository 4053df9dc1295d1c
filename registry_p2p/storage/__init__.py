"""Storage drivers: read blobs from the registry's own storage.

A driver reads distribution 2.8's layout (see ``registry_p2p.layout``) and
never writes to it. Drivers are chosen by the name in ``storage.driver``.
"""

from registry_p2p.errors import ConfigError
from registry_p2p.storage.base import StorageDriver
from registry_p2p.storage.filesystem import FilesystemDriver
from registry_p2p.storage.s3 import S3Driver
from swift_backend import SwiftDriver

DRIVERS = {
    "filesystem": FilesystemDriver,
    "s3": S3Driver,
    "swift": SwiftDriver,
}


def open_driver(config):
    """Create the driver named by ``storage.driver`` from a sidecar config."""
    name = config["storage.driver"]
    try:
        driver_class = DRIVERS[name]
    except KeyError:
        raise ConfigError(f"unknown storage driver {name!r}; "
                          f"known drivers: {', '.join(sorted(DRIVERS))}") from None

    return driver_class.from_config(config)


__all__ = ["DRIVERS", "StorageDriver", "open_driver"]
