"""A TCP listener process that logs every connection it accepts, for tests that expect none.

Run as ``python -m registry_p2p.sandbox.listener PORT ADDRESS...``. As a
process, unlike a thread of the test, it can listen inside a network
namespace, such as on a metadata address assigned to the namespace's
loopback. It accepts and closes each connection without reading from it.
"""

import selectors
import socket
import sys
from pathlib import Path

from registry_p2p.sandbox.p2p import python_environment
from registry_p2p.sandbox.process import ManagedProcess

READY = "listening on"
ACCEPTED = "accepted a connection"


def serve(port, addresses):
    with selectors.DefaultSelector() as selector:
        for address in addresses:
            family = socket.AF_INET6 if ":" in address else socket.AF_INET
            server = socket.create_server((address, port), family=family)
            selector.register(server, selectors.EVENT_READ)
        print(READY, port, " ".join(addresses), flush=True)

        while True:
            for key, _ in selector.select():
                conn, peer = key.fileobj.accept()
                print(ACCEPTED, "from", peer[0], "on", conn.getsockname()[0], flush=True)
                conn.close()


class CountingListener:
    """The listener as a child process; ``accepted`` counts the connections it logged."""

    def __init__(self, workdir, addresses, port, netns=None):
        self.addresses = list(addresses)
        self.port = port
        self.process = ManagedProcess(
            "listener", [sys.executable, "-m", "registry_p2p.sandbox.listener", str(port),
                         *self.addresses],
            Path(workdir) / "listener.log", env=python_environment(), netns=netns)

    @property
    def accepted(self):
        lines = self.process.log_path.read_text().splitlines()
        return sum(1 for line in lines if line.startswith(ACCEPTED))

    def start(self):
        self.process.start()
        self.process.wait_for(lambda: READY in self.process.log_path.read_text(), 10,
                              f"the listener on port {self.port}")
        return self

    def stop(self):
        self.process.stop()

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc_info):
        self.stop()


if __name__ == "__main__":
    serve(int(sys.argv[1]), sys.argv[2:])
