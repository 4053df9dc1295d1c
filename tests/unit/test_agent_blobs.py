"""Which Range requests the agent serves from a cached blob and which go to the registry,
and how the agent requests a torrent from the other sidecars of a registry."""

import concurrent.futures
import hashlib
import http.server
import threading

import pytest
import requests

from registry_p2p import torrent
from registry_p2p.agent.blobs import BlobService, LeasedFile, call_once, single_range

SIZE = 1000


@pytest.mark.parametrize("header", [
    None,
    "bytes=0-0",
    "bytes=100-199",
    "bytes=990-",
    "bytes=-10",
    "bytes=0-99999",
])
def test_single_range_served_from_cache(header):
    assert single_range(header, SIZE)


@pytest.mark.parametrize("header", [
    "bytes=0-1,5-6",
    "bytes=1000-",
    "bytes=-99999",
    "bytes=-0",
    "bytes=5-2",
    "bytes=abc",
    "items=0-1",
])
def test_other_ranges_go_to_registry(header):
    assert not single_range(header, SIZE)


# Leases of cached blobs


def test_leased_file_releases_once_on_close(tmp_path):
    path = tmp_path / "blob"
    path.write_bytes(b"data")
    releases = []
    blob = LeasedFile(path, lambda: releases.append(1))

    assert blob.read() == b"data"
    blob.close()
    blob.close()

    assert releases == [1]


def test_leased_file_missing_releases_nothing(tmp_path):
    releases = []

    with pytest.raises(FileNotFoundError):
        LeasedFile(tmp_path / "missing", lambda: releases.append(1))

    assert releases == []


def test_call_once_calls_first_time_only():
    calls = []
    call = call_once(calls.append, "released")

    call()
    call()

    assert calls == ["released"]


class _TorrentServer:
    """A loopback HTTP server that responds to every GET with one status and body, like a sidecar's torrent endpoint."""

    def __init__(self, status, body=b""):
        outer = self
        self.requests = 0

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                outer.requests += 1
                self.send_response(status)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


class _AnnounceRecorder:
    """A TorrentSession stand-in that records reannounce() calls."""

    def __init__(self):
        self.reannounced = []

    def reannounce(self, info_hash):
        self.reannounced.append(info_hash)
        future = concurrent.futures.Future()
        future.set_result(None)
        return future


BLOB = b"x" * 3000
HEX_DIGEST = hashlib.sha256(BLOB).hexdigest()
PIECES = hashlib.sha1(BLOB).digest()
INFO_HASH = torrent.info_hash(torrent.build_info(HEX_DIGEST, len(BLOB), PIECES))
CONFIG = {"upstream_timeout": 5.0, "p2p.metainfo_timeout": 5.0, "p2p.stall_timeout": 5.0,
          "p2p.min_blob_size": 0, "p2p.stream": False, "p2p.stream_deadline_bytes": 0,
          "cache_max_size": 1 << 30, "cache_min_free_bytes": 0}


@pytest.fixture
def servers():
    started = []

    def start(status, body=b""):
        server = _TorrentServer(status, body)
        started.append(server)
        return server

    yield start
    for server in started:
        server.close()


def _ask_other_sidecars(urls):
    session = _AnnounceRecorder()
    with requests.Session() as client:
        client.trust_env = False
        service = BlobService(CONFIG, session, cache=None, http=client, upstreams=None)
        service._request_other_torrents("test", urls, "app", f"sha256:{HEX_DIGEST}",
                                        HEX_DIGEST, len(BLOB), None, INFO_HASH)
    return session.reannounced


def test_other_sidecars_asked_then_announce(servers):
    good = torrent.build_metainfo(HEX_DIGEST, len(BLOB), PIECES, ["http://a/announce"])
    failing = servers(503)
    seeding = servers(200, good)

    reannounced = _ask_other_sidecars([failing.url, seeding.url])

    assert failing.requests == 1
    assert seeding.requests == 1
    assert reannounced == [INFO_HASH]


def test_no_announce_without_a_matching_torrent(servers):
    other_pieces = hashlib.sha1(b"y" * 3000).digest()
    other = torrent.build_metainfo(HEX_DIGEST, len(BLOB), other_pieces, ["http://a/announce"])
    mismatched = servers(200, other)
    failing = servers(503)

    assert _ask_other_sidecars([mismatched.url, failing.url]) == []
