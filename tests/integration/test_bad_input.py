"""Bad requests, hostile configurations and failures, against real components.

Each case checks the response the client gets and that no cache keeps a
partial or unverified file.
"""

import hashlib
import json
import multiprocessing
import socket
import ssl
import threading
from multiprocessing.connection import Client

import pytest
import requests

from registry_p2p.sandbox.image import push_image
from registry_p2p.sandbox.process import free_port
from registry_p2p.sandbox.pull import pull_image
from registry_p2p.sidecar import ipc

pytestmark = pytest.mark.integration

REPOSITORY = "bad/input"
UNKNOWN_DIGEST = "sha256:" + "ab" * 32


def _error_codes(response):
    return [error["code"] for error in json.loads(response.content)["errors"]]


def _leftovers(cache_dir):
    """Return temporary files and blob files that do not hash to their names."""
    found = [path for path in (cache_dir / "tmp").iterdir()]
    for data in (cache_dir / "blobs").glob("*/*"):
        if not data.suffix and hashlib.sha256(data.read_bytes()).hexdigest() != data.name:
            found.append(data)
    return found


class CountingListener:
    """A TCP listener that counts the connections it accepts."""

    def __init__(self):
        self.port = free_port()
        self.accepted = 0
        self._socket = socket.create_server(("127.0.0.1", self.port))
        self._socket.settimeout(0.2)
        self._running = True
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self):
        while self._running:
            try:
                conn, _ = self._socket.accept()
            except OSError:
                continue
            self.accepted += 1
            conn.close()

    def close(self):
        self._running = False
        self._thread.join()
        self._socket.close()


@pytest.fixture
def stack(make_stack, small_image):
    stack = make_stack(agent_count=1)
    push_image(small_image, f"{stack.registry.hostport}/{REPOSITORY}:v1")
    return stack


def test_unknown_blob_returns_registry_body(stack, http):
    agent = stack.agents[0]
    through_agent = http.get(f"{agent.url}/v2/{REPOSITORY}/blobs/{UNKNOWN_DIGEST}")
    direct = http.get(f"{stack.registry.url}/v2/{REPOSITORY}/blobs/{UNKNOWN_DIGEST}")

    assert through_agent.status_code == 404
    assert through_agent.content == direct.content
    assert _error_codes(through_agent) == ["BLOB_UNKNOWN"]
    assert _leftovers(agent.cache_dir) == []


@pytest.mark.parametrize("digest", [
    "sha256:xyz",
    "sha256:" + "AB" * 32,
    "sha256:" + "a" * 63,
    "md5:" + "a" * 32,
    "sha256:" + "a" * 64 + "%0A",
])
def test_malformed_digest_is_digest_invalid(stack, http, digest):
    agent = stack.agents[0]
    through_agent = http.get(f"{agent.url}/v2/{REPOSITORY}/blobs/{digest}")
    metainfo = http.get(f"{stack.sidecar.url}/p2p/v1/{REPOSITORY}/blobs/{digest}/torrent")

    assert through_agent.status_code == 400
    assert _error_codes(through_agent) == ["DIGEST_INVALID"]
    assert metainfo.status_code == 400
    assert _error_codes(metainfo) == ["DIGEST_INVALID"]


def test_invalid_repository_is_name_invalid(stack, http):
    response = http.get(f"{stack.sidecar.url}/p2p/v1/Bad..Name/blobs/{UNKNOWN_DIGEST}/torrent")

    assert response.status_code == 400
    assert _error_codes(response) == ["NAME_INVALID"]


def test_unknown_blob_metainfo_is_blob_unknown(stack, http):
    response = http.get(f"{stack.sidecar.url}/p2p/v1/{REPOSITORY}/blobs/{UNKNOWN_DIGEST}/torrent")

    assert response.status_code == 404
    assert _error_codes(response) == ["BLOB_UNKNOWN"]
    assert _leftovers(stack.sidecar.cache_dir) == []


