"""The WSGI middleware that serves GET /announce in front of the sidecar's Flask app."""

import json

from werkzeug.test import Client

from registry_p2p.errors import P2PError
from registry_p2p.sidecar.announce import AnnounceEndpoint

QUERY = "info_hash=%00%ffA%2B%26%3D%25z" + "%80" * 12 + "&peer_id=-LT2080-abcdefghijkl&port=6881"


class RecordingSeeder:
    """Records the requests it gets and returns ``reply``, or raises ``error``."""

    def __init__(self, reply=b"d8:intervali30e5:peers0:e", error=None):
        self.reply = reply
        self.error = error
        self.calls = []

    def call(self, op, **arguments):
        self.calls.append((op, arguments))
        if self.error is not None:
            raise self.error
        return self.reply


def inner_app(environ, start_response):
    start_response("299 Inner", [("Content-Type", "text/plain")])
    return [f"{environ['REQUEST_METHOD']} {environ['PATH_INFO']}".encode()]


def client(seeder):
    return Client(AnnounceEndpoint(inner_app, seeder))


def test_announce_raw_query_to_seeder():
    seeder = RecordingSeeder()

    response = client(seeder).get(f"/announce?{QUERY}", environ_base={"REMOTE_ADDR": "127.0.0.9"})

    assert seeder.calls == [("announce", {"query": QUERY, "remote_addr": "127.0.0.9"})]
    assert response.status_code == 200
    assert response.data == b"d8:intervali30e5:peers0:e"


def test_announce_headers():
    response = client(RecordingSeeder()).get(f"/announce?{QUERY}")

    assert response.headers["Content-Type"] == "text/plain; charset=utf-8"
    assert response.headers["Content-Length"] == str(len(b"d8:intervali30e5:peers0:e"))
    assert response.headers["X-Request-Id"]


def test_announce_keeps_incoming_request_id():
    response = client(RecordingSeeder()).get(f"/announce?{QUERY}",
                                             headers={"X-Request-Id": "abc123"})

    assert response.headers["X-Request-Id"] == "abc123"


def test_announce_head_has_no_body():
    response = client(RecordingSeeder()).head(f"/announce?{QUERY}")

    assert response.status_code == 200
    assert response.data == b""
    assert response.headers["Content-Length"] == str(len(b"d8:intervali30e5:peers0:e"))


def test_announce_seeder_down_is_503():
    seeder = RecordingSeeder(error=P2PError("seeder process unreachable"))

    response = client(seeder).get(f"/announce?{QUERY}", headers={"X-Request-Id": "down1"})

    assert response.status_code == 503
    assert json.loads(response.data)["errors"][0]["code"] == "UNAVAILABLE"
    assert response.headers["X-Request-Id"] == "down1"


def test_other_paths_pass_through():
    seeder = RecordingSeeder()

    response = client(seeder).get("/announce/extra")

    assert response.status_code == 299
    assert response.data == b"GET /announce/extra"
    assert seeder.calls == []


def test_other_methods_pass_through():
    seeder = RecordingSeeder()

    response = client(seeder).post(f"/announce?{QUERY}")

    assert response.status_code == 299
    assert response.data == b"POST /announce"
    assert seeder.calls == []
