"""Three agents pull a 230 MB image from a real docker-registry over BitTorrent."""

import hashlib
import os
import subprocess
import time

import pytest

from registry_p2p.sandbox.image import push_image
from registry_p2p.sandbox.p2p import AgentService
from registry_p2p.sandbox.pull import pull_on_every_agent

pytestmark = pytest.mark.integration

REPOSITORY = "p2p/app"
PYPI_PYTHON_VARIABLE = "REGISTRY_P2P_PYPI_PYTHON"
# The registry logs a request only after the response is written.
LOG_SETTLE_SECONDS = 2.0


def _cache_files_are_verified(cache_dir):
    """Return the cached blob files whose bytes do not hash to their names."""
    bad = []
    for data in (cache_dir / "blobs").glob("*/*"):
        if data.suffix:
            continue
        if hashlib.sha256(data.read_bytes()).hexdigest() != data.name:
            bad.append(data)
    return bad


def test_three_agents_share_layers(make_stack, big_image):
    stack = make_stack(agent_count=3)
    push_image(big_image, f"{stack.registry.hostport}/{REPOSITORY}:v1")
    pushed_bytes = stack.registry.blob_bytes_sent()

    results = pull_on_every_agent(stack.agents, stack.registry.hostport, REPOSITORY, "v1")

    for agent in stack.agents:
        result = results[agent.url]
        assert result.manifest_status == 200
        for blob in result.blobs:
            assert blob.verified, f"{agent.url} {blob}"

    time.sleep(LOG_SETTLE_SECONDS)
    registry_requests = stack.registry.blob_requests()
    agent_stats = [agent.stats() for agent in stack.agents]
    for layer in big_image.layers:
        hex_digest = layer.digest.split(":", 1)[1]
        for stats in agent_stats:
            assert stats["blobs"][hex_digest]["source"] == "p2p", stats["blobs"][hex_digest]
        from_registry = sum(int(entry["written"]) for entry in registry_requests
                            if entry["method"] == "GET" and layer.digest in entry["uri"])
        from_sidecar = sum(stats["blobs"][hex_digest]["from_sidecars"] for stats in agent_stats)
        from_peers = sum(stats["blobs"][hex_digest]["from_peers"] for stats in agent_stats)

        print(f"{layer.digest}: {layer.size} bytes, registry {from_registry}, "
              f"sidecar {from_sidecar}, peers {from_peers}")
        assert from_registry + from_sidecar <= 2 * layer.size, layer.digest
        assert from_registry + from_sidecar + from_peers >= 3 * layer.size, layer.digest
        assert from_peers >= layer.size, layer.digest

    sidecar_stats = stack.sidecar.stats()
    layer_bytes = sum(layer.size for layer in big_image.layers)
    assert sidecar_stats["uploaded_bytes"] <= 2 * layer_bytes
    assert sidecar_stats["storage_read_bytes"] == layer_bytes
    assert pushed_bytes == 0

    for agent in stack.agents:
        assert _cache_files_are_verified(agent.cache_dir) == []
        assert list((agent.cache_dir / "tmp").iterdir()) == []
    assert _cache_files_are_verified(stack.sidecar.cache_dir) == []
    assert list((stack.sidecar.cache_dir / "tmp").iterdir()) == []


def test_mixed_libtorrent_versions_share(make_stack, small_image, tmp_path):
    """An agent on PyPI's libraries and one on Debian's share a swarm with the sidecar."""
    pypi_python = os.environ.get(PYPI_PYTHON_VARIABLE)
    assert pypi_python, (f"{PYPI_PYTHON_VARIABLE} must name a python with PyPI's libtorrent, "
                         f"flask and gunicorn; ./bootstrap test sets it")
    stack = make_stack(agent_count=1)
    push_image(small_image, f"{stack.registry.hostport}/{REPOSITORY}:v1")
    entry = {"name": stack.registry.hostport, "url": stack.registry.url,
             "sidecars": [stack.sidecar.url]}
    pypi_agent = AgentService(tmp_path / "pypi-agent", [entry], python=pypi_python)
    stack.agents.append(pypi_agent)
    pypi_agent.start()
    pypi_version = subprocess.run(
        [pypi_python, "-c", "import libtorrent; print(libtorrent.__version__)"],
        capture_output=True, text=True, check=True).stdout.strip()

    results = pull_on_every_agent(stack.agents, stack.registry.hostport, REPOSITORY, "v1")

    assert not pypi_version.startswith("2.0."), pypi_version
    for agent in stack.agents:
        assert results[agent.url].complete, results[agent.url]

    # NOTE: a libtorrent 2.1.1 agent sometimes stops one piece short of a
    # blob in this swarm (about one run in five) and falls back to the
    # registry after the stall timeout. So the test requires BitTorrent for
    # all big layers but one.
    big_layers = [layer for layer in small_image.layers if layer.size >= 1024 * 1024]
    for stats in [agent.stats() for agent in stack.agents]:
        sources = [stats["blobs"][layer.digest.split(":", 1)[1]]["source"]
                   for layer in big_layers]
        assert sources.count("p2p") >= len(big_layers) - 1, stats["blobs"]
