"""BitTorrent HTTP tracker logic (BEP 3, compact replies per BEP 23).

Pure functions and an in-memory peer table. The sidecar's seeder process
keeps the one table of its host, and its web workers forward announces to
it.
"""

import functools
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

    return Announce(
        info_hash=info_hash,
        peer_id=peer_id,
        ip=_peer_address(remote_addr),
        port=port,
        left=max(0, _int_param(params, "left", 0)),
        event=event,
        numwant=min(max(numwant, 0), MAX_NUMWANT),
    )


_INTEGER_RE = re.compile(rb"-?[0-9]{1,20}")

# Peers announce again every interval from the same addresses, and parsing
# an address takes longer than the rest of an announce's parsing. The
# caches are bounded, so a flood of addresses only evicts entries.
ADDRESS_CACHE_SIZE = 65536


@functools.lru_cache(maxsize=ADDRESS_CACHE_SIZE)
def _peer_address(remote_addr):
    """Return ``remote_addr`` in canonical form, an IPv4-mapped IPv6 address as IPv4."""
    address = ipaddress.ip_address(remote_addr)
    if address.version == 6 and address.ipv4_mapped is not None:
        address = address.ipv4_mapped

    return str(address)


@functools.lru_cache(maxsize=ADDRESS_CACHE_SIZE)
def _compact_peer(ip, port):
    """Return (IP version, the 6 or 18 bytes of address and port in a compact reply)."""
    address = ipaddress.ip_address(ip)
    return address.version, address.packed + struct.pack(">H", port)


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
        version, packed = _compact_peer(ip, port)
        (v4 if version == 4 else v6).append(packed)

    reply = {"interval": interval, "min interval": max(1, interval // 2), "peers": b"".join(v4)}
    if v6:
        reply["peers6"] = b"".join(v6)

    return bencode(reply)


class PeerTable:
    """Peers per infohash, each forgotten ``ttl`` seconds after its last announce.

    Origin seeds (sidecars' seeders, whose peer ids start with
    ORIGIN_PEER_ID_PREFIX) are handed to at most ``origin_fanout`` leechers
    of a swarm at a time, and an origin seed learns only those leechers.
    Every other leecher gets other nodes only, so the blob leaves the
    registry host about ``origin_fanout`` times however many nodes pull it.
    Which nodes a node gets depends on ``peer_selection``: its neighbours in
    a chain of the swarm ("chain", see _chain_peers_for_node) or a random
    sample of the swarm ("random").
    A leecher keeps its origin slot until it completes, stops or expires.
    Once a node has the whole blob, no new leecher gets the origin, except
    one that re-announces without progress.
    """

    def __init__(self, ttl, origin_fanout=1, peer_selection="chain", clock=time.monotonic):
        if peer_selection not in PEER_SELECTIONS:
            raise ValueError(f"invalid peer selection {peer_selection!r}; expected one of "
                             f"{', '.join(PEER_SELECTIONS)}")
        self.ttl = ttl
        self.origin_fanout = origin_fanout
        self.peer_selection = peer_selection
        self._clock = clock
        self._lock = threading.Lock()
        self._swarms = {}

    def announce(self, request):
        """Record an announce and return up to numwant peers for it as (ip, port)."""
        now = self._clock()
        origin = is_origin(request.peer_id)
        with self._lock:
            swarm = self._swarms.setdefault(request.info_hash, _Swarm())
            swarm.expire(now, self.ttl)
            previous = swarm.peers.get(request.peer_id)
            stalled = (previous is not None and request.left > 0
                       and request.left == previous.left and request.event == "")
            if request.event == "stopped":
                swarm.remove(request.peer_id)
            else:
                swarm.put(request.peer_id, _Peer((request.ip, request.port), request.left, now,
                                                 origin))
                if request.left == 0:
                    swarm.origin_assigned.discard(request.peer_id)

            if stalled and not origin:
                # No progress since its last announce: its peers cannot
                # serve it (gone, or missing the same pieces), so it gets
                # the origin beyond origin_fanout.
                swarm.origin_assigned.add(request.peer_id)

            if request.event == "stopped":
                peers = []
            elif origin:
                peers = self._leechers_for_origin(swarm)[:request.numwant]
            else:
                peers = self._peers_for_node(swarm, request)

            if not swarm.peers:
                del self._swarms[request.info_hash]

        return peers

    def _leechers_for_origin(self, swarm):
        """Return the leechers assigned to the origin, first filling free slots.

        A leecher that announced before the origin did got no origin. The
        origin's own announce assigns it, so the origin connects to it and
        neither waits for the next announce interval.
        """
        if not swarm.has_node_seed():
            waiting = [peer_id for peer_id, peer in swarm.peers.items()
                       if peer.left > 0 and not peer.origin
                       and peer_id not in swarm.origin_assigned]
            free = max(0, self.origin_fanout - len(swarm.origin_assigned))
            swarm.origin_assigned.update(waiting[:free])

        return swarm.assigned_leechers()

    def _peers_for_node(self, swarm, request):
        """Return up to numwant peers for a node: the origins if it gets them, then other nodes."""
        own_id = request.peer_id
        if self.peer_selection == "chain":
            return self._chain_peers_for_node(swarm, request)

        if request.left > 0:
            others = [peer.address for peer_id, peer in swarm.peers.items()
                      if peer_id != own_id and not peer.origin]
        else:
            # A seed needs only leechers, and is no leecher itself.
            others = [peer.address for peer in swarm.peers.values()
                      if peer.left > 0 and not peer.origin]

        origins = [peer.address for peer in swarm.origins.values()]
        if request.left == 0 or not origins or not self._gets_origin(swarm, own_id):
            origins = []

        # random.sample returns a uniformly random subset in random order,
        # as shuffling all peers and cutting the list would, but it draws
        # only the peers it returns.
        sample_size = min(max(0, request.numwant - len(origins)), len(others))
        sample = random.sample(others, sample_size)

        return (origins + sample)[:request.numwant]

    def _chain_peers_for_node(self, swarm, request):
        """Return a node's neighbours in the swarm's chain, after the origins if it gets them.

        Nodes form a chain in the order of their first announce. A leecher
        gets the CHAIN_UPSTREAM nodes that announced just before it, and a
        seed the CHAIN_UPSTREAM nodes after it. Pieces are then pipelined
        down the chain. Each node downloads from the nodes before it and
        uploads to the nodes after it, so every upload link carries the blob
        about once. With two upstream nodes, a chain survives one of them
        going away. A leecher with no node before it gets the origin.
        """
        own_id = request.peer_id
        # NOTE: this walks the swarm's peers on every announce, so its cost
        # grows with the swarm's size; the random selection does not walk them.
        nodes = [peer_id for peer_id, peer in swarm.peers.items() if not peer.origin]
        # announce() has just put the node into the swarm.
        position = nodes.index(own_id)
        if request.left > 0:
            neighbours = nodes[max(0, position - CHAIN_UPSTREAM):position]
        else:
            neighbours = nodes[position + 1:position + 1 + CHAIN_UPSTREAM]
        peers = [swarm.peers[peer_id].address for peer_id in neighbours]

        if request.left == 0 or not swarm.origins:
            return peers[:request.numwant]

        if not peers or self._gets_origin(swarm, own_id):
            swarm.origin_assigned.add(own_id)
            peers = [peer.address for peer in swarm.origins.values()] + peers

        return peers[:request.numwant]

    def _gets_origin(self, swarm, peer_id):
        """Return whether a leecher gets the origin, assigning it a slot if one is free.

        A node that already has the whole blob serves it as well as the
        origin does, so a new leecher gets the origin only while no node
        has completed. A stalled leecher was assigned in announce().
        """
        assigned = swarm.origin_assigned
        if peer_id in assigned or (len(assigned) < self.origin_fanout
                                   and not swarm.has_node_seed()):
            assigned.add(peer_id)
            return True

        return False

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
PEER_SELECTIONS = ("chain", "random")
# Nodes before a leecher in the chain that the tracker hands it.
CHAIN_UPSTREAM = 2


def is_origin(peer_id):
    # NOTE: the prefix is self-declared, so any peer that can announce can
    # claim to be an origin; trackers are meant for the registry's private
    # network.
    return peer_id.startswith(ORIGIN_PEER_ID_PREFIX)


@dataclass(slots=True)
class _Peer:
    address: tuple
    left: int
    last_seen: float
    origin: bool


@dataclass
class _Swarm:
    """The peers of one infohash.

    ``peers`` is in the order in which peers first announced.
    ``by_last_seen`` contains the same peer ids in the order of their last
    announce, so expiry stops at the first peer that is still fresh
    instead of checking every peer on every announce. ``origins`` contains
    the origin seeds among the peers, and ``node_seed_count`` the number of
    other peers with nothing left to download.
    """

    peers: dict = field(default_factory=dict)
    by_last_seen: dict = field(default_factory=dict)
    origins: dict = field(default_factory=dict)
    node_seed_count: int = 0
    origin_assigned: set = field(default_factory=set)

    def put(self, peer_id, peer):
        """Add or replace a peer; its ``last_seen`` must not be older than any other peer's."""
        self._forget(peer_id)
        self.peers[peer_id] = peer
        self.by_last_seen[peer_id] = None
        if peer.origin:
            self.origins[peer_id] = peer
        elif peer.left == 0:
            self.node_seed_count += 1

    def remove(self, peer_id):
        self._forget(peer_id)
        self.peers.pop(peer_id, None)
        self.origin_assigned.discard(peer_id)

    def _forget(self, peer_id):
        """Drop a peer from the last-seen order, the origins and the seed count, keeping its place in ``peers``."""
        peer = self.peers.get(peer_id)
        if peer is None:
            return
        del self.by_last_seen[peer_id]
        if peer.origin:
            del self.origins[peer_id]
        elif peer.left == 0:
            self.node_seed_count -= 1

    def expire(self, now, ttl):
        stale = []
        for peer_id in self.by_last_seen:
            if now - self.peers[peer_id].last_seen <= ttl:
                break
            stale.append(peer_id)
        for peer_id in stale:
            self.remove(peer_id)

    def has_node_seed(self):
        return self.node_seed_count > 0

    def assigned_leechers(self):
        return [self.peers[peer_id].address
                for peer_id in self.origin_assigned if peer_id in self.peers]
