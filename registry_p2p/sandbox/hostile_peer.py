"""A BitTorrent peer that claims every piece and sends random bytes for each request.

It speaks the plain BEP 3 wire protocol and nothing else: no extension
protocol, no fast extension, no message stream encryption. libtorrent
opens an outgoing connection with an encrypted handshake first and, when
the peer closes it, reconnects at once with a plain one, which this peer
accepts. It uses the standard library only, so no libtorrent behaviour
hides what it sends.
"""

import logging
import os
import secrets
import socket
import struct
import threading
import urllib.parse
import urllib.request
from dataclasses import dataclass

log = logging.getLogger(__name__)

PROTOCOL = b"BitTorrent protocol"
HANDSHAKE_LENGTH = 1 + len(PROTOCOL) + 8 + 20 + 20
PEER_ID_PREFIX = b"-HP0001-"
# Message ids of BEP 3.
UNCHOKE = 1
BITFIELD = 5
REQUEST = 6
PIECE = 7
# Largest block this peer sends for one request; libtorrent requests 16 KiB blocks.
MAX_BLOCK = 128 * 1024
# Largest message this peer reads; every message a downloader sends is far smaller.
MAX_MESSAGE = 1024 * 1024
# Seconds a connection may stay silent before this peer closes it.
IDLE_TIMEOUT = 60.0


@dataclass(frozen=True)
class Torrent:
    """A torrent as the peer serves it: its 20-byte infohash, length and piece length."""

    info_hash: bytes
    length: int
    piece_length: int

    @property
    def piece_count(self):
        return -(-self.length // self.piece_length)

    def piece_size(self, index):
        return min(self.piece_length, self.length - index * self.piece_length)


class HostilePeer:
    """A listening peer that serves random bytes as every piece of its torrents.

    ``requests_answered`` counts the block requests it served, and
    ``bytes_sent`` the random payload bytes it sent.
    """

    def __init__(self, torrents, host="127.0.0.1"):
        self.torrents = {torrent.info_hash: torrent for torrent in torrents}
        self.peer_id = PEER_ID_PREFIX + secrets.token_hex(6).encode()
        self.requests_answered = 0
        self.bytes_sent = 0
        self.connections = 0
        self._lock = threading.Lock()
        self._server = socket.create_server((host, 0))
        self._server.settimeout(0.2)
        self.host = host
        self.port = self._server.getsockname()[1]
        self._running = False
        self._threads = []
        self._open_connections = set()

    def start(self):
        self._running = True
        self._start_thread(self._accept)
        log.info("hostile peer listening on %s:%d", self.host, self.port)
        return self

    def stop(self):
        self._running = False
        with self._lock:
            for conn in self._open_connections:
                # Wakes the thread that waits in recv() on it.
                try:
                    conn.shutdown(socket.SHUT_RDWR)
                except OSError as exc:
                    log.info("hostile peer: connection already closed: %s", exc)
        for thread in self._threads:
            thread.join(timeout=IDLE_TIMEOUT)
        self._server.close()
        log.info("hostile peer stopped: %d connections, %d requests answered, %d bytes sent",
                 self.connections, self.requests_answered, self.bytes_sent)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc_info):
        self.stop()

    def announce(self, tracker_url, info_hash):
        """Announce to ``tracker_url`` as a seed of ``info_hash``; return the raw reply."""
        query = {"peer_id": self.peer_id, "port": str(self.port), "uploaded": "0",
                 "downloaded": "0", "left": "0", "event": "started", "compact": "1"}
        encoded = f"info_hash={urllib.parse.quote_from_bytes(info_hash)}&{urllib.parse.urlencode(query)}"
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        with opener.open(f"{tracker_url}?{encoded}", timeout=10) as response:
            return response.read()

    def _start_thread(self, target, *args):
        thread = threading.Thread(target=target, args=args, daemon=True)
        self._threads.append(thread)
        thread.start()

    def _accept(self):
        while self._running:
            try:
                conn, address = self._server.accept()
            except TimeoutError:
                continue
            except OSError as exc:
                log.info("hostile peer stopped accepting: %s", exc)
                return

            with self._lock:
                self.connections += 1
                self._open_connections.add(conn)
            self._start_thread(self._serve, conn, address)

    def _serve(self, conn, address):
        conn.settimeout(IDLE_TIMEOUT)
        with conn:
            try:
                torrent = self._handshake(conn)
                if torrent is None:
                    return

                self._send_message(conn, BITFIELD, _full_bitfield(torrent.piece_count))
                self._send_message(conn, UNCHOKE)
                while self._running:
                    message = _read_message(conn)
                    if message is None:
                        return
                    if message[:1] == bytes([REQUEST]):
                        self._answer_request(conn, torrent, message[1:])
            except (OSError, ValueError) as exc:
                log.info("hostile peer: connection from %s:%d ended: %s", *address[:2], exc)
            finally:
                with self._lock:
                    self._open_connections.discard(conn)

    def _handshake(self, conn):
        """Read the peer's plain handshake and send ours; return its Torrent, or None to close."""
        received = _read_exactly(conn, HANDSHAKE_LENGTH)
        if received is None or received[:1 + len(PROTOCOL)] != bytes([len(PROTOCOL)]) + PROTOCOL:
            # An encrypted handshake, which makes libtorrent retry in plain text.
            return None

        info_hash = received[28:48]
        torrent = self.torrents.get(info_hash)
        if torrent is None:
            return None

        conn.sendall(bytes([len(PROTOCOL)]) + PROTOCOL + bytes(8) + info_hash + self.peer_id)

        return torrent

    def _answer_request(self, conn, torrent, payload):
        index, begin, length = struct.unpack(">III", payload[:12])
        in_piece = index < torrent.piece_count and begin + length <= torrent.piece_size(index)
        if not in_piece or length > MAX_BLOCK:
            raise ValueError(f"invalid request for piece {index}, offset {begin}, {length} bytes")

        self._send_message(conn, PIECE, struct.pack(">II", index, begin) + os.urandom(length))
        with self._lock:
            self.requests_answered += 1
            self.bytes_sent += length

    @staticmethod
    def _send_message(conn, message_id, payload=b""):
        conn.sendall(struct.pack(">IB", 1 + len(payload), message_id) + payload)


def _full_bitfield(piece_count):
    """Return a bitfield with the first ``piece_count`` bits set and the spare bits clear."""
    bits = bytearray(-(-piece_count // 8))
    for index in range(piece_count):
        bits[index // 8] |= 0x80 >> (index % 8)

    return bytes(bits)


def _read_exactly(conn, count):
    """Return ``count`` bytes from ``conn``, or None if it closes first."""
    data = b""
    while len(data) < count:
        chunk = conn.recv(count - len(data))
        if not chunk:
            return None
        data += chunk

    return data


def _read_message(conn):
    """Return the next message (id and payload) from ``conn``, skipping keep-alives; None at its end."""
    while True:
        prefix = _read_exactly(conn, 4)
        if prefix is None:
            return None

        length, = struct.unpack(">I", prefix)
        if length > MAX_MESSAGE:
            raise ValueError(f"message of {length} bytes is too long")
        if length:
            return _read_exactly(conn, length)
