"""BitTorrent HTTP tracker logic (BEP 3, compact replies per BEP 23).

Pure functions and an in-memory peer table; the sidecar's seeder process
holds the one table of its host and its web workers forward announces to
it.
"""

import ipaddress
import logging
import random
import struct
import threading
import time
from dataclasses import dataclass
from urllib.parse import unquote_to_bytes

from registry_p2p.bencode import bencode

log = logging.getLogger(__name__)

MAX_NUMWANT = 200
DEFAULT_NUMWANT = 50
EVENTS = ("", "started", "completed", "stopped", "empty")


class AnnounceError(ValueError):
    """An announce request is malformed; the reason goes to the peer as 'failure reason'."""


@dataclass(frozen=True)
class Announce:
    info_hash: bytes
    peer_id: bytes
    ip: str
    port: int
    left: int
    event: str
    numwant: int


def parse_announce(raw_query, remote_addr):
    """Parse the raw query string of an announce request.

    ``raw_query`` is the undecoded query string (bytes or str): info_hash and
    peer_id are 20 arbitrary bytes, which a str-decoding query parser would
    corrupt. The peer's address is ``remote_addr``; an ``ip`` parameter is
    ignored so that no peer can make the tracker hand out someone else's
    address.
    """
    if isinstance(raw_query, str):
        raw_query = raw_query.encode("latin-1")

    params = {}
    for pair in raw_query.split(b"&"):
        if not pair:
            continue
        key, _, value = pair.partition(b"=")
        params.setdefault(unquote_to_bytes(key.replace(b"+", b" ")).decode("latin-1"),
                          unquote_to_bytes(value.replace(b"+", b" ")))

    info_hash = params.get("info_hash", b"")
    peer_id = params.get("peer_id", b"")
    if len(info_hash) != 20:
        raise AnnounceError(f"info_hash must be 20 bytes, got {len(info_hash)}")
    if len(peer_id) != 20:
        raise AnnounceError(f"peer_id must be 20 bytes, got {len(peer_id)}")

    port = _int_param(params, "port", None)
    if port is None or not 1 <= port <= 65535:
        raise AnnounceError("port must be an integer from 1 to 65535")

    event = params.get("event", b"").decode("latin-1")
    if event not in EVENTS:
        raise AnnounceError(f"unknown event {event!r}")

    numwant = _int_param(params, "numwant", DEFAULT_NUMWANT)
    address = ipaddress.ip_address(remote_addr)
    if address.version == 6 and address.ipv4_mapped is not None:
        address = address.ipv4_mapped

    return Announce(
        info_hash=info_hash,
        peer_id=peer_id,
        ip=str(address),
        port=port,
        left=max(0, _int_param(params, "left", 0)),
        event=event,
        numwant=min(max(numwant, 0), MAX_NUMWANT),
    )


def _int_param(params, name, default):
    raw = params.get(name)
    if raw is None or raw == b"":
        if default is None:
            return None
        return default

    try:
        return int(raw.decode("ascii"))
    except (UnicodeDecodeError, ValueError):
        raise AnnounceError(f"{name} must be an integer, got {raw!r}") from None


def failure_reply(reason):
    return bencode({"failure reason": reason})


def compact_reply(peers, interval):
    """Return a bencoded reply listing ``peers`` as (ip, port) pairs.

    IPv4 peers go into ``peers`` and IPv6 peers into ``peers6`` (BEP 7),
    6 and 18 bytes each.
    """
    v4 = []
    v6 = []
    for ip, port in peers:
        address = ipaddress.ip_address(ip)
        target = v4 if address.version == 4 else v6
        target.append(address.packed + struct.pack(">H", port))

    reply = {"interval": interval, "min interval": max(1, interval // 2), "peers": b"".join(v4)}
    if v6:
        reply["peers6"] = b"".join(v6)

    return bencode(reply)


class PeerTable:
    """Peers per infohash, each forgotten ``ttl`` seconds after its last announce."""

    def __init__(self, ttl, clock=time.monotonic):
        self.ttl = ttl
        self._clock = clock
        self._lock = threading.Lock()
        self._swarms = {}

    def announce(self, request):
        """Record an announce and return up to numwant other peers as (ip, port).

        Seeds (left == 0) get only leechers back, because seeds have
        nothing to download.
        """
        now = self._clock()
        with self._lock:
            swarm = self._swarms.setdefault(request.info_hash, {})
            self._expire(swarm, now)
            if request.event == "stopped":
                swarm.pop(request.peer_id, None)
            else:
                swarm[request.peer_id] = (request.ip, request.port, request.left, now)

            candidates = [
                (ip, port) for peer_id, (ip, port, left, _) in swarm.items()
                if peer_id != request.peer_id and (request.left > 0 or left > 0)
            ]
            if not swarm:
                del self._swarms[request.info_hash]

        random.shuffle(candidates)

        return candidates[:request.numwant]

    def swarm_sizes(self):
        """Return {hex infohash: live peer count}."""
        now = self._clock()
        with self._lock:
            for key in list(self._swarms):
                self._expire(self._swarms[key], now)
                if not self._swarms[key]:
                    del self._swarms[key]
            return {key.hex(): len(swarm) for key, swarm in self._swarms.items()}

    def _expire(self, swarm, now):
        stale = [peer_id for peer_id, entry in swarm.items() if now - entry[3] > self.ttl]
        for peer_id in stale:
            del swarm[peer_id]
