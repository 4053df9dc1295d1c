"""A BitTorrent announce load generator, run as a separate process by ``registry-p2p bench tracker``.

Each process keeps some HTTP/1.1 keep-alive connections to one tracker and
sends one announce at a time on each of them, so the concurrency is the
total number of connections. The parent gives every process the same JSON
plan (``--plan``) and the ids of the connections it runs. Connection ``c``
of ``C`` announces for the peers whose index ``p`` has ``p % C == c``,
round after round, until it has sent its share of the requests. Peer ``p``
is in swarm ``p % len(info_hashes)``. Its first announce has
``event=started`` and ``left`` at the blob's length. Each later one has
``left`` smaller by a quarter of the length, and the announce at which
``left`` reaches 0 has ``event=completed``.

The process opens its connections, prints ``ready`` and waits for a line on
standard input before it sends the first request. It then writes its
result (per-request latency and event, errors, its own CPU seconds) as JSON
to ``--result``. Only addresses in 127.0.0.0/8 are accepted as the target.
"""

import argparse
import asyncio
import hashlib
import ipaddress
import json
import logging
import resource
import sys
import time
from urllib.parse import quote_from_bytes

log = logging.getLogger(__name__)

# Azureus-style client prefix. Peer ids starting with "-RS" are origin seeds
# (registry_p2p.tracker.ORIGIN_PEER_ID_PREFIX), which this must not claim.
PEER_ID_PREFIX = b"-RL0001-"
FIRST_PORT = 10000
# ``left`` drops by 1/LEFT_STEPS of the length per announce after the first.
LEFT_STEPS = 4

STARTED = "started"
REGULAR = "regular"
COMPLETED = "completed"
# One letter per request in the result file.
EVENT_CODES = {STARTED: "s", REGULAR: "r", COMPLETED: "c"}

FAILURE_KEY = b"14:failure reason"
PEERS_KEY = b"5:peers"
HEADER_END = b"\r\n\r\n"


def peer_id(index):
    """Return the 20-byte peer id of peer ``index``.

    Bytes 8 to 11 are the index, so ids are distinct. The last 8 come from
    a hash of the index and include bytes that must be percent-encoded.
    """
    return PEER_ID_PREFIX + index.to_bytes(4, "big") + hashlib.sha1(index.to_bytes(4, "big")).digest()[:8]


def peer_port(index):
    return FIRST_PORT + index


def max_peers():
    """Return the number of peers that get distinct ports from FIRST_PORT to 65535."""
    return 65536 - FIRST_PORT


def announce_state(length, number):
    """Return (event, left) of announce ``number`` (counted from 0) of a peer of a blob of ``length`` bytes."""
    left = length * max(0, LEFT_STEPS - number) // LEFT_STEPS
    if number == 0:
        return STARTED, length
    if number == LEFT_STEPS:
        return COMPLETED, left

    return REGULAR, left


def announce_query(info_hash, peer_id_bytes, port, length, left, event, numwant):
    """Return the query string of an announce, with the parameters libtorrent sends, in its order.

    ``info_hash`` and ``peer_id_bytes`` are raw 20-byte strings, percent-encoded here.
    ``event`` is STARTED, REGULAR (no event parameter) or COMPLETED.
    """
    if len(info_hash) != 20 or len(peer_id_bytes) != 20:
        raise ValueError(f"info_hash and peer_id must be 20 bytes, got {len(info_hash)} "
                         f"and {len(peer_id_bytes)}")

    parameters = [
        ("info_hash", quote_from_bytes(info_hash, safe="")),
        ("peer_id", quote_from_bytes(peer_id_bytes, safe="")),
        ("port", port),
        ("uploaded", 0),
        ("downloaded", length - left),
        ("left", left),
        ("corrupt", 0),
        ("key", f"{port:08x}"),
    ]
    if event != REGULAR:
        parameters.append(("event", event))
    parameters += [("numwant", numwant), ("compact", 1), ("no_peer_id", 1)]

    return "&".join(f"{name}={value}" for name, value in parameters)


def announce_request(host, port, query):
    """Return the bytes of a keep-alive HTTP/1.1 GET of /announce with ``query``."""
    return (f"GET /announce?{query} HTTP/1.1\r\n"
            f"Host: {host}:{port}\r\n"
            f"User-Agent: registry-p2p-bench\r\n"
            f"Connection: keep-alive\r\n\r\n").encode("ascii")


