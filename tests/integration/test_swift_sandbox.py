"""registry_p2p.sandbox.swift against real Swift servers, python-swiftclient, boto3 and docker-registry.

Needs the Debian packages swift, swift-proxy, swift-account, swift-container,
swift-object, memcached, python3-swiftclient, python3-boto3, docker-registry
and skopeo, and a work directory on a file system with user extended attributes.
"""

import socket

import boto3
import pytest
import swiftclient
from botocore.config import Config

from registry_p2p.sandbox import SandboxError
from registry_p2p.sandbox.image import RandomLayer, build_image, push_image
from registry_p2p.sandbox.process import PROXY_VARIABLES
from registry_p2p.sandbox.registry import Registry
from registry_p2p.sandbox.swift import Swift

pytestmark = [
    pytest.mark.integration,
    # botocore's urllib3 can leave a socket unclosed when it retries a slow
    # request on a loaded machine. That socket is not the code under test.
    pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning"),
    pytest.mark.filterwarnings("ignore::ResourceWarning"),
]

MIB = 1024 * 1024
# distribution 2.8's swift driver writes every blob as a DLO manifest with
# segments of this size, so the 12 MiB layer gets three segments.
SWIFT_CHUNK_SIZE = 5 * MIB
BIG_LAYER_SIZE = 12 * MIB
SWIFT_PREFIX = "sandbox"
S3_ROOT_DIRECTORY = "s3root"


@pytest.fixture(autouse=True)
def no_proxy_variables(monkeypatch):
    """Keep swiftclient's and boto3's loopback requests away from a developer's proxy."""
    for name in PROXY_VARIABLES:
        monkeypatch.delenv(name, raising=False)


@pytest.fixture(scope="module")
def image(tmp_path_factory):
    layers = [RandomLayer(BIG_LAYER_SIZE, seed=21), RandomLayer(64 * 1024, seed=22)]
    return build_image(tmp_path_factory.mktemp("swift-image"), layers)


@pytest.fixture
def swift(tmp_path):
    with Swift(tmp_path / "swift") as swift:
        yield swift


@pytest.fixture
def swift_connection(swift):
    connection = swiftclient.Connection(authurl=swift.auth_url, user=swift.user, key=swift.key, retries=0)
    yield connection
    connection.close()


@pytest.fixture
def s3(swift):
    client = boto3.client(
        "s3",
        endpoint_url=swift.endpoint,
        aws_access_key_id=swift.user,
        aws_secret_access_key=swift.key,
        region_name=swift.region,
        config=Config(signature_version="s3v4", s3={"addressing_style": "path"}),
    )
    yield client
    client.close()


def _blob_key(root: str, digest: str) -> str:
    hex_digest = digest.split(":", 1)[1]
    return f"{root}/docker/registry/v2/blobs/sha256/{hex_digest[:2]}/{hex_digest}/data"


def _port_accepts(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1.0):
            return True
    except OSError:
        return False


def test_swift_stop_leaves_nothing_running(tmp_path):
    swift = Swift(tmp_path / "swift").start()
    processes = swift.processes
    ports = [swift.proxy_port, swift.memcached_port, *swift.storage_ports.values()]
    swift.stop()

    assert len(processes) == 5
    for process in processes:
        assert not process.running, f"{process.name} still running after stop()"
    for port in ports:
        assert not _port_accepts(port), f"port {port} still accepts connections after stop()"


def test_swift_missing_binary_names_package(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))

    with pytest.raises(SandboxError, match="apt-get install memcached"):
        Swift(tmp_path / "swift").start()


def test_swift_tempauth_token(swift):
    storage_url, token = swift.get_token()

    assert storage_url == f"{swift.endpoint}/v1/{swift.account}"
    assert token.startswith("AUTH_tk")


def test_swiftclient_object_roundtrip(swift_connection):
    body = b"registry-p2p swift sandbox\n" * 1000
    swift_connection.put_container("roundtrip")
    swift_connection.put_object("roundtrip", "dir/object.txt", body, content_type="text/plain")

    headers, read_back = swift_connection.get_object("roundtrip", "dir/object.txt")
    _, listing = swift_connection.get_container("roundtrip")

    assert read_back == body
    assert int(headers["content-length"]) == len(body)
    assert [entry["name"] for entry in listing] == ["dir/object.txt"]


def test_s3api_lists_bucket(s3):
    s3.create_bucket(Bucket="listing")
    s3.put_object(Bucket="listing", Key="a/one", Body=b"1")
    s3.put_object(Bucket="listing", Key="a/two", Body=b"22")

    listing = s3.list_objects_v2(Bucket="listing", Prefix="a/")

    assert [entry["Key"] for entry in listing["Contents"]] == ["a/one", "a/two"]
    assert [entry["Size"] for entry in listing["Contents"]] == [1, 2]
    assert s3.get_object(Bucket="listing", Key="a/two")["Body"].read() == b"22"


def test_registry_swift_driver_stores_dlo(tmp_path, swift, swift_connection, image):
    storage = {
        "swift": {
            "authurl": swift.auth_url,
            "username": swift.user,
            "password": swift.key,
            "container": "registry",
            "prefix": f"/{SWIFT_PREFIX}",
            "chunksize": SWIFT_CHUNK_SIZE,
        },
        "redirect": {"disable": True},
    }
    big_layer = image.layers[0]

    with Registry(tmp_path / "registry", storage=storage) as registry:
        push_image(image, f"{registry.hostport}/sandbox/swift:v1")

    headers = swift_connection.head_object("registry", _blob_key(f"{SWIFT_PREFIX}/files", big_layer.digest))
    manifest = headers.get("x-object-manifest")
    assert manifest is not None, f"blob {big_layer.digest} is not a DLO manifest: {headers}"
    assert int(headers["content-length"]) == big_layer.size

    segment_container, _, segment_prefix = manifest.partition("/")
    _, segments = swift_connection.get_container(segment_container, prefix=segment_prefix)
    assert segment_prefix.startswith(f"{SWIFT_PREFIX}/segments/")
    assert len(segments) == -(-big_layer.size // SWIFT_CHUNK_SIZE)
    assert sum(segment["bytes"] for segment in segments) == big_layer.size


def test_registry_s3_driver_through_s3api(tmp_path, swift, s3, image):
    s3.create_bucket(Bucket="registry")
    storage = {
        "s3": {
            "regionendpoint": swift.endpoint,
            "secure": False,
            "v4auth": True,
            "region": swift.region,
            "bucket": "registry",
            "accesskey": swift.user,
            "secretkey": swift.key,
            "rootdirectory": f"/{S3_ROOT_DIRECTORY}",
        },
        "redirect": {"disable": True},
    }

    with Registry(tmp_path / "registry", storage=storage) as registry:
        push_image(image, f"{registry.hostport}/sandbox/s3:v1")

    for layer in image.layers:
        head = s3.head_object(Bucket="registry", Key=_blob_key(S3_ROOT_DIRECTORY, layer.digest))
        assert head["ContentLength"] == layer.size, layer.digest
