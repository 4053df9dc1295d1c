"""The agent streams a blob to its clients while the BitTorrent download runs.

Each test starts a docker-registry, a sidecar and one agent. Where the
order of events matters, the sidecar's seeder has an upload rate limit, so
the download takes seconds and the clients read while it runs.
"""

import hashlib
import socket
import threading
import time

import pytest

from registry_p2p.sandbox.image import RandomLayer, build_image, push_image

pytestmark = pytest.mark.integration

REPOSITORY = "stream/app"
CHUNK = 1024 * 1024
# About 5 s for the 40 MiB layer, 10 s in the stall test.
RATE_LIMIT = 8 * 1000 * 1000
SLOW_RATE_LIMIT = 4 * 1000 * 1000
# Headers that the agent sends as the registry does.
BLOB_HEADERS = ("Content-Length", "Content-Type", "Docker-Content-Digest", "ETag",
                "Accept-Ranges", "Cache-Control", "Docker-Distribution-Api-Version")
# Only for waits on events that must happen; no assertion depends on it.
WAIT_SECONDS = 60


@pytest.fixture(scope="module")
def stream_image(tmp_path_factory):
    return build_image(tmp_path_factory.mktemp("stream-image"),
                       [RandomLayer(40 * 1024 * 1024, seed=21)])


def _layer(image):
    layer = image.layers[0]
    return layer, layer.digest.split(":", 1)[1]


def _start(make_stack, image, sidecar_options=None, **agent_options):
    agent_options.setdefault("stream", True)
    stack = make_stack(agent_count=1, sidecar_options=sidecar_options,
                       agent_options=agent_options)
    push_image(image, f"{stack.registry.hostport}/{REPOSITORY}:v1")
    return stack


def _blob_url(service, digest):
    return f"{service.url}/v2/{REPOSITORY}/blobs/{digest}"


class BodyReader:
    """Read a blob response in a thread; ``first_chunk`` is set once the first bytes arrived."""

    def __init__(self, http, url):
        self.http = http
        self.url = url
        self.status = None
        self.received = 0
        self.sha256 = hashlib.sha256()
        self.error = None
        self.first_chunk = threading.Event()
        self._thread = threading.Thread(target=self._read, daemon=True)

    def start(self):
        self._thread.start()
        return self

    def join(self):
        self._thread.join(WAIT_SECONDS * 2)
        assert not self._thread.is_alive(), f"GET {self.url} did not finish"

    def _read(self):
        try:
            with self.http.get(self.url, stream=True, timeout=WAIT_SECONDS) as response:
                self.status = response.status_code
                for chunk in response.iter_content(CHUNK):
                    self.sha256.update(chunk)
                    self.received += len(chunk)
                    self.first_chunk.set()
        except Exception as exc:  # noqa: BLE001 - the test asserts on it
            self.error = exc
        finally:
            self.first_chunk.set()


def _read_part_and_close(agent, digest, byte_count):
    """Send a blob GET on a plain socket, read ``byte_count`` bytes of the response and close it."""
    with socket.create_connection(("127.0.0.1", agent.port), timeout=WAIT_SECONDS) as conn:
        conn.sendall(f"GET /v2/{REPOSITORY}/blobs/{digest} HTTP/1.1\r\n"
                     f"Host: 127.0.0.1:{agent.port}\r\n\r\n".encode())
        received = b""
        while len(received) < byte_count:
            data = conn.recv(CHUNK)
            if not data:
                break
            received += data

    return received


def _wait_for(condition, what):
    deadline = time.monotonic() + WAIT_SECONDS
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


def _cache_state(cache_dir, hex_digest):
    """Return ("cached", verified) or ("absent", leftover paths) for one blob in a cache."""
    data = cache_dir / "blobs" / hex_digest[:2] / hex_digest
    info = data.with_name(f"{hex_digest}.info")
    if info.exists():
        return "cached", hashlib.sha256(data.read_bytes()).hexdigest() == hex_digest

    return "absent", [path for path in (data, info) if path.exists()]


@pytest.mark.parametrize("stream", [True, False])
def test_blob_matches_registry(make_stack, stream_image, http, stream):
    stack = _start(make_stack, stream_image, stream=stream)
    layer, hex_digest = _layer(stream_image)
    agent = stack.agents[0]

    through_agent = http.get(_blob_url(agent, layer.digest), timeout=WAIT_SECONDS)
    direct = http.get(_blob_url(stack.registry, layer.digest), timeout=WAIT_SECONDS)

    assert through_agent.status_code == 200
    assert hashlib.sha256(through_agent.content).hexdigest() == hex_digest
    assert through_agent.content == direct.content
    for name in BLOB_HEADERS:
        assert through_agent.headers.get(name) == direct.headers.get(name), name
    entry = agent.stats()["blobs"][hex_digest]
    assert entry["source"] == "p2p", entry
    assert ("first_byte_seconds" in entry) == stream, entry
    assert _cache_state(agent.cache_dir, hex_digest) == ("cached", True)


