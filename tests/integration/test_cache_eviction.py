"""Cache limits and full cache file systems, with a real registry, sidecar and agent.

The least recently used blob is evicted when a new layer would go over
cache_max_size, and a blob that a client is being served stays. A layer
that does not fit on the agent's or the sidecar's cache file system still
reaches the client.
"""

import hashlib
import os
import socket
import subprocess
import urllib.request

import pytest

from registry_p2p.sandbox.image import RandomLayer, build_image, push_image
from registry_p2p.sandbox.p2p import AgentService, SidecarService
from registry_p2p.sandbox.pull import pull_image

pytestmark = pytest.mark.integration

PYPI_PYTHON_VARIABLE = "REGISTRY_P2P_PYPI_PYTHON"
LAYER_BYTES = 8 * 1024 * 1024
# A client that does not read keeps a cached blob's response open only when
# the blob is larger than what the sockets buffer (net.ipv4.tcp_wmem's
# maximum, 4 MiB by default, plus this receive buffer).
HELD_RECEIVE_BUFFER = 32 * 1024


def corrupt_bytes(result):
    """Return the bytes of blobs that arrived complete (200) but with the wrong digest."""
    return sum(blob.received for blob in result.blobs
               if blob.status == 200 and blob.sha256 != blob.digest)


def cached_paths(agent, digest):
    """Return the data and .info paths of a blob in the agent's cache."""
    hex_digest = digest.split(":", 1)[1]
    directory = agent.cache_dir / "blobs" / hex_digest[:2]
    return directory / hex_digest, directory / f"{hex_digest}.info"


def is_cached(agent, digest):
    data, info = cached_paths(agent, digest)
    return data.exists() and info.exists()


def metric(agent, name):
    with urllib.request.urlopen(f"{agent.url}/metrics", timeout=10) as response:
        for line in response.read().decode().splitlines():
            if line.startswith(name + " "):
                return float(line.split()[1])
    raise AssertionError(f"{name} not in the agent's /metrics")


class HeldBlobGet:
    """A blob GET whose client reads the headers, then stops reading until ``finish``."""

    def __init__(self, agent, registry_name, repository, digest):
        self.digest = digest
        self.conn = socket.socket()
        self.conn.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, HELD_RECEIVE_BUFFER)
        self.conn.settimeout(60)
        self.conn.connect(("127.0.0.1", agent.port))
        self.conn.sendall(f"GET /v2/{repository}/blobs/{digest}?ns={registry_name} HTTP/1.1\r\n"
                          f"Host: 127.0.0.1\r\nConnection: close\r\n\r\n".encode())
        self.received = b""
        while b"\r\n\r\n" not in self.received:
            chunk = self.conn.recv(4096)
            assert chunk, "the agent closed the connection before the headers"
            self.received += chunk
        head, _, self.body = self.received.partition(b"\r\n\r\n")
        self.status_line = head.split(b"\r\n", 1)[0].decode()

    def finish(self):
        """Read the rest of the body; return its sha256 digest and length."""
        while chunk := self.conn.recv(1024 * 1024):
            self.body += chunk
        self.conn.close()
        return "sha256:" + hashlib.sha256(self.body).hexdigest(), len(self.body)


@pytest.mark.reliability("Cache quota: least recently used blobs evicted", "fault")
def test_cache_quota_evicts_least_recently_used(make_stack, tmp_path, reliability):
    images = {name: build_image(tmp_path / f"image-{name}", [RandomLayer(LAYER_BYTES, seed=seed)])
              for name, seed in (("a", 31), ("b", 32), ("c", 33))}
    sizes = [image.layers[0].size for image in images.values()]
    # Any two layers fit, all three do not.
    quota = sum(sizes) - min(sizes) // 2
    stack = make_stack(agent_count=1,
                       agent_options={"cache_max_size": quota, "cache_min_free_bytes": 0})
    agent = stack.agents[0]
    registry_name = stack.registry.hostport
    for name, image in images.items():
        push_image(image, f"{registry_name}/quota/{name}:v1")
    layer = {name: image.layers[0].digest for name, image in images.items()}

    def pull(name, evicting):
        result = pull_image(agent.url, registry_name, f"quota/{name}", "v1")
        reliability.add(completed=result.complete, corrupt_bytes=corrupt_bytes(result),
                        recover_seconds=result.seconds if evicting else None)
        assert result.complete, result
        assert corrupt_bytes(result) == 0

    # a and b fill the cache, then a is served again, so b is the least
    # recently used (a cache that evicts the oldest download would pick a).
    pull("a", evicting=False)
    pull("b", evicting=False)
    assert sorted(agent.stats()["torrents"]) == sorted([layer["a"], layer["b"]])
    pull("a", evicting=False)
    pull("c", evicting=True)

    stats = agent.stats()
    assert not cached_paths(agent, layer["b"])[0].exists()
    assert not cached_paths(agent, layer["b"])[1].exists()
    assert layer["b"] not in stats["torrents"]
    assert is_cached(agent, layer["a"])
    assert is_cached(agent, layer["c"])
    assert layer["c"] in stats["torrents"]
    assert stats["cache_evictions"] == 1
    assert stats["cache_bytes"] <= quota

    # a is now the least recently used, but a client is being served from
    # it: pulling b again must evict c instead.
    held = HeldBlobGet(agent, registry_name, "quota/a", layer["a"])
    assert held.status_line.endswith("200 OK"), held.status_line
    pull("b", evicting=True)
    assert is_cached(agent, layer["a"])
    assert not cached_paths(agent, layer["c"])[0].exists()
    assert layer["c"] not in agent.stats()["torrents"]
    assert held.finish() == (layer["a"], images["a"].layers[0].size)

    log_text = agent.process.log_path.read_text()
    for evicted in ("b", "c"):
        hex_digest = layer[evicted].split(":", 1)[1]
        line = f"evicted blob sha256:{hex_digest} ({images[evicted].layers[0].size} bytes"
        assert line in log_text
    assert metric(agent, "registry_p2p_cache_evictions_total") == 2

    # Every image still pulls correctly, from the cache or again over BitTorrent.
    for name in ("c", "a", "b"):
        pull(name, evicting=True)
    assert agent.stats()["cache_bytes"] <= quota
    assert agent.process.running


