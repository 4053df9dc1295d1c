"""The Swift driver authenticates with a real Keystone v3 and renews revoked tokens.

docker-registry's swift driver (authversion 3) pushes into a Swift whose
proxy validates Keystone tokens. The sidecar's SwiftDriver reads the blobs
back, configured as the registry is and with its password in a file.
"""

import hashlib

import pytest
import requests

from registry_p2p import config as configuration, storage
from registry_p2p.errors import BlobNotFound
from registry_p2p.sandbox.image import RandomLayer, build_image, push_image
from registry_p2p.sandbox.keystone import Keystone
from registry_p2p.sandbox.process import PROXY_VARIABLES
from registry_p2p.sandbox.registry import Registry
from registry_p2p.sandbox.swift import Swift

pytestmark = pytest.mark.integration

MIB = 1024 * 1024
CONTAINER = "registry"
PREFIX = "p2p"
REPOSITORY = "keystone/app"
USER = "registry"
PROJECT = "registry-project"
PASSWORD = "registry-password"
# distribution's smallest segment size: the 12 MiB layer becomes a DLO of 13
# segments, more than the driver fetches at once, so some segments are
# fetched after a token is revoked in the middle of a read.
CHUNK_SIZE = MIB


@pytest.fixture(scope="module")
def image(tmp_path_factory):
    layers = [RandomLayer(12 * MIB + 4321, seed=41), RandomLayer(256 * 1024, seed=42)]
    return build_image(tmp_path_factory.mktemp("keystone-image"), layers)


@pytest.fixture(scope="module")
def keystone_stack(tmp_path_factory, image):
    """Keystone, a Swift that uses it, and a registry that pushed `image` into that Swift."""
    root = tmp_path_factory.mktemp("keystone-stack")
    with pytest.MonkeyPatch.context() as monkeypatch:
        for name in PROXY_VARIABLES:
            monkeypatch.delenv(name, raising=False)

        with Keystone(root / "keystone") as keystone:
            keystone.create_user(USER, PASSWORD, PROJECT)
            with Swift(root / "swift", keystone=keystone) as swift:
                credentials = {"authurl": keystone.auth_url, "authversion": 3,
                               "username": USER, "password": PASSWORD, "tenant": PROJECT,
                               "domain": "Default", "container": CONTAINER,
                               "prefix": f"/{PREFIX}"}
                registry = Registry(root / "registry", storage={
                    "swift": {**credentials, "chunksize": CHUNK_SIZE},
                    "redirect": {"disable": True}})
                with registry:
                    push_image(image, f"{registry.hostport}/{REPOSITORY}:v1")
                    yield keystone, swift, root


@pytest.fixture
def driver(keystone_stack, tmp_path):
    keystone, _, _ = keystone_stack
    password_file = tmp_path / "swift-password"
    password_file.write_text(PASSWORD + "\n")
    password_file.chmod(0o600)
    config_path = tmp_path / "sidecar.toml"
    config_path.write_text(f'''
[storage]
driver = "swift"

[storage.swift]
authurl = "{keystone.auth_url}"
authversion = 3
username = "{USER}"
password_file = "{password_file.name}"
tenant = "{PROJECT}"
domain = "Default"
region = "{keystone.region}"
endpointtype = "public"
container = "{CONTAINER}"
prefix = "/{PREFIX}"
''')

    driver = storage.open_driver(configuration.load(configuration.SIDECAR_OPTIONS, config_path))
    yield driver
    driver.close()


def _big_layer(image):
    layer = max(image.layers, key=lambda item: item.size)
    return layer, layer.digest.split(":", 1)[1]


def _sha256(body, first=b""):
    sha256 = hashlib.sha256(first)
    while chunk := body.read(MIB):
        sha256.update(chunk)
    return sha256.hexdigest()


def test_keystone_driver_reads_registry_blobs(driver, image):
    for layer in image.layers:
        hex_digest = layer.digest.split(":", 1)[1]

        with driver.open(hex_digest, REPOSITORY) as body:
            digest = _sha256(body)

        assert digest == hex_digest
        assert driver.stat(hex_digest, REPOSITORY) == layer.size
        assert driver.is_linked(REPOSITORY, hex_digest)
        assert not driver.is_linked("other/app", hex_digest)


def test_keystone_driver_blob_not_found(driver):
    with pytest.raises(BlobNotFound):
        driver.stat("ab" * 32)
    with pytest.raises(BlobNotFound):
        driver.open("ab" * 32)


def test_keystone_layer_is_segmented(driver, image):
    _, hex_digest = _big_layer(image)
    name = driver.object_name(f"docker/registry/v2/blobs/sha256/{hex_digest[:2]}/{hex_digest}/data")

    manifest = driver.connection.head_object(CONTAINER, name)["x-object-manifest"]
    segment_container, _, segment_prefix = manifest.partition("/")
    _, segments = driver.connection.get_container(segment_container, prefix=segment_prefix,
                                                  full_listing=True)

    assert len(segments) > 8


# NOTE: after a 401, a swiftclient connection of a segment thread leaves its
# socket to the proxy unclosed (seen in this test, not traced to its cause in
# swiftclient), which Python reports when the connection is collected.
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
@pytest.mark.filterwarnings("ignore::ResourceWarning")
def test_revoked_token_renewed_mid_read(driver, image, keystone_stack):
    keystone, _, _ = keystone_stack
    _, hex_digest = _big_layer(image)
    assert driver.stat(hex_digest) > 0
    revoked = driver.connection.token
    storage_url = driver.connection.url

    with driver.open(hex_digest) as body:
        first = body.read(MIB)
        keystone.revoke_token(revoked)
        with requests.Session() as http:
            http.trust_env = False
            rejected = http.head(storage_url, headers={"X-Auth-Token": revoked}, timeout=10)
        digest = _sha256(body, first)

    assert rejected.status_code == 401
    assert digest == hex_digest
    assert driver.stat(hex_digest) > 0
    assert driver.connection.token != revoked
