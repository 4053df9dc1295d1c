"""Real registry, dockerd, containerd and network namespaces on one machine, for tests and demos."""


class SandboxError(Exception):
    """A sandbox component is missing, failed to start or failed to stop."""
