"""CONNECT on the agent's proxy port: TLS interception for configured registries, or a raw tunnel.

The gunicorn worker (``registry_p2p.server.PlainHTTPWorker``) hands every
CONNECT to the ConnectHandler stored in the Flask app's ``extensions``
under ``server.CONNECT_EXTENSION``.
An intercepted CONNECT gets ``200`` and a TLS handshake with a leaf
certificate for the registry host. The worker then serves the HTTP
requests inside the tunnel with the same app as mirror requests. The
tunnel's TLS socket carries the registry, which ``tunnel_registry``
returns to the app. A rejected CONNECT goes to the app, which responds
403. The thread that accepted the CONNECT serves the tunnel until it
closes or stays idle for ``proxy.idle_timeout`` seconds.
"""

import dataclasses
import errno
import logging
import selectors
import socket
import ssl

from registry_p2p import logs
from registry_p2p.agent.connect_policy import INTERCEPT, REJECT, TUNNEL, rejection

log = logging.getLogger(__name__)

# The attribute of an intercepted tunnel's TLS socket that contains its registry.
_TUNNEL_REGISTRY = "registry_p2p_tunnel_registry"

CONNECTION_ESTABLISHED = b"HTTP/1.1 200 Connection established\r\n\r\n"
BAD_GATEWAY = (b"HTTP/1.1 502 Bad Gateway\r\nContent-Type: text/plain; charset=utf-8\r\n"
               b"Content-Length: 0\r\nConnection: close\r\n\r\n")
RELAY_CHUNK = 64 * 1024


def format_client(client):
    """Return a client address, a (host, port) tuple or a string, as ``host:port``."""
    if isinstance(client, tuple) and len(client) >= 2:
        host = f"[{client[0]}]" if ":" in str(client[0]) else client[0]
        return f"{host}:{client[1]}"

    return str(client)


def tunnel_registry(environ):
    """Return the registry of the intercepted tunnel that a WSGI request arrived in, or None."""
    return getattr(environ.get("gunicorn.socket"), _TUNNEL_REGISTRY, None)


class ConnectHandler:
    """Carries out the ConnectPolicy's decisions on client sockets."""

    def __init__(self, policy, leaf_contexts, idle_timeout, connect_timeout):
        """``leaf_contexts`` (LeafContexts) may be None when the policy intercepts nothing."""
        self.policy = policy
        self.leaf_contexts = leaf_contexts
        self.idle_timeout = idle_timeout
        self.connect_timeout = connect_timeout

    def decide(self, raw_target):
        """Return the ConnectDecision for ``raw_target``, under a new request id.

        A TUNNEL decision carries the target's addresses, which the policy
        has screened; one that cannot be resolved carries none.
        """
        logs.new_request_id()

        return self._decide(raw_target)

    def _decide(self, raw_target):
        decision = self.policy.decide(raw_target)
        if decision.action != TUNNEL:
            return decision

        target = decision.target
        try:
            addresses = resolve_addresses(target.host, target.port)
        except OSError as exc:
            log.warning("cannot resolve the CONNECT target %s: %s", target, exc)
            return decision

        return self.policy.screen_tunnel(decision, addresses, is_local_address)

    def rejection(self, raw_target, client):
        """Log the rejection of a CONNECT and return its 403 error, for the app to render."""
        decision = self._decide(raw_target)
        if decision.action != REJECT:
            # The worker handles every CONNECT it may accept; one that
            # reaches the app came through another server.
            decision = dataclasses.replace(
                decision, action=REJECT,
                reason="CONNECT is served only by the agent's gunicorn worker")

        return rejection(decision, client)

    def start_interception(self, decision, client_socket, client):
        """Respond 200 and complete the TLS handshake; return the TLS socket, or None on failure."""
        assert decision.action == INTERCEPT
        client = format_client(client)
        host = decision.target.host
        try:
            context = self.leaf_contexts.context_for(host)
            client_socket.settimeout(self.idle_timeout)
            client_socket.sendall(CONNECTION_ESTABLISHED)
            tls_socket = context.wrap_socket(client_socket, server_side=True,
                                             do_handshake_on_connect=False)
        except OSError as exc:
            log.info("CONNECT %s from %s: client went away before the TLS handshake: %s",
                     decision.raw_target, client, exc)
            return None

        try:
            tls_socket.do_handshake()
        except ssl.SSLError as exc:
            log.warning("TLS handshake with %s in CONNECT %s failed: %s. A client that "
                        "rejects the certificate needs the agent's ca.crt, for Docker Engine "
                        "in /etc/docker/certs.d/%s/ca.crt", client, decision.raw_target,
                        exc.reason or exc, decision.registry.name)
            tls_socket.close()
            return None
        except OSError as exc:
            log.info("TLS handshake with %s in CONNECT %s failed: %s", client,
                     decision.raw_target, exc)
            tls_socket.close()
            return None

        setattr(tls_socket, _TUNNEL_REGISTRY, decision.registry)
        log.info("intercepting CONNECT %s from %s (%s) for registry %s", decision.raw_target,
                 client, tls_socket.version(), decision.registry.name)

        return tls_socket

    def relay(self, decision, client_socket, client):
        """Tunnel the client's bytes to the target untouched until both sides close or go idle."""
        assert decision.action == TUNNEL
        client = format_client(client)
        target = decision.target
        try:
            upstream = _connect_first(decision.addresses, target.port, self.connect_timeout)
        except OSError as exc:
            log.warning("cannot open the tunnel from %s to %s: %s", client, target, exc)
            self._send_quietly(client_socket, BAD_GATEWAY, client)
            return

        with upstream:
            log.info("tunnelling CONNECT %s from %s untouched (%s)", decision.raw_target, client,
                     decision.reason)
            client_socket.settimeout(self.idle_timeout)
            upstream.settimeout(self.idle_timeout)
            if not self._send_quietly(client_socket, CONNECTION_ESTABLISHED, client):
                return

            sent, received = _relay(client_socket, upstream, self.idle_timeout)

        log.info("closed the tunnel from %s to %s: %d bytes sent, %d received", client, target,
                 sent, received)

    @staticmethod
    def _send_quietly(sock, data, client):
        try:
            sock.sendall(data)
        except OSError as exc:
            log.info("cannot send to %s, which went away: %s", client, exc)
            return False

        return True


