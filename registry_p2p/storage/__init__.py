"""Storage drivers: read blobs from the registry's own storage.

A driver reads distribution 2.8's layout (see ``registry_p2p.layout``) and
never writes to it. Drivers are chosen by the name in ``storage.driver``
from DRIVERS, which names each driver class by import path, so that a
driver's libraries (boto3, python-swiftclient) are imported only when it is
used.
"""

import importlib

from registry_p2p.errors import ConfigError
from registry_p2p.storage.base import StorageDriver

DRIVERS = {
    "filesystem": "registry_p2p.storage.filesystem:FilesystemDriver",
    "s3": "registry_p2p.storage.s3:S3Driver",
    "registry": "registry_p2p.storage.registry:RegistryDriver",
    "swift": "registry_p2p.storage.swift.driver:SwiftDriver",
}


def driver_class(name):
    """Return the driver class registered as ``name``."""
    try:
        module_name, _, class_name = DRIVERS[name].partition(":")
    except KeyError:
        raise ConfigError(f"unknown storage driver {name!r}; "
                          f"known drivers: {', '.join(sorted(DRIVERS))}") from None

    return getattr(importlib.import_module(module_name), class_name)


def open_driver(config):
    """Create the driver named by ``storage.driver`` from a sidecar config."""
    return driver_class(config["storage.driver"]).from_config(config)


def check_driver_config(config):
    """Raise ConfigError if the storage settings are incomplete; nothing is contacted.

    Drivers connect lazily, so creating one checks its settings only.
    """
    open_driver(config).close()


__all__ = ["DRIVERS", "StorageDriver", "check_driver_config", "driver_class", "open_driver"]
