"""A TCP forwarder that breaks the connections through it, to fake a storage server failing mid-read."""

import logging
import select
import socket
import struct
import threading

log = logging.getLogger(__name__)

BUFFER_SIZE = 64 * 1024


def _reset(sock):
    """Close ``sock`` with a TCP reset instead of an orderly shutdown."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    except OSError:
        pass
    sock.close()


class CuttingProxy:
    """Forward TCP connections from a loopback port to ``target`` and reset each after ``cut_after`` bytes.

    ``cut_after`` counts the bytes that the target sends on one
    connection. A response that stays below it passes unchanged, and a
    longer one stops there with a connection reset, as when a storage
    server fails during a read. ``cut_connections`` counts the connections
    cut so far.
    """

    def __init__(self, target_host, target_port, cut_after, host="127.0.0.1"):
        self.target = (target_host, target_port)
        self.cut_after = cut_after
        self.host = host
        self.port = 0
        self.cut_connections = 0
        self._lock = threading.Lock()
        self._listener = None
        self._stopped = threading.Event()

    def start(self):
        self._listener = socket.create_server((self.host, 0))
        self.port = self._listener.getsockname()[1]
        threading.Thread(target=self._accept, name="cutting-proxy", daemon=True).start()
        log.info("forwarding %s:%d to %s:%d, cutting after %d bytes", self.host, self.port,
                 *self.target, self.cut_after)
        return self

    def stop(self):
        self._stopped.set()
        if self._listener is not None:
            self._listener.close()

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc_info):
        self.stop()

    def _accept(self):
        while not self._stopped.is_set():
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(self.target, timeout=10)
            except OSError as exc:
                log.warning("connecting to %s:%d failed: %s", *self.target, exc)
                _reset(client)
                continue
            upstream.settimeout(None)
            threading.Thread(target=self._forward, args=(client, upstream),
                             daemon=True).start()

    def _forward(self, client, upstream):
        """Copy bytes both ways until either side closes or the target's bytes reach the cut.

        One thread serves both directions, so that no other thread is
        blocked on a socket when it is closed, because the kernel sends the
        reset only once no system call uses the socket any more.
        """
        sent = 0
        cut = False
        readers = [client, upstream]
        try:
            while readers and not cut:
                readable, _, _ = select.select(readers, [], [])
                if client in readable:
                    data = client.recv(BUFFER_SIZE)
                    if data:
                        upstream.sendall(data)
                    else:
                        upstream.shutdown(socket.SHUT_WR)
                        readers.remove(client)
                if upstream in readable:
                    data = upstream.recv(BUFFER_SIZE)
                    if not data:
                        break
                    room = self.cut_after - sent
                    cut = len(data) >= room
                    client.sendall(data[:room])
                    sent += min(len(data), room)
        except OSError as exc:
            log.info("connection to %s:%d failed: %s", *self.target, exc)

        if cut:
            with self._lock:
                self.cut_connections += 1
            log.info("cutting a connection to %s:%d after %d bytes", *self.target, sent)
            _reset(client)
            _reset(upstream)
            return

        # The target closed the connection, so the client gets an orderly close too.
        for sock in (client, upstream):
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            sock.close()