def check_agent_disk_full(make_stack, tmp_path, record_pull, python=None):
    """Pull a layer larger than the agent's tmpfs cache twice, then one that fits.

    ``record_pull(result)`` is called for each pull of the large layer.
    ``python`` runs the agent, this interpreter by default.
    """
    tmpfs_bytes = 6 * 1024 * 1024
    big = build_image(tmp_path / "image-big", [RandomLayer(10 * 1024 * 1024, seed=41)])
    small = build_image(tmp_path / "image-small", [RandomLayer(2 * 1024 * 1024, seed=42)])
    assert big.layers[0].size > tmpfs_bytes
    stack = make_stack(agent_count=0)
    registry_name = stack.registry.hostport
    push_image(big, f"{registry_name}/full/big:v1")
    push_image(small, f"{registry_name}/full/small:v1")
    entry = {"name": registry_name, "url": stack.registry.url, "sidecars": [stack.sidecar.url]}

    # The limit is above the file system's size and the free-space check is
    # off, so the download runs until a write fails with ENOSPC.
    agent = AgentService(tmp_path / "agent", [entry], python=python,
                         cache_max_size=1024 * 1024 * 1024, cache_min_free_bytes=0)
    agent.cache_dir.mkdir(parents=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={tmpfs_bytes}", "tmpfs",
                    str(agent.cache_dir)], check=True)
    try:
        agent.start()
        layer = big.layers[0].digest
        for attempt in range(2):
            result = pull_image(agent.url, registry_name, "full/big", "v1")
            record_pull(result)
            assert result.complete, (attempt, result)
            assert corrupt_bytes(result) == 0
            assert agent.process.running

            data, info = cached_paths(agent, layer)
            assert not data.exists(), attempt
            assert not info.exists(), attempt
            assert list((agent.cache_dir / "tmp").iterdir()) == [], attempt
            stats = agent.stats()
            assert layer not in stats["torrents"], attempt
            assert stats["fallback_reasons"]["cache_full"] == attempt + 1

        log_text = agent.process.log_path.read_text()
        assert "No space left on device" in log_text
        assert "the cache's file system is full" in log_text

        # The failed downloads left the space free: a layer that fits is cached.
        result = pull_image(agent.url, registry_name, "full/small", "v1")
        assert result.complete, result
        assert is_cached(agent, small.layers[0].digest)
        assert small.layers[0].digest in agent.stats()["torrents"]
    finally:
        agent.stop()
        subprocess.run(["umount", str(agent.cache_dir)], check=True)


@pytest.mark.reliability("Agent cache disk full", "fault")
def test_agent_disk_full_serves_layer(make_stack, tmp_path, reliability):
    def record_pull(result):
        reliability.add(completed=result.complete, corrupt_bytes=corrupt_bytes(result),
                        recover_seconds=result.seconds)

    check_agent_disk_full(make_stack, tmp_path, record_pull)


def test_agent_disk_full_pypi_libtorrent(make_stack, tmp_path):
    """Run the disk-full check with the agent on PyPI's libtorrent instead of Debian's."""
    pypi_python = os.environ.get(PYPI_PYTHON_VARIABLE)
    assert pypi_python, (f"{PYPI_PYTHON_VARIABLE} must name a python with PyPI's libtorrent, "
                         f"flask and gunicorn; ./bootstrap test sets it")

    check_agent_disk_full(make_stack, tmp_path, lambda result: None, python=pypi_python)


