"""Swift storage driver: reads docker-registry's swift storage with python-swiftclient."""

from swift_backend.driver import SwiftDriver

__all__ = ["SwiftDriver"]
