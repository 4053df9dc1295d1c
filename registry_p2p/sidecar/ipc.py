"""Requests from the web workers to the host's seeder process.

The seeder owns the host's one libtorrent session and the tracker's peer
table. Workers reach it over a Unix socket in the cache directory, which
only the service user can open, with an authentication key next to it.
Each thread of a worker keeps one authenticated connection and sends one
request dict at a time on it, then reads one reply. The seeder serves each
connection on a thread of its own until the worker closes it.

Opening a connection costs two challenge-response round trips, which the
seeder's one accepting thread runs one connection at a time, and a new
seeder thread. Paid on every request, that made the accepting thread the
limit of the tracker's throughput (``registry-p2p bench tracker`` in
docs/benchmarks.md).
"""

import logging
import os
import secrets
import socket
import struct
import threading
from multiprocessing.connection import Connection, answer_challenge, deliver_challenge

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


def serve_requests(conn, handlers):
    """Serve the requests on one connection until the client closes it.

    Each request is a dict with "op", the name of a handler, and its
    keyword arguments. The reply is {"result": ...}, or {"error": "..."}
    when the handler raised, so a failed request does not close the
    connection.
    """
    while True:
        try:
            request = conn.recv()
        except EOFError:
            return
        except OSError as exc:
            log.warning("worker connection broke: %s", exc)
            return

        try:
            handler = handlers[request.pop("op")]
            reply = {"result": handler(**request)}
        except Exception as exc:
            log.exception("seeder request failed")
            reply = {"error": f"{type(exc).__name__}: {exc}"}

        try:
            conn.send(reply)
        except OSError as exc:
            log.warning("worker connection broke: %s", exc)
            return


# Seconds to wait for the seeder's reply. The workers read storage
# themselves, and the seeder waits at most 30 s for libtorrent per step, so
# a longer wait means a hung seeder. A reservation can evict several blobs,
# each a step, hence the margin.
REPLY_TIMEOUT = 120.0
# The wait of monitoring requests, which must respond before a scraper's timeout.
MONITORING_REPLY_TIMEOUT = 5.0


def _connect_with_timeout(path, key, reply_timeout):
    """Open an authenticated connection like multiprocessing's Client, bounded in time.

    Client() waits for the listener's challenge without a time limit, so a
    hung seeder, whose socket still accepts connections into its backlog,
    would hold the calling thread.
    """
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        # A blocking connect() to a Unix socket whose backlog is full waits
        # for SO_SNDTIMEO, which also bounds later sends. (A socket timeout
        # would make connect() fail at once with EAGAIN instead.)
        seconds = int(reply_timeout)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO,
                        struct.pack("ll", seconds, int((reply_timeout - seconds) * 1e6)))
        sock.connect(path)
    except BaseException:
        sock.close()
        raise
    conn = Connection(sock.detach())

    try:
        if not conn.poll(reply_timeout):
            raise P2PError(f"seeder did not accept the connection within {reply_timeout:g} s")
        answer_challenge(conn, key)
        deliver_challenge(conn, key)
    except BaseException:
        conn.close()
        raise

    return conn


class SeederClient:
    """Sends requests to the seeder, over one kept-open connection per calling thread."""

    def __init__(self, cache_dir):
        self.cache_dir = str(cache_dir)
        self._key = None
        self._local = threading.local()

    def call(self, op, reply_timeout=REPLY_TIMEOUT, **arguments):
        """Send one request to the seeder and return its reply; P2PError if it is down.

        A kept-open connection that fails is replaced by a new one once. It
        fails when the seeder exited, and a new seeder has none of the old
        one's state, so repeating the request cannot apply it twice. A
        seeder that does not reply within ``reply_timeout`` seconds is
        treated as down, so that a hung seeder does not hold the worker's
        threads.
        """
        request = {"op": op, **arguments}
        reply = None
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            try:
                reply = self._exchange(conn, request, reply_timeout)
            except (OSError, EOFError) as exc:
                # The seeder exited, and a new one has a new key.
                log.info("seeder connection broke, opening a new one: %s", exc)
                self._key = None
                self.close()
            except Exception as exc:
                self.close()
                raise P2PError(f"seeder request {op!r} failed: {exc}") from exc

        if reply is None:
            reply = self._call_on_new_connection(request, reply_timeout)

        if "error" in reply:
            raise P2PError(f"seeder request {op!r} failed: {reply['error']}")

        return reply["result"]

    def _call_on_new_connection(self, request, reply_timeout):
        try:
            conn = self._local.conn = self._connect(reply_timeout)
            return self._exchange(conn, request, reply_timeout)
        except (OSError, EOFError) as exc:
            # The seeder writes a new key on each start.
            self._key = None
            self.close()
            raise P2PError(f"seeder process unreachable at {socket_path(self.cache_dir)}: "
                           f"{exc}") from exc
        except Exception as exc:
            # An authentication failure means a key from a previous seeder.
            self._key = None
            self.close()
            raise P2PError(f"seeder request {request['op']!r} failed: {exc}") from exc

    def close(self):
        """Close the calling thread's connection, if it has one."""
        conn = getattr(self._local, "conn", None)
        self._local.conn = None
        if conn is not None:
            conn.close()

    def _connect(self, reply_timeout):
        if self._key is None:
            with open(os.path.join(self.cache_dir, KEY_NAME), "rb") as key_file:
                self._key = key_file.read()

        return _connect_with_timeout(socket_path(self.cache_dir), self._key, reply_timeout)

    def _exchange(self, conn, request, reply_timeout):
        conn.send(request)
        if not conn.poll(reply_timeout):
            # A late reply would be read as the reply to the next request.
            self.close()
            raise P2PError(f"seeder did not reply to {request['op']!r} within "
                           f"{reply_timeout:g} s")

        return conn.recv()
