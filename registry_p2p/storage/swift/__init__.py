"""Swift storage driver: reads docker-registry's swift storage with python-swiftclient."""

from registry_p2p.storage.swift.driver import SwiftDriver

__all__ = ["SwiftDriver"]
