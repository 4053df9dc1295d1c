"""Docker Engine pulls through the agent as its HTTPS proxy, which intercepts TLS for configured registries."""

import socket
import subprocess
import sys
import threading

import pytest

from registry_p2p.sandbox.dockerd import Dockerd
from registry_p2p.sandbox.image import push_image
from registry_p2p.sandbox.netns import NetworkNamespace
from registry_p2p.sandbox.p2p import AgentService, SidecarService
from registry_p2p.sandbox.process import clean_environment, free_port
from registry_p2p.sandbox.registry import Registry
from registry_p2p.sandbox.tls import docker_registry_ca, make_server_certificate

pytestmark = pytest.mark.integration

REPOSITORY = "tls/app"
BIG_LAYER = 1024 * 1024


def _create_agent_ca(directory):
    """Run `registry-p2p agent ca` and return its output."""
    result = subprocess.run([sys.executable, "-m", "registry_p2p", "agent", "ca", "--dir",
                             str(directory)], capture_output=True, text=True, check=False,
                            env=clean_environment())
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_docker_pull_through_tls_interception(tmp_path, small_image):
    ca_dir = tmp_path / "agent-ca"
    with NetworkNamespace() as namespace:
        tls = make_server_certificate(tmp_path / "registry-tls", namespace.ns_address)
        registry = Registry(tmp_path / "registry", host=namespace.ns_address,
                            netns=namespace.name, tls=tls).start()
        services = []
        try:
            reference = f"{registry.hostport}/{REPOSITORY}:1"
            push_image(small_image, reference, tls_verify=False)
            sidecar = SidecarService(tmp_path / "sidecar", registry.url, registry.root_directory,
                                     registry_ca_bundle=str(tls.ca_path))
            services.append(sidecar.start())
            ca_output = _create_agent_ca(ca_dir)
            agent = AgentService(tmp_path / "agent", [
                {"name": registry.hostport, "url": registry.url, "sidecars": [sidecar.url],
                 "ca_bundle": str(tls.ca_path)}], proxy={"ca_dir": str(ca_dir)})
            services.append(agent.start())

            with docker_registry_ca(registry.hostport, ca_dir / "ca.crt"), \
                    Dockerd(tmp_path / "dockerd", http_proxy=agent.url) as dockerd:
                result = dockerd.pull(reference)
                images = dockerd.docker("image", "ls", "--format",
                                        "{{.Repository}}:{{.Tag}}").stdout.split()
                inspected = dockerd.docker("image", "inspect", "--format",
                                           "{{.Id}} {{range .RepoDigests}}{{.}} {{end}}",
                                           reference)
            blobs = agent.stats()["blobs"]
            registry_blob_gets = [entry["uri"] for entry in registry.blob_requests()
                                  if entry["method"] == "GET" and entry["status"] == 200]
        finally:
            for service in services:
                service.stop()
            registry.stop()

    assert str(ca_dir / "ca.key") in ca_output
    assert result.returncode == 0, result.stderr
    assert reference in images
    assert inspected.stdout.split() == [small_image.config_digest,
                         f"{registry.hostport}/{REPOSITORY}@{small_image.manifest_digest}"], \
        inspected.stderr

    big_layers = [layer for layer in small_image.layers if layer.size >= BIG_LAYER]
    assert big_layers
    for layer in big_layers:
        entry = blobs.get(layer.digest.split(":", 1)[1], {})
        assert entry.get("source") == "p2p", blobs
        # libtorrent 2.1 may count the last blocks per peer after the
        # download finished, so the per-peer sum can trail the size.
        assert entry["from_sidecars"] + entry["from_peers"] > 0, blobs
        assert entry.get("from_registry", 0) == 0, blobs
        assert not any(uri.endswith(layer.digest) for uri in registry_blob_gets)

    agent_log = agent.process.log_path.read_text()
    assert f"intercepting CONNECT {registry.hostport} from 127.0.0.1:" in agent_log


class EchoListener:
    """A TCP listener on ``host`` that counts the connections it accepts and echoes their bytes."""

    def __init__(self, host="127.0.0.1"):
        self.accepted = 0
        self._socket = socket.create_server((host, 0))
        self.port = self._socket.getsockname()[1]
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
            with conn:
                conn.settimeout(10)
                while data := conn.recv(4096):
                    conn.sendall(data)

    def close(self):
        self._running = False
        self._thread.join()
        self._socket.close()


def _agent_with_unreachable_registry(tmp_path, **proxy):
    """Start an agent whose only registry (https, with TLS interception) is never contacted."""
    registry_port = free_port()
    ca_dir = tmp_path / "agent-ca"
    _create_agent_ca(ca_dir)
    agent = AgentService(tmp_path / "agent", [
        {"name": f"127.0.0.1:{registry_port}", "url": f"https://127.0.0.1:{registry_port}"}],
        proxy={"ca_dir": str(ca_dir), **proxy})

    return agent.start()


def _send_connect(agent, target):
    conn = socket.create_connection(("127.0.0.1", agent.port), timeout=10)
    conn.sendall(f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n".encode())
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = conn.recv(1)
        if not chunk:
            break
        head += chunk

    return conn, head


def test_connect_to_other_host_is_rejected(tmp_path):
    listener = EchoListener()
    agent = _agent_with_unreachable_registry(tmp_path)
    try:
        conn, head = _send_connect(agent, f"127.0.0.1:{listener.port}")
        with conn:
            conn.settimeout(10)
            body = conn.recv(4096)
    finally:
        agent.stop()
        listener.close()

    assert head.startswith(b"HTTP/1.1 403 ")
    assert b'"DENIED"' in body
    assert listener.accepted == 0
    agent_log = agent.process.log_path.read_text()
    assert f"rejected CONNECT 127.0.0.1:{listener.port} from 127.0.0.1:" in agent_log


def test_connect_to_other_host_is_tunnelled_when_configured(tmp_path):
    payload = b"\x16\x03\x01 bytes the agent must not touch\r\n\r\n" * 100
    # A tunnel never leads to loopback, so the listener is on the root
    # namespace's end of a veth link, an ordinary address of this host.
    with NetworkNamespace() as namespace:
        listener = EchoListener(namespace.host_address)
        target = f"{namespace.host_address}:{listener.port}"
        agent = _agent_with_unreachable_registry(tmp_path, other_hosts="tunnel")
        try:
            conn, head = _send_connect(agent, target)
            with conn:
                conn.sendall(payload)
                echoed = b""
                while len(echoed) < len(payload):
                    chunk = conn.recv(65536)
                    if not chunk:
                        break
                    echoed += chunk
        finally:
            agent.stop()
            listener.close()

    assert head == b"HTTP/1.1 200 Connection established\r\n\r\n"
    assert echoed == payload
    assert listener.accepted == 1
    agent_log = agent.process.log_path.read_text()
    assert f"tunnelling CONNECT {target} from 127.0.0.1:" in agent_log
