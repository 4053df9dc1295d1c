"""The sidecar reads blobs straight from S3 storage (Swift's s3api) written by docker-registry."""

import hashlib

import boto3
import pytest
from botocore.config import Config

from registry_p2p import config as configuration, storage
from registry_p2p.errors import BlobNotFound
from registry_p2p.sandbox.image import push_image
from registry_p2p.sandbox.p2p import AgentService, SidecarService
from registry_p2p.sandbox.pull import pull_image
from registry_p2p.sandbox.registry import Registry
from registry_p2p.sandbox.swift import Swift

pytestmark = [
    pytest.mark.integration,
    # botocore's urllib3 can leave a socket unclosed when it retries a slow
    # request on a loaded machine. That socket is not the code under test.
    pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning"),
    pytest.mark.filterwarnings("ignore::ResourceWarning"),
]

BUCKET = "registry"
ROOT_DIRECTORY = "p2p-root"
REPOSITORY = "s3/app"


@pytest.fixture
def s3_stack(tmp_path, small_image, no_proxy_variables):
    services = []
    with Swift(tmp_path / "swift") as swift:
        client = boto3.client(
            "s3", endpoint_url=swift.endpoint, aws_access_key_id=swift.user,
            aws_secret_access_key=swift.key, region_name=swift.region,
            config=Config(signature_version="s3v4", s3={"addressing_style": "path"}))
        client.create_bucket(Bucket=BUCKET)
        client.close()

        registry_storage = {"s3": {
            "regionendpoint": swift.endpoint, "secure": False, "v4auth": True,
            "region": swift.region, "bucket": BUCKET, "accesskey": swift.user,
            "secretkey": swift.key, "rootdirectory": f"/{ROOT_DIRECTORY}"}}
        sidecar_storage = {"s3": {
            "regionendpoint": swift.endpoint, "region": swift.region, "bucket": BUCKET,
            "accesskey": swift.user, "secretkey": swift.key,
            "rootdirectory": f"/{ROOT_DIRECTORY}"}}
        # distribution's default: blob GETs and HEADs are redirected to
        # signed S3 URLs, so the agents' and the sidecar's HEADs follow one.
        registry = Registry(tmp_path / "registry", storage=registry_storage)
        try:
            registry.start()
            push_image(small_image, f"{registry.hostport}/{REPOSITORY}:v1")
            sidecar = SidecarService(tmp_path / "sidecar", registry.url, None,
                                     storage=sidecar_storage)
            services.append(sidecar.start())
            entry = {"name": registry.hostport, "url": registry.url, "sidecars": [sidecar.url]}
            for index in range(2):
                agent = AgentService(tmp_path / f"agent{index}", [entry])
                services.append(agent.start())
            yield registry, sidecar, services[1:]
        finally:
            for service in services:
                service.stop()
            registry.stop()


def test_agents_pull_blobs_read_from_s3(s3_stack, small_image, http):
    registry, sidecar, agents = s3_stack

    results = [pull_image(agent.url, registry.hostport, REPOSITORY, "v1") for agent in agents]

    for result in results:
        assert result.complete
    big_layers = [layer for layer in small_image.layers if layer.size >= 1024 * 1024]
    for agent in agents:
        blobs = agent.stats()["blobs"]
        for layer in big_layers:
            assert blobs[layer.digest.split(":", 1)[1]]["source"] == "p2p"
    stats = sidecar.stats()
    assert stats["storage_read_bytes"] == sum(layer.size for layer in big_layers)
    assert stats["cache_fills"] == len(big_layers)


def test_s3_blob_of_other_repository_unknown(s3_stack, small_image, http):
    registry, sidecar, _ = s3_stack
    layer = max(small_image.layers, key=lambda item: item.size)

    response = http.get(f"{sidecar.url}/p2p/v1/other/app/blobs/{layer.digest}/torrent")

    assert response.status_code == 404
    assert response.json()["errors"][0]["code"] == "BLOB_UNKNOWN"


def test_s3_driver_contract(s3_stack, small_image, tmp_path):
    registry, sidecar, _ = s3_stack
    driver = storage.open_driver(configuration.load(
        configuration.SIDECAR_OPTIONS, sidecar.config_path))
    layer = max(small_image.layers, key=lambda item: item.size)
    hex_digest = layer.digest.split(":", 1)[1]

    try:
        with driver.open(hex_digest) as body:
            content = body.read()

        assert driver.stat(hex_digest) == layer.size
        assert hashlib.sha256(content).hexdigest() == hex_digest
        assert driver.is_linked(REPOSITORY, hex_digest)
        assert not driver.is_linked("other/app", hex_digest)
        with pytest.raises(BlobNotFound):
            driver.stat("ab" * 32)
        with pytest.raises(BlobNotFound):
            driver.open("ab" * 32)
    finally:
        driver.close()