def test_blob_over_free_space_not_downloaded(make_stack, tmp_path):
    tmpfs_bytes = 6 * 1024 * 1024
    big = build_image(tmp_path / "image-big", [RandomLayer(10 * 1024 * 1024, seed=43)])
    stack = make_stack(agent_count=0)
    registry_name = stack.registry.hostport
    push_image(big, f"{registry_name}/floor/big:v1")
    entry = {"name": registry_name, "url": stack.registry.url, "sidecars": [stack.sidecar.url]}

    agent = AgentService(tmp_path / "agent", [entry], cache_max_size=1024 * 1024 * 1024,
                         cache_min_free_bytes=1024 * 1024)
    agent.cache_dir.mkdir(parents=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={tmpfs_bytes}", "tmpfs",
                    str(agent.cache_dir)], check=True)
    try:
        agent.start()
        result = pull_image(agent.url, registry_name, "floor/big", "v1")

        assert result.complete, result
        hex_digest = big.layers[0].digest.split(":", 1)[1]
        log_text = agent.process.log_path.read_text()
        assert f"not caching blob sha256:{hex_digest}" in log_text
        assert "No space left on device" not in log_text
        assert agent.stats()["fallback_reasons"]["cache_full"] == 1
        assert not cached_paths(agent, big.layers[0].digest)[0].exists()
    finally:
        agent.stop()
        subprocess.run(["umount", str(agent.cache_dir)], check=True)


def test_sidecar_cache_quota_evicts(make_stack, tmp_path):
    images = {name: build_image(tmp_path / f"image-{name}", [RandomLayer(LAYER_BYTES, seed=seed)])
              for name, seed in (("a", 51), ("b", 52), ("c", 53))}
    sizes = [image.layers[0].size for image in images.values()]
    quota = sum(sizes) - min(sizes) // 2
    stack = make_stack(agent_count=2,
                       sidecar_options={"cache_max_size": quota, "cache_min_free_bytes": 0})
    registry_name = stack.registry.hostport
    for name, image in images.items():
        push_image(image, f"{registry_name}/sidecar-quota/{name}:v1")
    layer = {name: image.layers[0].digest for name, image in images.items()}
    first, second = stack.agents

    for name in ("a", "b", "c"):
        result = pull_image(first.url, registry_name, f"sidecar-quota/{name}", "v1")
        assert result.complete, (name, result)

    stats = stack.sidecar.stats()
    assert stats["cache_evictions"] == 1
    assert stats["seeded_blobs"] == 2
    assert not cached_paths(stack.sidecar, layer["a"])[0].exists()
    assert is_cached(stack.sidecar, layer["b"])
    assert is_cached(stack.sidecar, layer["c"])
    hex_a = layer["a"].split(":", 1)[1]
    assert f"evicted blob sha256:{hex_a}" in stack.sidecar.process.log_path.read_text()

    # Another agent still gets a: the sidecar reads it from storage again
    # and evicts b, now its least recently used blob.
    result = pull_image(second.url, registry_name, "sidecar-quota/a", "v1")
    assert result.complete, result
    assert stack.sidecar.stats()["cache_evictions"] == 2
    assert is_cached(stack.sidecar, layer["a"])
    assert not cached_paths(stack.sidecar, layer["b"])[0].exists()


def test_sidecar_disk_full_falls_back(make_stack, tmp_path):
    tmpfs_bytes = 6 * 1024 * 1024
    big = build_image(tmp_path / "image-big", [RandomLayer(10 * 1024 * 1024, seed=44)])
    stack = make_stack(agent_count=0)
    registry_name = stack.registry.hostport
    push_image(big, f"{registry_name}/sidecar-full/big:v1")

    sidecar = SidecarService(tmp_path / "sidecar", stack.registry.url,
                             stack.registry.root_directory,
                             cache_max_size=1024 * 1024 * 1024, cache_min_free_bytes=0)
    sidecar.cache_dir.mkdir(parents=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={tmpfs_bytes}", "tmpfs",
                    str(sidecar.cache_dir)], check=True)
    entry = {"name": registry_name, "url": stack.registry.url, "sidecars": [sidecar.url]}
    agent = AgentService(tmp_path / "agent", [entry])
    try:
        sidecar.start()
        agent.start()
        result = pull_image(agent.url, registry_name, "sidecar-full/big", "v1")

        assert result.complete, result
        assert agent.stats()["fallback_reasons"]["no_metainfo"] == 1
        assert list((sidecar.cache_dir / "tmp").iterdir()) == []
        assert not cached_paths(sidecar, big.layers[0].digest)[0].exists()
        assert "No space left on device" in sidecar.process.log_path.read_text()
        assert sidecar.process.running
        assert sidecar.stats()["cache_blobs"] == 0
    finally:
        agent.stop()
        sidecar.stop()
        subprocess.run(["umount", str(sidecar.cache_dir)], check=True)
