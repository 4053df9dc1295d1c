"""Fixtures that start real components: docker-registry, sidecars, agents.

Every component is a separate process started here and stopped at the end
of its scope. A missing binary fails the test with the package to install.
"""

import dataclasses
import gzip
import json
import os
from pathlib import Path

import pytest
import requests

from registry_p2p.sandbox.image import DirectoryLayer, RandomLayer, build_image
from registry_p2p.sandbox.p2p import AgentService, SidecarService
from registry_p2p.sandbox.registry import Registry
from registry_p2p.sandbox.reliability import RESULTS_ENV, ReliabilityRecord

# About 230 MB of the machine's own files in three layers, plus a random one
# that does not compress, as an image of a real application would have.
REAL_FILE_LAYERS = [
    ([Path("/usr/lib")], 90 * 1024 * 1024),
    ([Path("/usr/share")], 80 * 1024 * 1024),
    ([Path("/usr/bin"), Path("/usr/sbin"), Path("/usr/libexec")], 60 * 1024 * 1024),
]


MIN_REAL_FILE_BYTES = 200 * 1000 * 1000


def _uncompressed_size(layout_dir, digest):
    hex_digest = digest.split(":", 1)[1]
    size = 0
    with gzip.open(layout_dir / "blobs" / "sha256" / hex_digest) as layer:
        while chunk := layer.read(1024 * 1024):
            size += len(chunk)
    return size


@pytest.fixture(scope="session")
def big_image(tmp_path_factory):
    layers = [DirectoryLayer(paths, max_bytes) for paths, max_bytes in REAL_FILE_LAYERS]
    layers.append(RandomLayer(8 * 1024 * 1024, seed=7))
    image = build_image(tmp_path_factory.mktemp("big-image"), layers)

    # The directories must have supplied enough files, or the test would
    # pull a much smaller image than it claims.
    real_files = sum(_uncompressed_size(image.layout_dir, layer.digest)
                     for layer in image.layers[:len(REAL_FILE_LAYERS)])
    assert real_files >= MIN_REAL_FILE_BYTES, f"only {real_files} bytes of real files"

    return image


@pytest.fixture(scope="session")
def small_image(tmp_path_factory):
    layers = [RandomLayer(3 * 1024 * 1024, seed=11), RandomLayer(2 * 1024 * 1024, seed=12),
              DirectoryLayer([Path("/usr/share/doc")], 2 * 1024 * 1024)]
    return build_image(tmp_path_factory.mktemp("small-image"), layers)


@pytest.fixture
def no_proxy_variables(monkeypatch):
    """Keep boto3's and swiftclient's loopback requests away from a developer's proxy."""
    for name in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY", "all_proxy",
                 "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def http():
    """A requests session that ignores proxy variables."""
    with requests.Session() as session:
        session.trust_env = False
        yield session


class Stack:
    """One registry, one sidecar in front of it and several agents."""

    def __init__(self, root, agent_count, registry_users=None, sidecar_options=None,
                 agent_options=None, sidecar_urls=None):
        self.root = root
        self.agent_count = agent_count
        self.registry_users = registry_users
        self.sidecar_options = sidecar_options or {}
        self.agent_options = agent_options or {}
        self.sidecar_urls = sidecar_urls
        self.registry = None
        self.sidecar = None
        self.agents = []

    def start(self):
        self.registry = Registry(self.root / "registry", users=self.registry_users).start()
        self.sidecar = SidecarService(self.root / "sidecar", self.registry.url,
                                      self.registry.root_directory, **self.sidecar_options)
        self.sidecar.start()

        sidecars = self.sidecar_urls if self.sidecar_urls is not None else [self.sidecar.url]
        entry = {"name": self.registry.hostport, "url": self.registry.url, "sidecars": sidecars}
        for index in range(self.agent_count):
            agent = AgentService(self.root / f"agent{index}", [entry], **self.agent_options)
            self.agents.append(agent)
            agent.start()

        return self

    def stop(self):
        for service in [*self.agents, self.sidecar]:
            if service is not None:
                service.stop()
        if self.registry is not None:
            self.registry.stop()


@pytest.fixture
def make_stack(tmp_path):
    stacks = []

    def make(agent_count=1, **options):
        stack = Stack(tmp_path / f"stack{len(stacks)}", agent_count, **options)
        stacks.append(stack)
        return stack.start()

    yield make
    for stack in stacks:
        stack.stop()


@pytest.fixture
def reliability(request):
    """A ReliabilityRecord for this test's case, appended to $REGISTRY_P2P_RELIABILITY at the end.

    The test names its case with ``@pytest.mark.reliability(case, kind)``,
    kind being "fault" or "attack".
    """
    marker = request.node.get_closest_marker("reliability")
    assert marker is not None, "a test that uses the reliability fixture needs a reliability mark"
    case, kind = marker.args
    # A case marked on the test function spans all its parameters, so its
    # command leaves them out. A case marked on one parameter keeps its id.
    function_marks = getattr(request.node.function, "pytestmark", [])
    on_function = any(mark.name == "reliability" for mark in function_marks)
    nodeid = request.node.nodeid.partition("[")[0] if on_function else request.node.nodeid
    command = f".venv/bin/python -m pytest '{nodeid}'"
    record = ReliabilityRecord(case=case, kind=kind, command=command)

    yield record

    results = os.environ.get(RESULTS_ENV)
    if results and record.attempts:
        with open(results, "a") as out:
            out.write(json.dumps(dataclasses.asdict(record)) + "\n")
