"""Hostile input against a running sidecar and agent: the peer port, the tracker and
request paths. Each case checks the response and that the services still serve a pull."""

import json
import os
import socket
import urllib.parse

import pytest

from registry_p2p import torrent
from registry_p2p.bencode import bdecode
from registry_p2p.sandbox.image import push_image
from registry_p2p.sandbox.pull import MANIFEST_TYPES, pull_image

pytestmark = pytest.mark.integration

REPOSITORY = "hostile/input"
UNKNOWN_DIGEST = "sha256:" + "ab" * 32
HANDSHAKE_HEAD = b"\x13BitTorrent protocol" + bytes(8)


@pytest.fixture
def stack(make_stack, small_image):
    stack = make_stack(agent_count=1)
    push_image(small_image, f"{stack.registry.hostport}/{REPOSITORY}:v1")
    return stack


def _error_codes(body):
    return [error["code"] for error in json.loads(body)["errors"]]


def _raw_request(port, request_line, headers=b"", timeout=10):
    """Send one HTTP request exactly as given and return (status, body) of the reply."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as conn:
        conn.sendall(request_line + b"\r\nHost: 127.0.0.1\r\nConnection: close\r\n"
                     + headers + b"\r\n")
        reply = b""
        while chunk := conn.recv(65536):
            reply += chunk

    head, _, body = reply.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), body


def _pulls(stack):
    agent = stack.agents[0]
    result = pull_image(agent.url, stack.registry.hostport, REPOSITORY, "v1")
    return result.complete and agent.process.running


def _send_and_close(port, payload):
    with socket.create_connection(("127.0.0.1", port), timeout=5) as conn:
        conn.sendall(payload)
        conn.settimeout(2)
        try:
            conn.recv(4096)
        except (TimeoutError, ConnectionError):
            pass


@pytest.mark.reliability("Junk on the BitTorrent peer port", "attack")
@pytest.mark.parametrize("payload", [
    os.urandom(4096),
    HANDSHAKE_HEAD[:11],
    HANDSHAKE_HEAD + bytes(7),
    HANDSHAKE_HEAD + os.urandom(40) + b"\xff\xff\xff\xff\x07",
    b"\x13" + os.urandom(70000),
], ids=["random bytes", "truncated protocol name", "truncated info hash",
        "unknown torrent and huge message", "huge junk after length byte"])
def test_peer_port_junk_survived(stack, payload, reliability):
    for service in (stack.agents[0], stack.sidecar):
        _send_and_close(service.torrent_port, payload)

    pulled = _pulls(stack)
    reliability.add(completed=pulled)

    assert pulled
    assert stack.sidecar.process.running


def _announce(http, sidecar, info_hash, **params):
    query = {"peer_id": "-XX0000-" + "a" * 12, "port": "6881", "left": "10", "compact": "1",
             **params}
    encoded = "info_hash=" + urllib.parse.quote_from_bytes(info_hash) + "&" \
        + urllib.parse.urlencode(query)
    return http.get(f"{sidecar.url}/announce?{encoded}", timeout=10)


def _first_layer(stack, http):
    """Return the digest and size of the image's first layer."""
    manifest = http.get(f"{stack.registry.url}/v2/{REPOSITORY}/manifests/v1",
                        headers={"Accept": MANIFEST_TYPES}, timeout=30).json()
    layer = manifest["layers"][0]
    return layer["digest"], layer["size"]


def _known_info_hash(stack, http):
    """Return the infohash of a layer that the sidecar seeds."""
    digest, _ = _first_layer(stack, http)
    response = http.get(f"{stack.sidecar.url}/p2p/v1/{REPOSITORY}/blobs/{digest}/torrent",
                        timeout=60)
    assert response.status_code == 200
    return bytes.fromhex(torrent.info_hash(bdecode(response.content)[b"info"]))


@pytest.mark.reliability("Malformed tracker announces", "attack")
@pytest.mark.parametrize("params", [
    {"numwant": str(10 ** 12)},
    {"numwant": "-5"},
    {"port": "70000"},
    {"port": "abc"},
    {"event": "explode"},
    {"left": "-1"},
    {"compact": "x", "junk": "\x00" * 50},
    {"ip": "169.254.169.254"},
], ids=["huge numwant", "negative numwant", "port out of range", "port not a number",
        "unknown event", "negative left", "junk parameters", "forged ip"])
def test_malformed_announce_survived(stack, http, params, reliability):
    info_hash = _known_info_hash(stack, http)

    response = _announce(http, stack.sidecar, info_hash, **params)
    pulled = _pulls(stack)
    reliability.add(completed=pulled)

    assert response.status_code == 200
    assert response.content.startswith(b"d")
    assert b"169.254.169.254" not in response.content
    assert pulled


@pytest.mark.parametrize("length", [0, 19, 21, 400])
def test_bad_info_hash_length_rejected(stack, http, length):
    response = _announce(http, stack.sidecar, os.urandom(length))

    assert response.status_code == 200
    assert response.content.startswith(b"d14:failure reason")


