"""Broken Swift and S3 storage gives clear errors and leaves nothing in the sidecar's cache.

One Swift and one docker-registry on it serve every test. Each test pushes
its own one-layer image and then damages that layer's objects in one way:
a lost segment, changed bytes, a deleted object, wrong credentials or
expired tokens.
"""

import hashlib
import socket

import boto3
import pytest
from botocore.config import Config
from swiftclient.client import Connection

from registry_p2p import config as configuration, layout, storage
from registry_p2p.blobcache import BlobCache
from registry_p2p.errors import StorageError
from registry_p2p.sandbox.faults import CuttingProxy
from registry_p2p.sandbox.image import RandomLayer, build_image, push_image
from registry_p2p.sandbox.p2p import AgentService, SidecarService
from registry_p2p.sandbox.pull import pull_image
from registry_p2p.sandbox.registry import Registry
from registry_p2p.sandbox.swift import Swift
from registry_p2p.storage.swift import driver as swift_driver

pytestmark = [
    pytest.mark.integration,
    # botocore's urllib3 can leave a socket unclosed when it retries a slow
    # request on a loaded machine. That socket is not the code under test.
    pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning"),
    pytest.mark.filterwarnings("ignore::ResourceWarning"),
]

CONTAINER = "registry"
PREFIX = "failures"
BUCKET = "registry-s3"
SEGMENT_SIZE = 1024 * 1024


class Stack:
    def __init__(self, swift, registry, sidecar, credentials, tmp_path_factory):
        self.swift = swift
        self.registry = registry
        self.sidecar = sidecar
        self.credentials = credentials
        self.tmp_path_factory = tmp_path_factory
        self.connection = Connection(authurl=swift.auth_url, user=swift.user, key=swift.key)

    def push_layer(self, repository, size, seed):
        """Push a one-layer image to ``repository``; return the layer's hex digest."""
        layer = RandomLayer(size, seed=seed)
        image = build_image(self.tmp_path_factory.mktemp("image"), [layer])
        push_image(image, f"{self.registry.hostport}/{repository}:v1")

        return image.layers[0].digest.split(":", 1)[1]

    def segments(self, hex_digest):
        """Names of a DLO blob's segments, in order."""
        manifest = self.connection.head_object(CONTAINER, self.data_object(hex_digest))
        segment_container, _, segment_prefix = manifest["x-object-manifest"].partition("/")
        _, listing = self.connection.get_container(segment_container, prefix=segment_prefix,
                                                   full_listing=True)
        return [entry["name"] for entry in listing]

    def data_object(self, hex_digest):
        return f"{PREFIX}/files/{layout.blob_data_path(hex_digest)}"

    def torrent(self, http, repository, hex_digest, sidecar=None):
        sidecar = sidecar or self.sidecar
        return http.get(f"{sidecar.url}/p2p/v1/{repository}/blobs/sha256:{hex_digest}/torrent",
                        timeout=120)

    def driver(self, **overrides):
        config = configuration.load(configuration.SIDECAR_OPTIONS, self.sidecar.config_path)
        driver = storage.open_driver(config)
        for name, value in overrides.items():
            setattr(driver, name, value)
        return driver


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    with pytest.MonkeyPatch.context() as monkeypatch:
        for name in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY", "all_proxy",
                     "ALL_PROXY"):
            monkeypatch.delenv(name, raising=False)

        workdir = tmp_path_factory.mktemp("failures")
        with Swift(workdir / "swift") as swift:
            credentials = {"authurl": swift.auth_url, "username": swift.user,
                           "password": swift.key, "container": CONTAINER,
                           "prefix": f"/{PREFIX}"}
            registry = Registry(workdir / "registry", storage={
                "swift": {**credentials, "chunksize": SEGMENT_SIZE},
                "redirect": {"disable": True}})
            sidecar = None
            try:
                registry.start()
                sidecar = SidecarService(workdir / "sidecar", registry.url, None,
                                         storage={"swift": credentials}).start()
                stack = Stack(swift, registry, sidecar, credentials, tmp_path_factory)
                yield stack
                stack.connection.close()
            finally:
                if sidecar is not None:
                    sidecar.stop()
                registry.stop()


def _cache_files(cache_dir, hex_digest):
    """Files of a cache that hold the blob's bytes or info, finished or not (not its lock)."""
    return [path for directory in ("blobs", "tmp") for path in (cache_dir / directory).rglob("*")
            if path.is_file() and hex_digest in path.name]


def _assert_unavailable(response, *phrases):
    assert response.status_code == 503
    error = response.json()["errors"][0]
    assert error["code"] == "UNAVAILABLE"
    for phrase in phrases:
        assert phrase in error["detail"]