def resolve_addresses(host, port):
    """Return the IP addresses of ``host`` for TCP, in getaddrinfo's order, or raise OSError."""
    addresses = []
    for _, _, _, _, sockaddr in socket.getaddrinfo(host, port, type=socket.SOCK_STREAM):
        if sockaddr[0] not in addresses:
            addresses.append(sockaddr[0])

    return addresses


def is_local_address(address):
    """Return whether ``address`` is an address of this host (a socket can bind to it).

    Only EADDRNOTAVAIL counts as "not local"; any other error counts as
    local, so that a doubtful address is refused rather than relayed.
    """
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        try:
            probe.bind((address, 0))
        except OSError as exc:
            if exc.errno == errno.EADDRNOTAVAIL:
                return False
            log.info("cannot tell whether %s is an address of this host: %s", address, exc)

    return True


def _connect_first(addresses, port, timeout):
    """Return a TCP connection to the first of ``addresses`` that accepts one, or raise OSError."""
    if not addresses:
        raise OSError("the target's name did not resolve")

    error = None
    for address in addresses:
        try:
            return socket.create_connection((address, port), timeout=timeout)
        except OSError as exc:
            error = exc

    raise error


def _relay(client_socket, upstream, idle_timeout):
    """Copy bytes both ways; return (client to upstream, upstream to client) byte counts.

    A side that closes its sending half gets its peer's sending half shut
    down too, and the relay ends when both halves are closed, on an error,
    or after ``idle_timeout`` seconds without bytes in either direction.
    """
    peers = {client_socket: upstream, upstream: client_socket}
    counts = {client_socket: 0, upstream: 0}
    with selectors.DefaultSelector() as selector:
        for sock in peers:
            selector.register(sock, selectors.EVENT_READ)

        while selector.get_map():
            ready = selector.select(idle_timeout)
            if not ready:
                log.info("closing a tunnel idle for %.0f s", idle_timeout)
                break

            try:
                for key, _ in ready:
                    source = key.fileobj
                    data = source.recv(RELAY_CHUNK)
                    if data:
                        peers[source].sendall(data)
                        counts[source] += len(data)
                        continue

                    selector.unregister(source)
                    peers[source].shutdown(socket.SHUT_WR)
            except OSError as exc:
                log.info("tunnel ended: %s", exc)
                break

    return counts[client_socket], counts[upstream]