def test_registry_outside_allowlist_is_denied(stack, http):
    agent = stack.agents[0]
    listener = CountingListener()
    try:
        by_ns = http.get(f"{agent.url}/v2/{REPOSITORY}/manifests/v1",
                         params={"ns": f"127.0.0.1:{listener.port}"})
        with socket.create_connection(("127.0.0.1", agent.port)) as conn:
            conn.sendall(f"GET http://127.0.0.1:{listener.port}/v2/ HTTP/1.1\r\n"
                         f"Host: 127.0.0.1:{listener.port}\r\nConnection: close\r\n\r\n".encode())
            proxied = conn.makefile("rb").read()
        with socket.create_connection(("127.0.0.1", agent.port)) as conn:
            conn.sendall(f"CONNECT 127.0.0.1:{listener.port} HTTP/1.1\r\n"
                         f"Host: 127.0.0.1:{listener.port}\r\n\r\n".encode())
            tunnel = conn.recv(4096)
    finally:
        listener.close()

    assert by_ns.status_code == 403
    assert _error_codes(by_ns) == ["DENIED"]
    assert proxied.startswith(b"HTTP/1.1 403")
    assert b'"DENIED"' in proxied
    assert tunnel.startswith(b"HTTP/1.1 403")
    assert listener.accepted == 0


def test_unreachable_sidecar_falls_back(make_stack, small_image):
    stack = make_stack(agent_count=1, sidecar_urls=[f"http://127.0.0.1:{free_port()}"])
    push_image(small_image, f"{stack.registry.hostport}/{REPOSITORY}:v1")
    agent = stack.agents[0]

    result = pull_image(agent.url, stack.registry.hostport, REPOSITORY, "v1")

    assert result.complete
    stats = agent.stats()
    big_layers = [layer for layer in small_image.layers if layer.size >= 1024 * 1024]
    assert stats["totals"]["fallbacks"] == len(big_layers)
    assert stats["totals"]["from_registry"] >= sum(layer.size for layer in big_layers)
    log_text = agent.process.log_path.read_text()
    for layer in big_layers:
        assert f"P2P fetch of {layer.digest} in {REPOSITORY} failed" in log_text
    assert _leftovers(agent.cache_dir) == []


