"""Run a Flask app under gunicorn from a registry-p2p config (no gunicorn.conf needed)."""

import contextvars
import logging
import select
import socket
import ssl
import time
from http import HTTPStatus

from gunicorn import http as gunicorn_http
from gunicorn.app.base import BaseApplication
from gunicorn.http.errors import LimitRequestHeaders, LimitRequestLine, NoMoreData, ParseException
from gunicorn.workers.gthread import ThreadWorker

from registry_p2p.agent.connect import format_client
from registry_p2p.agent.connect_policy import INTERCEPT, TUNNEL
from registry_p2p import logs
from registry_p2p.errors import RegistryHTTPError

log = logging.getLogger(__name__)

# The first byte of a TLS record that carries a handshake (a ClientHello).
TLS_HANDSHAKE_RECORD = b"\x16"
# The response of docker-registry (Go's net/http) to a request it cannot parse.
BAD_REQUEST = (b"HTTP/1.1 400 Bad Request\r\nContent-Type: text/plain; charset=utf-8\r\n"
               b"Connection: close\r\n\r\n400 Bad Request")
# How long a new connection may take to send its first byte before the
# TLS check is skipped and gunicorn reads the request as usual.
FIRST_BYTE_WAIT = 1.0
# Seconds a connection may go without sending or accepting a byte while a
# thread serves it; a request that takes longer to arrive is dropped.
SOCKET_TIMEOUT = 60.0
# How long and how much a connection's unread input is discarded after an
# error response, so that closing it does not reset it before the client
# reads the response.
DISCARD_SECONDS = 1.0
DISCARD_BYTES = 1024 * 1024
# The key under which an app's ``extensions`` contains its CONNECT handler
# (registry_p2p.agent.connect.ConnectHandler).
CONNECT_EXTENSION = "registry_p2p.connect"


class GunicornServer(BaseApplication):
    """Gunicorn with options given in code and an app factory called in each worker."""

    def __init__(self, app_factory, options, hooks=None):
        self._app_factory = app_factory
        self._options = options
        self._hooks = hooks or {}
        super().__init__()

    def load_config(self):
        for key, value in {**self._options, **self._hooks}.items():
            self.cfg.set(key, value)

    def load(self):
        return self._app_factory()


def _starts_with_tls_handshake(sock):
    """Return whether the first bytes waiting on a new connection are a TLS handshake record."""
    try:
        readable, _, _ = select.select([sock], [], [], FIRST_BYTE_WAIT)
        if not readable:
            return False
        first = sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT)
    except (BlockingIOError, InterruptedError, ValueError):
        return False
    except OSError as exc:
        log.debug("cannot read the first byte of a connection: %s", exc)
        return False

    return first == TLS_HANDSHAKE_RECORD