def test_missing_segment_is_named_and_not_cached(stack, http):
    hex_digest = stack.push_layer("fail/missing", 6 * SEGMENT_SIZE + 100, seed=101)
    segments = stack.segments(hex_digest)
    stack.connection.delete_object(CONTAINER, segments[2])

    response = stack.torrent(http, "fail/missing", hex_digest)

    # Depending on whether the registry and the container listing have seen
    # the delete yet, the sizes disagree or the segment is found missing.
    assert response.status_code == 503
    detail = response.json()["errors"][0]["detail"]
    assert f"{segments[2]} of blob sha256:{hex_digest} is missing" in detail or (
        "the registry reports" in detail)
    assert _cache_files(stack.sidecar.cache_dir, hex_digest) == []

    driver = stack.driver()
    try:
        with pytest.raises(StorageError, match=f"{segments[2]} of blob sha256:{hex_digest} "
                                               f"is missing"):
            driver.open(hex_digest)
    finally:
        driver.close()


def test_changed_bytes_fail_the_digest_check(stack, http):
    hex_digest = stack.push_layer("fail/changed", 4 * SEGMENT_SIZE + 100, seed=102)
    segment = stack.segments(hex_digest)[1]
    _, content = stack.connection.get_object(CONTAINER, segment)
    stack.connection.put_object(CONTAINER, segment, bytes(len(content)))

    response = stack.torrent(http, "fail/changed", hex_digest)

    _assert_unavailable(response, f"blob sha256:{hex_digest}: content hashes to sha256:")
    assert _cache_files(stack.sidecar.cache_dir, hex_digest) == []


class DeleteAfterFirstRead:
    """A blob's stream whose first read calls ``delete``, as if the blob went away meanwhile."""

    def __init__(self, stream, delete):
        self.stream = stream
        self.delete = delete

    def read(self, size=-1):
        content = self.stream.read(size)
        if self.delete is not None:
            self.delete()
            self.delete = None
        return content


def test_object_deleted_mid_read(stack, tmp_path):
    hex_digest = stack.push_layer("fail/deleted", 24 * SEGMENT_SIZE + 100, seed=103)
    segments = stack.segments(hex_digest)
    cache = BlobCache(tmp_path / "cache")
    driver = stack.driver()

    def delete_later_segments():
        for name in segments[8:]:
            stack.connection.delete_object(CONTAINER, name)

    try:
        size = driver.stat(hex_digest)
        with driver.open(hex_digest) as stream:
            with pytest.raises(StorageError, match=f"of blob sha256:{hex_digest} is missing"):
                cache.fill(hex_digest, size, DeleteAfterFirstRead(stream, delete_later_segments))
    finally:
        driver.close()

    assert len(segments) == 25
    assert _cache_files(cache.root, hex_digest) == []
    assert cache.load_info(hex_digest) is None


@pytest.mark.reliability("Storage errors while filling the sidecar cache", "fault")
def test_pull_completes_when_storage_reads_break(stack, http, tmp_path, reliability):
    """The sidecar's connections to Swift break mid-object, the registry's do not."""
    hex_digest = stack.push_layer("fail/cut", 4 * SEGMENT_SIZE + 100, seed=109)
    # Requests, listings and link files fit below the cut, but a 1 MiB segment does not.
    with CuttingProxy(stack.swift.host, stack.swift.proxy_port, cut_after=256 * 1024) as proxy:
        credentials = {**stack.credentials,
                       "authurl": f"http://{stack.swift.host}:{proxy.port}/auth/v1.0"}
        sidecar = SidecarService(tmp_path / "sidecar", stack.registry.url, None,
                                 storage={"swift": credentials})
        entry = {"name": stack.registry.hostport, "url": stack.registry.url,
                 "sidecars": [sidecar.url]}
        agent = AgentService(tmp_path / "agent", [entry])
        with sidecar, agent:
            for _ in range(2):
                result = pull_image(agent.url, stack.registry.hostport, "fail/cut", "v1")
                corrupt = sum(blob.received for blob in result.blobs
                              if blob.status == 200 and blob.received == blob.size
                              and not blob.verified)
                reliability.add(completed=result.complete, corrupt_bytes=corrupt,
                                recover_seconds=result.seconds)
                assert result.complete, result
                assert corrupt == 0

            stats = agent.stats()
            response = stack.torrent(http, "fail/cut", hex_digest, sidecar)

    assert proxy.cut_connections > 0
    _assert_unavailable(response, f"cannot read blob sha256:{hex_digest} from storage",
                        "Connection reset by peer")
    assert stats["blobs"][hex_digest]["fallbacks"] == 2
    assert "no sidecar returned a torrent" in stats["blobs"][hex_digest]["fallback_reason"]
    assert _cache_files(sidecar.cache_dir, hex_digest) == []
    assert _cache_files(agent.cache_dir, hex_digest) == []