def test_corrupt_storage_blob_never_completes(stack, small_image, http):
    agent = stack.agents[0]
    layer = max(small_image.layers, key=lambda item: item.size)
    data_path = stack.registry.blob_path(layer.digest)
    with open(data_path, "r+b") as blob:
        blob.seek(layer.size // 2)
        blob.write(b"\0" * 4096)

    received = 0
    sha256 = hashlib.sha256()
    try:
        with http.get(f"{agent.url}/v2/{REPOSITORY}/blobs/{layer.digest}", stream=True,
                      timeout=60) as response:
            for chunk in response.iter_content(65536):
                received += len(chunk)
                sha256.update(chunk)
    except requests.RequestException:
        pass

    assert received < layer.size
    assert "sha256:" + sha256.hexdigest() != layer.digest
    hex_digest = layer.digest.split(":", 1)[1]
    assert not (stack.sidecar.cache_dir / "blobs" / hex_digest[:2] / hex_digest).exists()
    assert not (agent.cache_dir / "blobs" / hex_digest[:2] / hex_digest).exists()
    assert _leftovers(stack.sidecar.cache_dir) == []
    assert _leftovers(agent.cache_dir) == []


def test_credentials_checked_for_every_blob(make_stack, small_image, http):
    stack = make_stack(agent_count=1, registry_users={"alice": "wonderland"})
    push_image(small_image, f"{stack.registry.hostport}/{REPOSITORY}:v1",
               creds="alice:wonderland")
    agent = stack.agents[0]
    layer = max(small_image.layers, key=lambda item: item.size)
    blob_url = f"{agent.url}/v2/{REPOSITORY}/blobs/{layer.digest}"
    metainfo_url = f"{stack.sidecar.url}/p2p/v1/{REPOSITORY}/blobs/{layer.digest}/torrent"

    anonymous = http.get(blob_url)
    wrong = http.get(blob_url, auth=("alice", "queen-of-hearts"))
    metainfo_anonymous = http.get(metainfo_url)
    allowed = pull_image(agent.url, stack.registry.hostport, REPOSITORY, "v1",
                         auth=("alice", "wonderland"))
    anonymous_after_cache = http.get(blob_url)

    assert anonymous.status_code == 401
    assert "WWW-Authenticate" in anonymous.headers
    assert wrong.status_code == 401
    assert metainfo_anonymous.status_code == 401
    assert allowed.complete
    blob_stats = agent.stats()["blobs"][layer.digest.split(":", 1)[1]]
    assert blob_stats["source"] == "p2p", blob_stats
    assert anonymous_after_cache.status_code == 401
    assert layer.size > len(anonymous_after_cache.content)


def test_unsatisfiable_range_is_registry_416(stack, small_image, http):
    agent = stack.agents[0]
    layer = max(small_image.layers, key=lambda item: item.size)
    path = f"/v2/{REPOSITORY}/blobs/{layer.digest}"
    full = http.get(agent.url + path)
    past_end = {"Range": f"bytes={layer.size + 10}-"}

    through_agent = http.get(agent.url + path, headers=past_end)
    direct = http.get(stack.registry.url + path, headers=past_end)
    first_byte = http.get(agent.url + path, headers={"Range": "bytes=0-0"})

    assert full.status_code == 200
    assert through_agent.status_code == 416
    assert through_agent.headers["Content-Range"] == f"bytes */{layer.size}"
    assert through_agent.content == direct.content
    assert first_byte.status_code == 206
    assert first_byte.content == full.content[:1]


def test_tracker_rejects_unknown_torrent(stack, http):
    query = ("info_hash=" + "%AB" * 20 + "&peer_id=" + "-XX0000-" + "a" * 12
             + "&port=6881&left=10&compact=1")
    response = http.get(f"{stack.sidecar.url}/announce?{query}")

    assert response.status_code == 200
    assert response.content.startswith(b"d14:failure reason")
    assert b"unknown torrent" in response.content


def test_proxy_request_for_agent_endpoint_denied(stack):
    agent = stack.agents[0]
    with socket.create_connection(("127.0.0.1", agent.port)) as conn:
        conn.sendall(f"GET http://127.0.0.1:{agent.port}/healthz HTTP/1.1\r\n"
                     f"Host: 127.0.0.1:{agent.port}\r\nConnection: close\r\n\r\n".encode())
        reply = conn.makefile("rb").read()

    assert reply.startswith(b"HTTP/1.1 403")


def test_push_through_sidecar(make_stack, small_image):
    stack = make_stack(agent_count=1)
    sidecar_host = f"127.0.0.1:{stack.sidecar.port}"

    push_image(small_image, f"{sidecar_host}/{REPOSITORY}:pushed")
    result = pull_image(stack.agents[0].url, stack.registry.hostport, REPOSITORY, "pushed")

    assert result.complete


def test_tls_handshake_closed_at_once(make_stack, http):
    """A TLS ClientHello on the plain HTTP port ends in a closed connection, not a wait.

    containers/image clients try HTTPS first on an insecure mirror and fall
    back to plain HTTP only once that attempt fails.
    """
    stack = make_stack(agent_count=1)
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE

    for service in (stack.agents[0], stack.sidecar):
        # The timeout is far above the time a close takes; with a server
        # that waits for the request line, the handshake runs into it.
        with socket.create_connection(("127.0.0.1", service.port), timeout=60) as conn:
            with pytest.raises(OSError) as caught:
                context.wrap_socket(conn, server_hostname="127.0.0.1")
        assert not isinstance(caught.value, TimeoutError), service.url
        assert http.get(f"{service.url}/healthz").status_code == 200, service.url


def test_seeder_survives_client_without_key(stack, small_image, http):
    """A process without the seeder's key is refused, and the seeder keeps serving the workers."""
    socket_path = str(stack.sidecar.cache_dir / ipc.SOCKET_NAME)

    for _ in range(3):
        with pytest.raises(multiprocessing.AuthenticationError):
            Client(socket_path, family="AF_UNIX", authkey=b"not the key")

    assert http.get(f"{stack.sidecar.url}/healthz").status_code == 200
    result = pull_image(stack.agents[0].url, stack.registry.hostport, REPOSITORY, "v1")
    assert result.complete
    assert "rejected a connection" in (stack.sidecar.workdir / "sidecar.log").read_text()


def test_empty_blob_is_not_torrented(stack, http):
    """A 0-byte blob gets a clear 400 from the sidecar, stays out of its cache, and cannot brick a restart."""
    empty = hashlib.sha256(b"").hexdigest()
    upload = http.post(f"{stack.registry.url}/v2/{REPOSITORY}/blobs/uploads/", timeout=10)
    location = upload.headers["Location"]
    separator = "&" if "?" in location else "?"
    pushed = http.put(f"{location}{separator}digest=sha256:{empty}", data=b"", timeout=10)
    assert pushed.status_code == 201

    response = http.get(f"{stack.sidecar.url}/p2p/v1/{REPOSITORY}/blobs/sha256:{empty}/torrent",
                        timeout=30)

    assert response.status_code == 400
    assert response.json()["errors"][0]["code"] == "UNSUPPORTED"
    assert not list((stack.sidecar.cache_dir / "blobs").rglob(f"{empty}*"))
    stack.sidecar.stop()
    stack.sidecar.start()
    assert http.get(f"{stack.sidecar.url}/healthz").status_code == 200