class PlainHTTPWorker(ThreadWorker):
    """gunicorn's gthread worker, which responds to a TLS handshake on its plain HTTP port with 400.

    Clients that try HTTPS first and fall back to HTTP (skopeo, podman
    and other containers/image users, for a registry marked insecure)
    would otherwise wait for their TLS handshake timeout, 10 s, on every
    connection: gunicorn waits for the CRLF of a request line, which a
    ClientHello does not contain. docker-registry responds with 400 at
    once, and the client moves on to HTTP.
    """

    def handle(self, conn):
        # gunicorn reads a request without a time limit, so a client that
        # sends half a request would hold this thread for good.
        conn.sock.settimeout(SOCKET_TIMEOUT)
        # On an HTTPS port a handshake is what the worker expects.
        if not self.cfg.is_ssl and not getattr(conn, "tls_checked", False):
            conn.tls_checked = True
            # A new context, because the thread's context still carries the
            # id of the last request it served.
            contextvars.Context().run(self._reject_tls_handshake, conn)

        # After a rejection gunicorn reads end of file, and closes the
        # connection as it does for any client that went away.
        return super().handle(conn)

    def handle_request(self, req, conn):
        """Serve one parsed request; a CONNECT goes to the app's CONNECT handler, if it has one."""
        handler = getattr(self.wsgi, "extensions", {}).get(CONNECT_EXTENSION)
        if req.method != "CONNECT" or handler is None:
            return super().handle_request(req, conn)

        decision = handler.decide(req.uri)
        if decision.action == TUNNEL:
            handler.relay(decision, conn.sock, conn.client)
            return False

        if decision.action != INTERCEPT:
            # The app responds 403 and logs the rejection.
            return super().handle_request(req, conn)

        tls_socket = handler.start_interception(decision, conn.sock, conn.client)
        if tls_socket is None:
            return False

        # Responses are written to conn.sock, and gunicorn closes it when the
        # connection ends. Cached blobs still go out encrypted: gunicorn
        # calls sock.sendfile(), which ssl.SSLSocket implements with send().
        conn.sock = tls_socket
        self._serve_tunnel(conn, decision.raw_target)

        return False

    def _serve_tunnel(self, conn, target):
        """Serve the HTTP/1.1 requests inside an intercepted tunnel, keeping it alive between them.

        The thread stays with the tunnel until the client closes it, a
        response closes it, the worker stops, or the socket's timeout
        (proxy.idle_timeout) passes without a request.
        """
        parser = gunicorn_http.RequestParser(self.cfg, conn.sock, conn.client)
        served = 0
        while self.alive:
            try:
                inner = next(parser)
            except StopIteration:
                break
            except (NoMoreData, socket.timeout, ssl.SSLError, ConnectionError) as exc:
                log.debug("tunnel %s from %s closed after %d requests: %s", target,
                          format_client(conn.client),
                          served, exc or type(exc).__name__)
                break

            served += 1
            if not super().handle_request(inner, conn):
                break

        log.info("tunnel %s from %s ended after %d requests", target, format_client(conn.client),
                 served)

    def handle_error(self, req, client, addr, exc):
        """Respond to a request that gunicorn cannot parse in the registry's error format.

        gunicorn's own response is an HTML page, and registry clients expect
        {"errors": [...]}. Other errors keep gunicorn's handling.
        """
        if not isinstance(exc, ParseException):
            return super().handle_error(req, client, addr, exc)

        # The thread's log context still names the last request it served.
        logs.new_request_id()
        error = parse_error(exc)
        peer = format_client(addr)
        log.info("rejected a request from %s: %d %s (%s)", peer, error.status, error.message,
                 error.detail)
        try:
            client.sendall(raw_error_response(error))
            _close_after_response(client)
        except OSError as send_error:
            log.debug("cannot send %d to %s: %s", error.status, peer, send_error)

    @staticmethod
    def _reject_tls_handshake(conn):
        if not _starts_with_tls_handshake(conn.sock):
            return

        log.info("rejected a TLS handshake from %s on the plain HTTP port", conn.client)
        try:
            conn.sock.sendall(BAD_REQUEST)
            conn.sock.shutdown(socket.SHUT_RDWR)
        except OSError as exc:
            log.info("cannot reject the TLS handshake from %s: %s", conn.client, exc)


def _close_after_response(sock):
    """Stop sending, then read and discard what the client still sends for a moment.

    Closing a socket with unread input makes the kernel send a reset, and
    the client may lose the response it has not read yet: the rest of an
    oversized request line is such input.
    """
    sock.shutdown(socket.SHUT_WR)
    sock.settimeout(DISCARD_SECONDS)
    deadline = time.monotonic() + DISCARD_SECONDS
    discarded = 0
    while discarded < DISCARD_BYTES and time.monotonic() < deadline:
        try:
            chunk = sock.recv(65536)
        except (socket.timeout, OSError):
            return
        if not chunk:
            return
        discarded += len(chunk)


def parse_error(exc):
    """Return the RegistryHTTPError for a request that gunicorn's parser rejected with ``exc``."""
    # gunicorn's messages can quote the request line or a header, which may
    # carry a token, so only the exception's class name goes into the detail.
    detail = type(exc).__name__
    if isinstance(exc, LimitRequestHeaders):
        return RegistryHTTPError(431, "UNSUPPORTED", "request header fields too large",
                                 detail=detail)
    if isinstance(exc, LimitRequestLine):
        return RegistryHTTPError(414, "UNSUPPORTED", "request line too long", detail=detail)

    return RegistryHTTPError(400, "UNSUPPORTED", "malformed HTTP request", detail=detail)


def raw_error_response(error):
    """Return the bytes of a complete HTTP/1.1 response that carries ``error`` and closes."""
    body = error.body()
    head = (f"HTTP/1.1 {error.status} {HTTPStatus(error.status).phrase}\r\n"
            f"Content-Type: application/json; charset=utf-8\r\n"
            f"Content-Length: {len(body)}\r\n"
            f"Connection: close\r\n\r\n")

    return head.encode("latin-1") + body


def gunicorn_options(listen, workers, threads, log_level, certificate="", key=""):
    """Return gunicorn's settings. With ``certificate`` and ``key`` (PEM paths) it serves HTTPS."""
    host, port = listen
    bind = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    tls = {"certfile": str(certificate), "keyfile": str(key)} if certificate else {}

    return {
        **tls,
        "bind": [bind],
        "workers": workers,
        "threads": threads,
        "worker_class": f"{__name__}.{PlainHTTPWorker.__name__}",
        # Blob responses stream for minutes; the gthread worker's heartbeat
        # does not depend on request duration, so this only bounds a hung
        # worker.
        "timeout": 120,
        "graceful_timeout": 10,
        "keepalive": 75,
        "loglevel": log_level,
        # The app logs one line per request itself (registry_p2p.webapp),
        # without query strings, which can carry tokens.
        "accesslog": None,
        "errorlog": "-",
        "preload_app": False,
    }
