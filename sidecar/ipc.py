"""Requests from the web workers to the host's seeder process.

The seeder owns the host's one libtorrent session and the tracker's peer
table. Workers reach it over a Unix socket in the cache directory, which
only the service user can open, with an authentication key next to it.
Each call opens a connection, sends one request dict and reads one reply.
"""

import logging
import os
import secrets
from multiprocessing.connection import Client

from registry_p2p.errors import P2PError

log = logging.getLogger(__name__)

SOCKET_NAME = "seeder.sock"
KEY_NAME = "seeder.key"


def socket_path(cache_dir):
    return os.path.join(cache_dir, SOCKET_NAME)


def create_key(cache_dir):
    """Write a fresh random key readable only by this user and return it."""
    path = os.path.join(cache_dir, KEY_NAME)
    key = secrets.token_bytes(32)
    fd = os.open(path + ".tmp", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(key)
    os.replace(path + ".tmp", path)

    return key


class SeederClient:
    def __init__(self, cache_dir):
        self.cache_dir = str(cache_dir)
        self._key = None

    def call(self, op, **arguments):
        """Send one request to the seeder and return its reply; P2PError if it is down."""
        try:
            if self._key is None:
                with open(os.path.join(self.cache_dir, KEY_NAME), "rb") as key_file:
                    self._key = key_file.read()
            with Client(socket_path(self.cache_dir), family="AF_UNIX", authkey=self._key) as conn:
                conn.send({"op": op, **arguments})
                reply = conn.recv()
        except (OSError, EOFError) as exc:
            # The seeder writes a new key on each start.
            self._key = None
            raise P2PError(f"seeder process unreachable at {socket_path(self.cache_dir)}: "
                           f"{exc}") from exc
        except Exception as exc:
            # An authentication failure means a key from a previous seeder.
            self._key = None
            raise P2PError(f"seeder request {op!r} failed: {exc}") from exc

        if "error" in reply:
            raise P2PError(f"seeder request {op!r} failed: {reply['error']}")

        return reply["result"]
