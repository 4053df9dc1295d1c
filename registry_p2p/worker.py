"""gunicorn's threaded worker, made to close connections that start a TLS handshake.

Clients built on containers/image (skopeo, podman, CRI-O) try HTTPS first
on a registry or mirror marked ``insecure`` and fall back to plain HTTP
when that fails. gunicorn reads a TLS ClientHello as the start of a
request line and waits for the line to end, which never happens. So each
such client used to wait for its own TLS handshake timeout (10 s in skopeo
1.9) before it tried plain HTTP. Closing the connection makes it fall back
at once.
"""

import logging
import socket

from gunicorn.workers.gthread import ThreadWorker

from registry_p2p import logs

log = logging.getLogger(__name__)

# The first byte of a TLS record that carries a handshake message
# (RFC 8446 section 5.1), which every ClientHello starts with. No HTTP
# method starts with it.
TLS_HANDSHAKE_RECORD = 0x16
DRAIN_CHUNK = 4096


def _starts_tls_handshake(sock):
    """Return whether the next byte on ``sock`` opens a TLS handshake record.

    The peek waits for the byte as gunicorn's request parser would. A
    non-blocking socket without data yet, or a closed one, is not TLS.
    """
    try:
        first = sock.recv(1, socket.MSG_PEEK)
    except BlockingIOError:
        return False
    except OSError as exc:
        log.debug("cannot peek at the connection from %s: %s", _peer(sock), exc)
        return False

    return first == bytes([TLS_HANDSHAKE_RECORD])


def _close_input(sock):
    """Read what the client has sent so far and shut the connection down both ways."""
    try:
        while sock.recv(DRAIN_CHUNK, socket.MSG_DONTWAIT):
            pass
    except BlockingIOError:
        pass
    except OSError as exc:
        log.debug("reading the TLS handshake from %s failed: %s", _peer(sock), exc)

    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError as exc:
        log.debug("shutdown of the TLS connection from %s failed: %s", _peer(sock), exc)


def _peer(sock):
    try:
        return sock.getpeername()
    except OSError:
        return "a closed connection"


class PlainHTTPThreadWorker(ThreadWorker):
    """The gthread worker; a connection that opens with TLS is closed before parsing."""

    def handle(self, conn):
        if _starts_tls_handshake(conn.sock):
            logs.clear_request_id()
            log.info("closing the connection from %s: it started a TLS handshake, and this "
                     "endpoint serves plain HTTP only", conn.client)
            _close_input(conn.sock)

        # gunicorn's own handling then reads end of file and drops the
        # connection, the same way in gunicorn 20.1 and 27.
        return super().handle(conn)