@pytest.mark.reliability("Tracker announce of 20 kB", "attack")
def test_oversized_announce_rejected(stack, http, reliability):
    response = _announce(http, stack.sidecar, os.urandom(20), key="k" * 20000)
    pulled = _pulls(stack)
    reliability.add(completed=pulled)

    assert response.status_code in (200, 400, 414)
    assert stack.sidecar.process.running
    assert pulled


@pytest.mark.reliability("Hostile blob paths", "attack")
@pytest.mark.parametrize("path", [
    b"/v2/../../etc/passwd/blobs/" + UNKNOWN_DIGEST.encode(),
    b"/v2/hostile/%2e%2e/%2e%2e/blobs/" + UNKNOWN_DIGEST.encode(),
    b"/v2//etc/passwd/blobs/" + UNKNOWN_DIGEST.encode(),
    b"/v2/hostile%00input/blobs/" + UNKNOWN_DIGEST.encode(),
    b"/v2/hostile/input/blobs/sha256:" + b"a" * 63,
    b"/v2/hostile/input/blobs/sha512:" + b"a" * 128,
    b"/v2/hostile/input/blobs/md5:" + b"a" * 32,
], ids=["dot-dot", "encoded dot-dot", "absolute path", "NUL byte", "short digest",
        "other algorithm", "md5 digest"])
def test_hostile_blob_path_rejected(stack, path, reliability):
    replies = {port: _raw_request(port, b"GET " + path + b" HTTP/1.1")
               for port in (stack.agents[0].port, stack.sidecar.port)}
    pulled = _pulls(stack)
    reliability.add(completed=pulled)

    for port, (status, body) in replies.items():
        assert status in (400, 404), (port, status, body)
        assert set(_error_codes(body)) <= {"NAME_INVALID", "DIGEST_INVALID", "NAME_UNKNOWN",
                                           "BLOB_UNKNOWN"}, body
        assert b"root:" not in body
    assert pulled


@pytest.mark.reliability("Hundreds of ranges in one blob request", "attack")
@pytest.mark.parametrize("ranges", [
    ",".join(f"{start}-{start}" for start in range(0, 1200, 2)),
    ",".join(["0-"] * 600),
], ids=["600 one-byte ranges", "600 whole-blob ranges"])
def test_many_ranges_not_amplified(stack, http, ranges, reliability):
    assert _pulls(stack)
    layer, size = _first_layer(stack, http)

    response = http.get(f"{stack.agents[0].url}/v2/{REPOSITORY}/blobs/{layer}",
                        params={"ns": stack.registry.hostport},
                        headers={"Range": f"bytes={ranges}"}, timeout=30)
    pulled = _pulls(stack)
    reliability.add(completed=pulled)

    assert response.status_code in (200, 206, 416)
    assert len(response.content) <= 2 * size
    assert pulled


MANIFEST_REQUEST = f"GET /v2/{REPOSITORY}/manifests/v1 HTTP/1.1".encode()


@pytest.mark.parametrize("request_line, headers, status", [
    pytest.param(MANIFEST_REQUEST, b"X-Junk: " + b"a" * 100000 + b"\r\n", 431,
                 marks=pytest.mark.reliability("Request header of 100 kB", "attack"),
                 id="long header"),
    pytest.param(MANIFEST_REQUEST, b"".join(b"X-H%d: v\r\n" % index for index in range(500)),
                 431, marks=pytest.mark.reliability("Request with 500 headers", "attack"),
                 id="many headers"),
    pytest.param(b"GET /v2/" + b"a" * 10000 + b"/manifests/v1 HTTP/1.1", b"", 414,
                 marks=pytest.mark.reliability("Request line of 10 kB", "attack"),
                 id="long request line"),
])
def test_oversized_request_rejected(stack, reliability, request_line, headers, status):
    replies = {port: _raw_request(port, request_line, headers=headers)
               for port in (stack.agents[0].port, stack.sidecar.port)}
    pulled = _pulls(stack)
    reliability.add(completed=pulled)

    for port, (got, body) in replies.items():
        assert got == status, (port, got, body)
        assert _error_codes(body) == ["UNSUPPORTED"]
    assert pulled


@pytest.mark.reliability("Malformed request line", "attack")
def test_malformed_request_line_rejected(stack, reliability):
    replies = {port: _raw_request(port, b"GET /v2/?token=secret-in-query HTTP/9.9 junk")
               for port in (stack.agents[0].port, stack.sidecar.port)}
    pulled = _pulls(stack)
    reliability.add(completed=pulled)

    for port, (status, body) in replies.items():
        assert status == 400, (port, status, body)
        assert _error_codes(body) == ["UNSUPPORTED"]
        assert b"secret-in-query" not in body
    for service in (stack.agents[0], stack.sidecar):
        assert "secret-in-query" not in (service.workdir / f"{service.name}.log").read_text()
    assert pulled