def connection_requests(plan, connection):
    """Return the list of (request bytes, event) that connection ``connection`` of the plan sends, in order."""
    connections = plan["connections"]
    peer_count = plan["peers"]
    info_hashes = [bytes.fromhex(value) for value in plan["info_hashes"]]
    lengths = plan["lengths"]
    requests = plan["requests"] // connections + (connection < plan["requests"] % connections)
    peers = range(connection, peer_count, connections)
    if not peers:
        raise ValueError(f"connection {connection} has no peers: {peer_count} peers "
                         f"for {connections} connections")

    result = []
    for sequence in range(requests):
        peer = peers[sequence % len(peers)]
        swarm = peer % len(info_hashes)
        event, left = announce_state(lengths[swarm], sequence // len(peers))
        query = announce_query(info_hashes[swarm], peer_id(peer), peer_port(peer), lengths[swarm],
                               left, event, plan["numwant"])
        result.append((announce_request(plan["host"], plan["port"], query), event))

    return result


def parse_response(buffer):
    """Parse one HTTP response at the start of ``buffer``.

    Returns (status, body, rest of buffer), or None while the response is
    incomplete. Raises ValueError for a response without Content-Length,
    which the tracker always sends.
    """
    header_end = buffer.find(HEADER_END)
    if header_end < 0:
        return None

    head = bytes(buffer[:header_end]).decode("latin-1")
    status_line, *header_lines = head.split("\r\n")
    status = int(status_line.split(" ", 2)[1])
    length = None
    for line in header_lines:
        name, _, value = line.partition(":")
        if name.strip().lower() == "content-length":
            length = int(value)
    if length is None:
        raise ValueError(f"HTTP {status} response without Content-Length: {head!r}")

    body_start = header_end + len(HEADER_END)
    if len(buffer) < body_start + length:
        return None

    return status, bytes(buffer[body_start:body_start + length]), buffer[body_start + length:]


def check_reply(status, body):
    """Return (error or None, number of peers in the compact ``peers`` string) of a tracker reply."""
    if status != 200:
        return f"HTTP {status}", 0
    if FAILURE_KEY in body:
        return f"failure reason: {body[body.index(FAILURE_KEY) + len(FAILURE_KEY):][:80]!r}", 0

    start = body.find(PEERS_KEY)
    if start < 0:
        return "reply without peers", 0
    start += len(PEERS_KEY)
    colon = body.index(b":", start)

    return None, int(body[start:colon]) // 6


class _ResponseReader(asyncio.Protocol):
    """Collects the bytes of one connection and completes ``response`` with each full HTTP response."""

    def __init__(self):
        self.buffer = bytearray()
        self.response = None
        self.transport = None

    def connection_made(self, transport):
        self.transport = transport

    def data_received(self, data):
        self.buffer += data
        if self.response is None or self.response.done():
            return
        try:
            parsed = parse_response(self.buffer)
        except ValueError as exc:
            self.response.set_exception(exc)
            return
        if parsed is not None:
            status, body, self.buffer = parsed
            self.response.set_result((status, body))

    def connection_lost(self, exc):
        if self.response is not None and not self.response.done():
            self.response.set_exception(ConnectionError(f"connection closed: {exc or 'end of file'}"))


class _Results:
    def __init__(self):
        self.latencies_us = []
        self.events = []
        self.peers_returned = 0
        self.errors = {}
        self.error_samples = []

    def error(self, event, message):
        kind = message.split(":", 1)[0]
        self.errors[kind] = self.errors.get(kind, 0) + 1
        if len(self.error_samples) < 5:
            self.error_samples.append(f"{event}: {message}")


async def _open(host, port):
    loop = asyncio.get_running_loop()
    _, reader = await loop.create_connection(_ResponseReader, host, port)
    return reader


async def _run_connection(reader, host, port, requests, timeout, results):
    loop = asyncio.get_running_loop()
    for request, event in requests:
        try:
            if reader is None or reader.transport.is_closing():
                reader = await _open(host, port)
            reader.response = loop.create_future()
            started = time.perf_counter()
            reader.transport.write(request)
            status, body = await asyncio.wait_for(reader.response, timeout)
            latency = time.perf_counter() - started
        except (OSError, ValueError, asyncio.TimeoutError) as exc:
            results.error(event, f"{type(exc).__name__}: {exc}")
            if reader is not None:
                reader.transport.close()
            reader = None
            continue

        error, peers = check_reply(status, body)
        if error is not None:
            results.error(event, error)
            continue
        results.latencies_us.append(round(latency * 1e6))
        results.events.append(EVENT_CODES[event])
        results.peers_returned += peers

    if reader is not None:
        reader.transport.close()


def _cpu_seconds():
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def send_announces(host, port, work, timeout, readers=None):
    """Send each list of (request, event) in ``work`` on its own connection; return the _Results.

    ``readers`` are open connections to use first, one per list; a
    connection that fails is replaced for the next request.
    """
    results = _Results()
    readers = readers or [None] * len(work)
    await asyncio.gather(*(_run_connection(reader, host, port, requests, timeout, results)
                           for reader, requests in zip(readers, work)))

    return results


async def _run(plan, connection_ids):
    host, port = plan["host"], plan["port"]
    if not ipaddress.ip_address(host).is_loopback or ipaddress.ip_address(host).version != 4:
        raise ValueError(f"tracker host {host} is not in 127.0.0.0/8; this generator only "
                         f"sends to loopback")

    work = [connection_requests(plan, connection) for connection in connection_ids]
    readers = [await _open(host, port) for _ in connection_ids]
    print("ready", flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)

    cpu_before = _cpu_seconds()
    started = time.monotonic()
    results = await send_announces(host, port, work, plan["timeout"], readers)
    finished = time.monotonic()

    return {
        "connections": len(connection_ids),
        "requests": sum(len(requests) for requests in work),
        "started_monotonic": started,
        "finished_monotonic": finished,
        "cpu_seconds": round(_cpu_seconds() - cpu_before, 3),
        "latencies_us": results.latencies_us,
        "events": "".join(results.events),
        "peers_returned": results.peers_returned,
        "errors": results.errors,
        "error_samples": results.error_samples,
    }


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m registry_p2p.bench.announce_load",
                                     description="Send BitTorrent announces to a loopback tracker.")
    parser.add_argument("--plan", required=True, help="JSON file of the load plan")
    parser.add_argument("--connections", required=True,
                        help="comma-separated ids of the plan's connections that this process runs")
    parser.add_argument("--result", required=True, help="JSON file to write the result to")
    args = parser.parse_args(argv)

    with open(args.plan) as plan_file:
        plan = json.load(plan_file)
    connection_ids = [int(value) for value in args.connections.split(",")]

    result = asyncio.run(_run(plan, connection_ids))
    with open(args.result, "w") as result_file:
        json.dump(result, result_file)

    return 0


if __name__ == "__main__":
    sys.exit(main())