def test_segment_transfer_resumes_at_offset(stack, monkeypatch):
    hex_digest = stack.push_layer("fail/reset", 6 * SEGMENT_SIZE + 100, seed=108)
    third = stack.segments(hex_digest)[2]
    monkeypatch.setattr(swift_driver, "CHUNK_SIZE", 64 * 1024)
    driver = stack.driver()
    stream_object = driver._stream
    offsets = []

    def reset_once(container, name, offset):
        """Stream the object, but drop the third segment's first transfer after one chunk."""
        if name != third:
            return stream_object(container, name, offset)
        offsets.append(offset)
        if len(offsets) > 1:
            return stream_object(container, name, offset)
        return _fail_after_first_chunk(stream_object(container, name, offset))

    monkeypatch.setattr(driver, "_stream", reset_once)
    try:
        with driver.open(hex_digest) as stream:
            content = stream.read()
    finally:
        driver.close()

    assert hashlib.sha256(content).hexdigest() == hex_digest
    assert offsets == [0, 64 * 1024]


def _fail_after_first_chunk(chunks):
    yield next(iter(chunks))
    raise StorageError("connection reset by the test")


def test_wrong_credentials_give_a_clear_error(stack, http, tmp_path):
    hex_digest = stack.push_layer("fail/credentials", 2 * SEGMENT_SIZE, seed=104)
    wrong_key = "not-the-key-5f3a91"
    sidecar = SidecarService(tmp_path / "sidecar", stack.registry.url, None,
                             storage={"swift": {**stack.credentials, "password": wrong_key}})
    with sidecar:
        response = stack.torrent(http, "fail/credentials", hex_digest, sidecar)

    _assert_unavailable(response, "swift storage rejected the credentials (HTTP 401)",
                        "check the storage.swift settings")
    assert _cache_files(sidecar.cache_dir, hex_digest) == []
    log = (sidecar.workdir / "sidecar.log").read_text()
    assert "rejected the sidecar's credentials" in log
    assert wrong_key not in log


def test_expired_tokens_are_renewed_during_reads(stack, http):
    first = stack.push_layer("fail/expired", 12 * SEGMENT_SIZE + 100, seed=105)
    second = stack.push_layer("fail/expired", 12 * SEGMENT_SIZE + 200, seed=106)
    driver = stack.driver()

    try:
        with driver.open(first) as stream:
            assert hashlib.sha256(stream.read()).hexdigest() == first
        token = driver.connection.token

        # tempauth keeps its tokens in memcached only: flushing it expires them all.
        _flush_memcached(stack.swift)

        with driver.open(second) as stream:
            assert hashlib.sha256(stream.read()).hexdigest() == second
        assert driver.connection.token != token
    finally:
        driver.close()

    _flush_memcached(stack.swift)
    response = stack.torrent(http, "fail/expired", second)
    assert response.status_code == 200


def test_s3_ranged_reads_and_their_failures(stack, tmp_path):
    s3_credentials = {"regionendpoint": stack.swift.endpoint, "region": stack.swift.region,
                      "bucket": BUCKET, "accesskey": stack.swift.user,
                      "secretkey": stack.swift.key}
    client = boto3.client(
        "s3", endpoint_url=stack.swift.endpoint, aws_access_key_id=stack.swift.user,
        aws_secret_access_key=stack.swift.key, region_name=stack.swift.region,
        config=Config(signature_version="s3v4", s3={"addressing_style": "path"}))
    client.create_bucket(Bucket=BUCKET)
    registry = Registry(tmp_path / "registry", storage={
        "s3": {**s3_credentials, "secure": False, "v4auth": True},
        "redirect": {"disable": True}})
    sidecar = SidecarService(tmp_path / "sidecar", registry.url, None,
                             storage={"s3": s3_credentials})

    with registry:
        image = build_image(tmp_path / "image", [RandomLayer(5 * 1024 * 1024 + 77, seed=107)])
        push_image(image, f"{registry.hostport}/s3fail/app:v1")
        hex_digest = image.layers[0].digest.split(":", 1)[1]
        cache = BlobCache(tmp_path / "cache")
        driver = storage.open_driver(configuration.load(configuration.SIDECAR_OPTIONS,
                                                        sidecar.config_path))
        # Eleven byte ranges, read four at a time.
        driver.part_size = 512 * 1024

        def delete_blob():
            client.delete_object(Bucket=BUCKET, Key=layout.blob_data_path(hex_digest))

        try:
            size = driver.stat(hex_digest)
            with driver.open(hex_digest) as stream:
                assert hashlib.sha256(stream.read()).hexdigest() == hex_digest

            with driver.open(hex_digest) as stream:
                with pytest.raises(StorageError, match=f"of blob sha256:{hex_digest} is missing"):
                    cache.fill(hex_digest, size, DeleteAfterFirstRead(stream, delete_blob))
        finally:
            driver.close()
            client.close()

    assert _cache_files(cache.root, hex_digest) == []


def _flush_memcached(swift):
    with socket.create_connection((swift.host, swift.memcached_port), timeout=5) as connection:
        connection.sendall(b"flush_all\r\n")
        assert connection.recv(64) == b"OK\r\n"
