"""Real clients through registry-p2p: dockerd, ctr (containerd) and aria2c."""

import hashlib
import subprocess
import time

import pytest

from registry_p2p.sandbox.containerd import ctr_image_names, ctr_pull, write_hosts_toml
from registry_p2p.sandbox.dockerd import Dockerd
from registry_p2p.sandbox.image import push_image
from registry_p2p.sandbox.netns import NetworkNamespace
from registry_p2p.sandbox.p2p import AgentService, SidecarService
from registry_p2p.sandbox.process import free_port, require_binary
from registry_p2p.sandbox.registry import Registry

pytestmark = pytest.mark.integration

REPOSITORY = "clients/app"


def _p2p_layers(agent, image):
    """Return the digests of the image's layers that the agent got over BitTorrent."""
    blobs = agent.stats()["blobs"]
    return {layer.digest for layer in image.layers
            if blobs.get(layer.digest.split(":", 1)[1], {}).get("source") == "p2p"}


def _big_layers(image):
    return {layer.digest for layer in image.layers if layer.size >= 1024 * 1024}


def test_docker_pull_through_agent_proxy(tmp_path, small_image):
    with NetworkNamespace() as namespace:
        registry = Registry(tmp_path / "registry", host=namespace.ns_address,
                            netns=namespace.name).start()
        services = []
        try:
            reference = f"{registry.hostport}/{REPOSITORY}:v1"
            push_image(small_image, reference)
            sidecar = SidecarService(tmp_path / "sidecar", registry.url, registry.root_directory)
            services.append(sidecar.start())
            agent = AgentService(tmp_path / "agent", [
                {"name": registry.hostport, "url": registry.url, "sidecars": [sidecar.url]}])
            services.append(agent.start())

            with Dockerd(tmp_path / "dockerd", insecure_registries=[registry.hostport],
                         http_proxy=agent.url) as dockerd:
                result = dockerd.pull(reference)
                images = dockerd.docker("image", "ls", "--format",
                                        "{{.Repository}}:{{.Tag}}").stdout

            assert result.returncode == 0, result.stderr
            assert f"{registry.hostport}/{REPOSITORY}:v1" in images.split()
            assert _p2p_layers(agent, small_image) == _big_layers(small_image), agent.stats()
        finally:
            for service in services:
                service.stop()
            registry.stop()


def test_ctr_pull_through_agent_mirror(make_stack, small_image, tmp_path):
    stack = make_stack(agent_count=1)
    reference = f"{stack.registry.hostport}/{REPOSITORY}:v1"
    push_image(small_image, reference)
    agent = stack.agents[0]
    hosts_dir = tmp_path / "hosts"
    write_hosts_toml(hosts_dir, stack.registry.hostport, agent.url)

    with Dockerd(tmp_path / "dockerd") as dockerd:
        result = ctr_pull(dockerd.containerd_address, reference, hosts_dir)
        names = ctr_image_names(dockerd.containerd_address)

    assert result.returncode == 0, result.stderr
    assert reference in names
    assert _p2p_layers(agent, small_image) == _big_layers(small_image), agent.stats()


def test_aria2_downloads_with_sidecar_torrent(make_stack, small_image, http, tmp_path):
    aria2c = require_binary("aria2c", "aria2")
    stack = make_stack(agent_count=0)
    push_image(small_image, f"{stack.registry.hostport}/{REPOSITORY}:v1")
    layer = max(small_image.layers, key=lambda item: item.size)
    response = http.get(f"{stack.sidecar.url}/p2p/v1/{REPOSITORY}/blobs/{layer.digest}/torrent")
    assert response.status_code == 200
    torrent_file = tmp_path / "layer.torrent"
    torrent_file.write_bytes(response.content)

    download_dir = tmp_path / "aria2"
    result = subprocess.run(
        [aria2c, f"--dir={download_dir}", "--seed-time=0", "--enable-dht=false",
         "--enable-dht6=false", "--bt-enable-lpd=false", "--enable-peer-exchange=false",
         f"--listen-port={free_port()}", "--console-log-level=warn", "--summary-interval=0",
         "--bt-stop-timeout=60", str(torrent_file)],
        capture_output=True, text=True, timeout=180, check=False)

    assert result.returncode == 0, result.stdout + result.stderr
    hex_digest = layer.digest.split(":", 1)[1]
    downloaded = (download_dir / hex_digest).read_bytes()
    assert hashlib.sha256(downloaded).hexdigest() == hex_digest
    # The seeder refreshes its byte counters twice a second.
    deadline = time.monotonic() + 5
    while stack.sidecar.stats()["uploaded_bytes"] < layer.size and time.monotonic() < deadline:
        time.sleep(0.2)
    assert stack.sidecar.stats()["uploaded_bytes"] >= layer.size
