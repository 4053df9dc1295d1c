"""Announce queries, requests, schedules and response parsing of the tracker load generator."""

import asyncio
import socket
import threading
from urllib.parse import unquote_to_bytes

import pytest

from registry_p2p import tracker
from registry_p2p.bench import announce_load

INFO_HASH = b"\x00\xffA+&=%z" + b"\x80" * 12


def query_params(query):
    params = {}
    for pair in query.split("&"):
        key, _, value = pair.partition("=")
        params[key] = unquote_to_bytes(value)
    return params


def test_peer_id_is_20_bytes():
    assert len(announce_load.peer_id(0)) == 20
    assert len(announce_load.peer_id(9999)) == 20


def test_peer_ids_distinct():
    ids = {announce_load.peer_id(index) for index in range(10000)}

    assert len(ids) == 10000


def test_peer_id_not_origin():
    assert not tracker.is_origin(announce_load.peer_id(0))


def test_peer_ports_distinct_and_valid():
    ports = [announce_load.peer_port(index) for index in range(announce_load.max_peers())]

    assert len(set(ports)) == len(ports)
    assert min(ports) >= 1
    assert max(ports) == 65535


@pytest.mark.parametrize("number, expected", [
    (0, ("started", 1000)),
    (1, ("regular", 750)),
    (2, ("regular", 500)),
    (3, ("regular", 250)),
    (4, ("completed", 0)),
    (5, ("regular", 0)),
    (9, ("regular", 0)),
])
def test_announce_state(number, expected):
    assert announce_load.announce_state(1000, number) == expected


def test_query_round_trips_through_tracker_parser():
    peer = announce_load.peer_id(1234)
    query = announce_load.announce_query(INFO_HASH, peer, 11234, 1000, 750, "regular", 50)

    parsed = tracker.parse_announce(query, "127.0.0.1")

    assert parsed.info_hash == INFO_HASH
    assert parsed.peer_id == peer
    assert parsed.port == 11234
    assert parsed.left == 750
    assert parsed.event == ""
    assert parsed.numwant == 50


def test_query_percent_encodes_binary():
    query = announce_load.announce_query(INFO_HASH, announce_load.peer_id(1), 10001, 10, 10,
                                         "started", 50)

    assert query.startswith("info_hash=%00%FFA%2B%26%3D%25z%80")
    assert "+" not in query.split("&")[0]


def test_query_has_libtorrent_parameters():
    query = announce_load.announce_query(INFO_HASH, announce_load.peer_id(1), 10001, 1000, 250,
                                         "completed", 30)
    params = query_params(query)

    assert list(params) == ["info_hash", "peer_id", "port", "uploaded", "downloaded", "left",
                            "corrupt", "key", "event", "numwant", "compact", "no_peer_id"]
    assert params["event"] == b"completed"
    assert params["downloaded"] == b"750"
    assert params["compact"] == b"1"


def test_regular_query_has_no_event():
    query = announce_load.announce_query(INFO_HASH, announce_load.peer_id(1), 10001, 10, 5,
                                         "regular", 50)

    assert "event" not in query_params(query)


def test_query_rejects_short_info_hash():
    with pytest.raises(ValueError, match="20 bytes"):
        announce_load.announce_query(b"short", announce_load.peer_id(1), 1, 1, 1, "started", 1)


def test_announce_request_is_keep_alive_get():
    request = announce_load.announce_request("127.0.0.1", 5050, "a=1")

    assert request.startswith(b"GET /announce?a=1 HTTP/1.1\r\n")
    assert b"\r\nHost: 127.0.0.1:5050\r\n" in request
    assert b"\r\nConnection: keep-alive\r\n" in request
    assert request.endswith(b"\r\n\r\n")


def plan(**overrides):
    values = {
        "host": "127.0.0.1", "port": 5050,
        "info_hashes": [bytes([swarm]) * 20 for swarm in range(3)],
        "lengths": [400, 800, 1200],
        "peers": 12, "requests": 50, "connections": 4, "numwant": 50, "timeout": 5.0,
    }
    values.update(overrides)
    values["info_hashes"] = [value.hex() for value in values["info_hashes"]]
    return values


def parsed_requests(load_plan, connection):
    result = []
    for request, event in announce_load.connection_requests(load_plan, connection):
        target = request.split(b" ")[1]
        result.append((tracker.parse_announce(target.split(b"?", 1)[1], "127.0.0.1"), event))
    return result


def test_schedule_splits_requests_over_connections():
    counts = [len(announce_load.connection_requests(plan(), connection)) for connection in range(4)]

    assert counts == [13, 13, 12, 12]


