"""Proxy, ?ns= and CONNECT requests that name metadata, loopback or unlisted hosts.

The agent runs in a network namespace of the test where 169.254.169.254
and fd00:ec2::254 are addresses of the namespace's own loopback. A
counting listener on port 80 of those addresses, of loopback and of the
namespace's link address counts every connection the agent opens, and no
request can leave for a real metadata service.
"""

import json
import socket
import time
from urllib.parse import quote

import pytest

from registry_p2p.sandbox.image import push_image
from registry_p2p.sandbox.listener import CountingListener
from registry_p2p.sandbox.netns import NetworkNamespace
from registry_p2p.sandbox.p2p import AgentService
from registry_p2p.sandbox.pull import pull_image
from registry_p2p.sandbox.registry import Registry

pytestmark = pytest.mark.integration

REPOSITORY = "proxy/targets"
METADATA_V4 = "169.254.169.254"
METADATA_V6 = "fd00:ec2::254"
LISTENER_PORT = 80


@pytest.fixture
def namespace():
    with NetworkNamespace() as namespace:
        namespace.run(["ip", "addr", "add", f"{METADATA_V4}/32", "dev", "lo"])
        namespace.run(["ip", "-6", "addr", "add", f"{METADATA_V6}/128", "dev", "lo"])
        yield namespace


@pytest.fixture
def listener(tmp_path, namespace):
    addresses = [METADATA_V4, METADATA_V6, "127.0.0.1", namespace.ns_address]
    with CountingListener(tmp_path / "listener", addresses, LISTENER_PORT,
                          netns=namespace.name) as listener:
        yield listener


@pytest.fixture
def registry(tmp_path, namespace, small_image):
    with Registry(tmp_path / "registry", host=namespace.ns_address,
                  netns=namespace.name) as registry:
        push_image(small_image, f"{registry.hostport}/{REPOSITORY}:v1")
        yield registry


@pytest.fixture
def start_agent(tmp_path, namespace, registry):
    agents = []

    def start(proxy=None):
        entry = {"name": registry.hostport, "url": registry.url, "sidecars": []}
        agent = AgentService(tmp_path / f"agent{len(agents)}", [entry], host=namespace.ns_address,
                             netns=namespace.name, proxy=proxy)
        agents.append(agent)
        return agent.start()

    yield start
    for agent in agents:
        agent.stop()


def _send(agent, request):
    """Send one raw request to the agent and return its whole reply."""
    with socket.create_connection((agent.host, agent.port), timeout=30) as conn:
        conn.sendall(request)
        reply = b""
        while chunk := conn.recv(65536):
            reply += chunk
    return reply


def _status(reply):
    return int(reply.split(b" ", 2)[1])


def _error_codes(reply):
    body = reply.partition(b"\r\n\r\n")[2]
    return [error["code"] for error in json.loads(body)["errors"]]


def _connect(agent, target):
    return _send(agent, f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\nConnection: close\r\n\r\n"
                 .encode())


def _proxy_get(agent, url, host):
    return _send(agent, f"GET {url} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())


def _ns_get(agent, ns):
    return _send(agent, f"GET /v2/{REPOSITORY}/manifests/v1?ns={quote(ns, safe='')} HTTP/1.1\r\n"
                        f"Host: {agent.host}:{agent.port}\r\nConnection: close\r\n\r\n".encode())


def _wait_for_accepts(listener, count):
    """Wait until the listener has logged ``count`` connections; the count, if it never does."""
    deadline = time.monotonic() + 10
    while listener.accepted < count and time.monotonic() < deadline:
        time.sleep(0.1)

    return listener.accepted


def _pulls(agent, registry):
    return pull_image(agent.url, registry.hostport, REPOSITORY, "v1").complete


# Hosts that a request may name: the metadata addresses and the loopback of
# the agent's namespace, each with a listener, and names that are not
# configured.
HOSTILE_HOSTS = [METADATA_V4, f"{METADATA_V4}:{LISTENER_PORT}", f"[{METADATA_V6}]:{LISTENER_PORT}",
                 f"127.0.0.1:{LISTENER_PORT}", "localhost", "metadata.google.internal",
                 "registry.example.org"]


@pytest.mark.reliability("Proxy, ?ns= and CONNECT requests for metadata and loopback hosts",
                         "attack")
def test_hostile_targets_denied(start_agent, registry, listener, namespace, reliability):
    agent = start_agent()

    for host in HOSTILE_HOSTS:
        connect_target = host if host.endswith(f":{LISTENER_PORT}") else f"{host}:{LISTENER_PORT}"
        replies = {
            "ns": _ns_get(agent, host),
            "proxy /v2/": _proxy_get(agent, f"http://{host}/v2/", host),
            "proxy metadata path": _proxy_get(agent, f"http://{host}/latest/meta-data/", host),
            "CONNECT": _connect(agent, connect_target),
        }
        pulled = _pulls(agent, registry)
        reliability.add(completed=pulled)

        for kind, reply in replies.items():
            assert _status(reply) == 403, (host, kind, reply)
            assert _error_codes(reply) == ["DENIED"], (host, kind, reply)
        assert pulled, host

    # A connection of the test itself to the listener: once it is counted,
    # any earlier connection from the agent would be counted too.
    socket.create_connection((namespace.ns_address, LISTENER_PORT), timeout=10).close()
    assert _wait_for_accepts(listener, 1) == 1


# CONNECT targets that a tunnel must not reach, with a word of the reason.
REFUSED_TUNNELS = [
    (f"{METADATA_V4}:{LISTENER_PORT}", "link-local"),
    (f"[{METADATA_V6}]:{LISTENER_PORT}", "metadata"),
    (f"[::ffff:{METADATA_V4}]:{LISTENER_PORT}", "link-local"),
    (f"127.0.0.1:{LISTENER_PORT}", "loopback"),
    (f"localhost:{LISTENER_PORT}", "loopback"),
    (f"0.0.0.0:{LISTENER_PORT}", "unspecified"),
]


@pytest.mark.reliability("CONNECT tunnels to metadata, loopback and the agent's own ports",
                         "attack")
def test_tunnel_mode_refuses_local_targets(start_agent, registry, listener, namespace,
                                           reliability):
    agent = start_agent(proxy={"other_hosts": "tunnel"})
    own_ports = [(f"{namespace.ns_address}:{port}", "agent's own")
                 for port in (agent.port, agent.torrent_port)]

    for target, reason in REFUSED_TUNNELS + own_ports:
        reply = _connect(agent, target)
        pulled = _pulls(agent, registry)
        reliability.add(completed=pulled)

        assert _status(reply) == 403, (target, reply)
        assert _error_codes(reply) == ["DENIED"], (target, reply)
        assert reason.encode() in reply, (target, reply)
        assert pulled, target
    # Tunnel mode is about CONNECT only: proxy GETs still need a configured registry.
    metadata_get = _proxy_get(agent, f"http://{METADATA_V4}/latest/meta-data/", METADATA_V4)
    assert _status(metadata_get) == 403, metadata_get
    log_text = agent.process.log_path.read_text()
    assert f"rejected CONNECT {METADATA_V4}:{LISTENER_PORT}" in log_text
    assert f"rejected CONNECT [{METADATA_V6}]:{LISTENER_PORT}" in log_text

    # An ordinary host still gets its tunnel: the namespace's own address,
    # on a port that is not the agent's.
    allowed = _connect(agent, f"{namespace.ns_address}:{LISTENER_PORT}")
    assert _status(allowed) == 200, allowed
    assert _wait_for_accepts(listener, 1) == 1