def test_first_byte_before_download_done(make_stack, stream_image, http):
    stack = _start(make_stack, stream_image, sidecar_options={"upload_rate_limit": RATE_LIMIT})
    layer, hex_digest = _layer(stream_image)
    agent = stack.agents[0]

    with http.get(_blob_url(agent, layer.digest), stream=True, timeout=WAIT_SECONDS) as response:
        chunks = response.iter_content(CHUNK)
        sha256 = hashlib.sha256(next(chunks))
        at_first_byte = agent.stats()["blobs"][hex_digest]
        for chunk in chunks:
            sha256.update(chunk)

    assert response.status_code == 200
    assert sha256.hexdigest() == hex_digest
    # "source" is recorded once the download is verified and cached.
    assert "source" not in at_first_byte, at_first_byte
    assert "first_byte_seconds" in at_first_byte, at_first_byte
    done = agent.stats()["blobs"][hex_digest]
    assert done["source"] == "p2p", done
    assert done["first_byte_seconds"] < done["seconds"], done


def test_two_clients_share_one_download(make_stack, stream_image, http):
    stack = _start(make_stack, stream_image, sidecar_options={"upload_rate_limit": RATE_LIMIT})
    layer, hex_digest = _layer(stream_image)
    agent = stack.agents[0]
    url = _blob_url(agent, layer.digest)

    first = BodyReader(http, url).start()
    assert first.first_chunk.wait(WAIT_SECONDS)
    second = BodyReader(http, url).start()
    first.join()
    second.join()

    for reader in (first, second):
        assert reader.error is None, reader.error
        assert reader.status == 200
        assert reader.received == layer.size
        assert reader.sha256.hexdigest() == hex_digest
    log_text = agent.process.log_path.read_text()
    assert log_text.count(f"fetched {layer.digest}") == 1
    assert stack.sidecar.stats()["uploaded_bytes"] < 2 * layer.size
    assert _cache_state(agent.cache_dir, hex_digest) == ("cached", True)
    _wait_for(lambda: agent.stats()["stream_readers"] == 0, "streams to end")


def test_disconnect_keeps_other_client(make_stack, stream_image, http):
    stack = _start(make_stack, stream_image, sidecar_options={"upload_rate_limit": RATE_LIMIT})
    layer, hex_digest = _layer(stream_image)
    agent = stack.agents[0]

    other = BodyReader(http, _blob_url(agent, layer.digest)).start()
    assert other.first_chunk.wait(WAIT_SECONDS)
    partial = _read_part_and_close(agent, layer.digest, CHUNK)
    mid_download = agent.stats()["blobs"][hex_digest]
    other.join()

    assert partial.startswith(b"HTTP/1.1 200")
    assert len(partial) >= CHUNK
    assert "source" not in mid_download, mid_download
    assert other.error is None, other.error
    assert other.received == layer.size
    assert other.sha256.hexdigest() == hex_digest
    assert agent.stats()["blobs"][hex_digest]["source"] == "p2p"
    assert _cache_state(agent.cache_dir, hex_digest) == ("cached", True)
    _wait_for(lambda: agent.stats()["stream_readers"] == 0, "streams to end")


def test_only_client_disconnects(make_stack, stream_image):
    stack = _start(make_stack, stream_image, sidecar_options={"upload_rate_limit": RATE_LIMIT})
    layer, hex_digest = _layer(stream_image)
    agent = stack.agents[0]

    partial = _read_part_and_close(agent, layer.digest, CHUNK)
    _wait_for(lambda: agent.stats()["stream_readers"] == 0, "the stream to end")
    _wait_for(lambda: "source" in agent.stats()["blobs"][hex_digest], "the download to end")

    assert partial.startswith(b"HTTP/1.1 200")
    assert agent.stats()["blobs"][hex_digest]["source"] == "p2p"
    assert _cache_state(agent.cache_dir, hex_digest) == ("cached", True)


def test_stall_completes_from_registry(make_stack, stream_image, http):
    # Deadlines on the whole layer make the pieces arrive in order, so the
    # download is far from complete when the client has its first pieces.
    stack = _start(make_stack, stream_image,
                   sidecar_options={"upload_rate_limit": SLOW_RATE_LIMIT}, stall_timeout=4,
                   stream_deadline_bytes=64 * CHUNK)
    layer, hex_digest = _layer(stream_image)
    agent = stack.agents[0]

    with http.get(_blob_url(agent, layer.digest), stream=True, timeout=WAIT_SECONDS) as response:
        chunks = response.iter_content(CHUNK)
        sha256 = hashlib.sha256()
        received = 0
        while received < 2 * CHUNK:
            chunk = next(chunks)
            sha256.update(chunk)
            received += len(chunk)
        # The only seeder goes away, so the download stalls.
        stack.sidecar.stop()
        for chunk in chunks:
            sha256.update(chunk)
            received += len(chunk)

    assert response.status_code == 200
    assert received == layer.size
    assert sha256.hexdigest() == hex_digest
    entry = agent.stats()["blobs"][hex_digest]
    assert entry["fallbacks"] == 1, entry
    assert entry["source"] == "fallback", entry
    assert "no download progress" in entry["fallback_reason"], entry
    assert 0 < entry["from_registry"] <= layer.size - 2 * CHUNK, entry

    def registry_gets():
        return [request for request in stack.registry.blob_requests()
                if request["method"] == "GET" and layer.digest in request["uri"]]

    # The registry logs a request once its response is written.
    _wait_for(registry_gets, "the registry's log line")
    assert [request["status"] for request in registry_gets()] == [206]
    assert _cache_state(agent.cache_dir, hex_digest) == ("absent", [])
