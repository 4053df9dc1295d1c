"""BitTorrent HTTP tracker logic (BEP 3, compact replies per BEP 23).

Pure functions and an in-memory peer table. The sidecar's seeder process
keeps the one table of its host, and its web workers forward announces to
it.
"""

import ipaddress
import logging
import random
import re
import struct
import threading
import time
from dataclasses import dataclass, field
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


_INTEGER_RE = re.compile(rb"-?[0-9]{1,20}")


def _int_param(params, name, default):
    raw = params.get(name)
    if raw is None or raw == b"":
        if default is None:
            return None
        return default

    # int() would also take "6_881", " 6881" or "+6881".
    if _INTEGER_RE.fullmatch(raw) is None:
        raise AnnounceError(f"{name} must be an integer, got {raw!r}")

    return int(raw)


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
    """Peers per infohash, each forgotten ``ttl`` seconds after its last announce.

    Origin seeds (sidecars' seeders, whose peer ids start with
    ORIGIN_PEER_ID_PREFIX) are handed to at most ``origin_fanout`` leechers
    of a swarm at a time, and an origin seed learns only those leechers.
    Every other leecher gets the swarm's other peers, so the blob leaves the
    registry host about ``origin_fanout`` times however many nodes pull it.
    A leecher keeps its origin slot until it completes, stops or expires.
    Once a node has the whole blob, no new leecher gets the origin, except
    one that re-announces without progress.
    """

    def __init__(self, ttl, origin_fanout=1, clock=time.monotonic):
        self.ttl = ttl
        self.origin_fanout = origin_fanout
        self._clock = clock
        self._lock = threading.Lock()
        self._swarms = {}

    def announce(self, request):
        """Record an announce and return up to numwant peers for it as (ip, port)."""
        now = self._clock()
        with self._lock:
            swarm = self._swarms.setdefault(request.info_hash, _Swarm())
            swarm.expire(now, self.ttl)
            previous = swarm.peers.get(request.peer_id)
            stalled = (previous is not None and request.left > 0
                       and request.left == previous.left and request.event == "")
            if request.event == "stopped":
                swarm.remove(request.peer_id)
            else:
                swarm.peers[request.peer_id] = _Peer(request.ip, request.port, request.left, now)
                if request.left == 0:
                    swarm.origin_assigned.discard(request.peer_id)

            if stalled and not is_origin(request.peer_id):
                # No progress since its last announce: its peers cannot
                # serve it (gone, or missing the same pieces), so it gets
                # the origin beyond origin_fanout.
                swarm.origin_assigned.add(request.peer_id)

            if request.event == "stopped":
                peers = []
            elif is_origin(request.peer_id):
                peers = self._leechers_for_origin(swarm)
            else:
                peers = self._peers_for_node(swarm, request)

            if not swarm.peers:
                del self._swarms[request.info_hash]

        return peers[:request.numwant]

    def _leechers_for_origin(self, swarm):
        """Return the leechers assigned to the origin, first filling free slots.

        A leecher that announced before the origin did got no origin. The
        origin's own announce assigns it, so the origin connects to it and
        neither waits for the next announce interval.
        """
        if not swarm.has_node_seed():
            waiting = [peer_id for peer_id, peer in swarm.peers.items()
                       if peer.left > 0 and not is_origin(peer_id)
                       and peer_id not in swarm.origin_assigned]
            free = max(0, self.origin_fanout - len(swarm.origin_assigned))
            swarm.origin_assigned.update(waiting[:free])

        return swarm.assigned_leechers()

    def _peers_for_node(self, swarm, request):
        others = [
            (peer.ip, peer.port) for peer_id, peer in swarm.peers.items()
            if peer_id != request.peer_id and not is_origin(peer_id)
            and (request.left > 0 or peer.left > 0)
        ]
        random.shuffle(others)

        origins = [(peer.ip, peer.port) for peer_id, peer in swarm.peers.items()
                   if is_origin(peer_id)]
        if request.left == 0 or not origins:
            return others

        # A node that already has the whole blob serves it as well as the
        # origin does, so a new leecher gets the origin only while no node
        # has completed. A stalled leecher was assigned in announce().
        assigned = swarm.origin_assigned
        if request.peer_id in assigned or (len(assigned) < self.origin_fanout
                                           and not swarm.has_node_seed()):
            assigned.add(request.peer_id)
            return origins + others

        return others

    def swarm_sizes(self):
        """Return {hex infohash: live peer count}."""
        now = self._clock()
        with self._lock:
            for key in list(self._swarms):
                self._swarms[key].expire(now, self.ttl)
                if not self._swarms[key].peers:
                    del self._swarms[key]
            return {key.hex(): len(swarm.peers) for key, swarm in self._swarms.items()}


ORIGIN_PEER_ID_PREFIX = b"-RS"


def is_origin(peer_id):
    # NOTE: the prefix is self-declared, so any peer that can announce can
    # claim to be an origin; trackers are meant for the registry's private
    # network.
    return peer_id.startswith(ORIGIN_PEER_ID_PREFIX)


@dataclass
class _Peer:
    ip: str
    port: int
    left: int
    last_seen: float


@dataclass
class _Swarm:
    peers: dict = field(default_factory=dict)
    origin_assigned: set = field(default_factory=set)

    def remove(self, peer_id):
        self.peers.pop(peer_id, None)
        self.origin_assigned.discard(peer_id)

    def expire(self, now, ttl):
        stale = [peer_id for peer_id, peer in self.peers.items() if now - peer.last_seen > ttl]
        for peer_id in stale:
            self.remove(peer_id)

    def has_node_seed(self):
        return any(peer.left == 0 and not is_origin(peer_id)
                   for peer_id, peer in self.peers.items())

    def assigned_leechers(self):
        return [(self.peers[peer_id].ip, self.peers[peer_id].port)
                for peer_id in self.origin_assigned if peer_id in self.peers]