def test_schedule_every_peer_starts_first():
    load_plan = plan()
    first_announces = {}
    for connection in range(4):
        for announce, event in parsed_requests(load_plan, connection):
            first_announces.setdefault(announce.peer_id, (announce.event, event))

    assert len(first_announces) == 12
    assert set(first_announces.values()) == {("started", "started")}


def test_schedule_peer_swarm_and_length():
    for announce, event in parsed_requests(plan(), 1):
        index = int.from_bytes(announce.peer_id[8:12], "big")
        swarm = index % 3
        assert index % 4 == 1
        assert announce.info_hash == bytes([swarm]) * 20
        assert announce.port == announce_load.FIRST_PORT + index
        if event == "started":
            assert announce.left == [400, 800, 1200][swarm]


def test_schedule_rejects_connection_without_peers():
    with pytest.raises(ValueError, match="no peers"):
        announce_load.connection_requests(plan(peers=3), 3)


def test_parse_response_complete():
    data = bytearray(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nServer: x\r\n\r\nhelloHTTP/1.1")

    status, body, rest = announce_load.parse_response(data)

    assert status == 200
    assert body == b"hello"
    assert rest == b"HTTP/1.1"


def test_parse_response_incomplete_body():
    assert announce_load.parse_response(bytearray(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhel")) is None


def test_parse_response_incomplete_headers():
    assert announce_load.parse_response(bytearray(b"HTTP/1.1 200 OK\r\nContent-Len")) is None


def test_parse_response_without_length():
    with pytest.raises(ValueError, match="without Content-Length"):
        announce_load.parse_response(bytearray(b"HTTP/1.1 200 OK\r\nServer: x\r\n\r\n"))


def test_check_reply_counts_peers():
    reply = tracker.compact_reply([("127.0.0.1", 1), ("127.0.0.2", 2)], 30)

    assert announce_load.check_reply(200, reply) == (None, 2)


def test_check_reply_failure_reason():
    error, peers = announce_load.check_reply(200, tracker.failure_reply("unknown torrent"))

    assert error.startswith("failure reason: ")
    assert "unknown torrent" in error
    assert peers == 0


def test_check_reply_http_error():
    assert announce_load.check_reply(503, b"{}") == ("HTTP 503", 0)


class TinyTracker:
    """An HTTP server on 127.0.0.1 that replies to requests with ``reply``.

    After ``close_after`` replies on a connection, it reads one more request
    and closes the connection without replying.
    """

    def __init__(self, reply, close_after):
        self.reply = reply
        self.close_after = close_after
        self.connections = 0
        self._socket = socket.create_server(("127.0.0.1", 0))
        self.port = self._socket.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                conn, _ = self._socket.accept()
            except OSError:
                return
            self.connections += 1
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn):
        with conn:
            buffer = b""
            for replies in range(self.close_after + 1):
                while b"\r\n\r\n" not in buffer:
                    data = conn.recv(65536)
                    if not data:
                        return
                    buffer += data
                buffer = buffer.split(b"\r\n\r\n", 1)[1]
                if replies == self.close_after:
                    return
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s"
                             % (len(self.reply), self.reply))

    def close(self):
        self._socket.close()


def work_for(port, count):
    request = announce_load.announce_request("127.0.0.1", port, "a=1")
    return [[(request, "regular")] * count]


def test_send_announces_keeps_connection():
    server = TinyTracker(tracker.compact_reply([("127.0.0.1", 1)], 30), close_after=100)

    results = asyncio.run(announce_load.send_announces("127.0.0.1", server.port,
                                                       work_for(server.port, 10), 5.0))
    server.close()

    assert len(results.latencies_us) == 10
    assert results.errors == {}
    assert results.peers_returned == 10
    assert server.connections == 1


def test_send_announces_counts_closed_connection():
    server = TinyTracker(tracker.compact_reply([], 30), close_after=3)

    results = asyncio.run(announce_load.send_announces("127.0.0.1", server.port,
                                                       work_for(server.port, 7), 5.0))
    server.close()

    # The server closes the connection after reading request 4, which
    # fails; a new connection serves 5 to 7.
    assert len(results.latencies_us) == 6
    assert sum(results.errors.values()) == 1
    assert server.connections == 2


def test_send_announces_counts_failure_reply():
    server = TinyTracker(tracker.failure_reply("unknown torrent"), close_after=100)

    results = asyncio.run(announce_load.send_announces("127.0.0.1", server.port,
                                                       work_for(server.port, 4), 5.0))
    server.close()

    assert results.latencies_us == []
    assert results.errors == {"failure reason": 4}
    assert "unknown torrent" in results.error_samples[0]
