"""The sidecar reads blobs straight from OpenStack Swift as docker-registry's swift driver wrote them."""

import hashlib

import pytest
from swiftclient.client import Connection

from registry_p2p import config as configuration, storage
from registry_p2p.errors import BlobNotFound
from registry_p2p.sandbox.image import RandomLayer, build_image, push_image
from registry_p2p.sandbox.p2p import AgentService, SidecarService
from registry_p2p.sandbox.pull import pull_image
from registry_p2p.sandbox.registry import Registry
from registry_p2p.sandbox.swift import Swift

pytestmark = pytest.mark.integration

CONTAINER = "registry"
PREFIX = "p2p"
# 1 MiB segments: the 22 MiB layer is a DLO of 23 segments, past the tenth
# segment where Swift's DLO middleware slows down.
CHUNK_SIZE = 1024 * 1024
REPOSITORY = "swift/app"


@pytest.fixture(scope="module")
def dlo_image(tmp_path_factory):
    layers = [RandomLayer(22 * 1024 * 1024 + 12345, seed=31), RandomLayer(3 * 1024 * 1024, seed=32)]
    return build_image(tmp_path_factory.mktemp("dlo-image"), layers)


@pytest.fixture
def swift_stack(tmp_path, dlo_image, no_proxy_variables):
    services = []
    with Swift(tmp_path / "swift") as swift:
        credentials = {"authurl": swift.auth_url, "username": swift.user,
                       "password": swift.key, "container": CONTAINER, "prefix": f"/{PREFIX}"}
        registry = Registry(tmp_path / "registry", storage={
            "swift": {**credentials, "chunksize": CHUNK_SIZE}, "redirect": {"disable": True}})
        try:
            registry.start()
            push_image(dlo_image, f"{registry.hostport}/{REPOSITORY}:v1")
            sidecar = SidecarService(tmp_path / "sidecar", registry.url, None,
                                     storage={"swift": credentials})
            services.append(sidecar.start())
            entry = {"name": registry.hostport, "url": registry.url, "sidecars": [sidecar.url]}
            for index in range(2):
                services.append(AgentService(tmp_path / f"agent{index}", [entry]).start())
            yield registry, sidecar, services[1:], swift
        finally:
            for service in services:
                service.stop()
            registry.stop()


def test_agents_pull_dlo_blobs_from_swift(swift_stack, dlo_image):
    registry, sidecar, agents, _ = swift_stack

    results = [pull_image(agent.url, registry.hostport, REPOSITORY, "v1") for agent in agents]

    for result in results:
        assert result.complete
    for agent in agents:
        blobs = agent.stats()["blobs"]
        for layer in dlo_image.layers:
            assert blobs[layer.digest.split(":", 1)[1]]["source"] == "p2p"
    assert sidecar.stats()["storage_read_bytes"] == sum(layer.size for layer in dlo_image.layers)


def test_swift_driver_reads_dlo(swift_stack, dlo_image):
    _, sidecar, _, swift = swift_stack
    driver = storage.open_driver(configuration.load(
        configuration.SIDECAR_OPTIONS, sidecar.config_path))
    layer = max(dlo_image.layers, key=lambda item: item.size)
    hex_digest = layer.digest.split(":", 1)[1]
    connection = Connection(authurl=swift.auth_url, user=swift.user, key=swift.key)
    manifest = connection.head_object(CONTAINER, driver.object_name(
        f"docker/registry/v2/blobs/sha256/{hex_digest[:2]}/{hex_digest}/data"))
    segment_container, _, segment_prefix = manifest["x-object-manifest"].partition("/")
    _, segments = connection.get_container(segment_container, prefix=segment_prefix,
                                           full_listing=True)
    connection.close()

    try:
        with driver.open(hex_digest) as body:
            sha256 = hashlib.sha256()
            while chunk := body.read(1024 * 1024):
                sha256.update(chunk)

        assert len(segments) > 20
        assert driver.stat(hex_digest) == layer.size
        assert sha256.hexdigest() == hex_digest
        assert driver.is_linked(REPOSITORY, hex_digest)
        assert not driver.is_linked("other/app", hex_digest)
        with pytest.raises(BlobNotFound):
            driver.stat("ab" * 32)
        with pytest.raises(BlobNotFound):
            driver.open("ab" * 32)
    finally:
        driver.close()
