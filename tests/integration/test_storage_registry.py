"""The registry storage driver reads blobs through a real docker-registry's HTTP API."""

import hashlib
import logging
import threading
import time
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

import pytest

from registry_p2p.errors import BlobNotFound, StorageError
from registry_p2p.sandbox.image import push_image
from registry_p2p.sandbox.p2p import AgentService, SidecarService
from registry_p2p.sandbox.process import free_port
from registry_p2p.sandbox.pull import pull_image
from registry_p2p.sandbox.registry import Registry
from registry_p2p.sandbox.token_issuer import TokenIssuer
from registry_p2p.storage.registry import RegistryDriver

pytestmark = pytest.mark.integration

REPOSITORY = "registry-api/app"
OTHER_REPOSITORY = "registry-api/other"
UNKNOWN_HEX = "ab" * 32
PUSHER = ("pusher", "pusher-password")
SIDECAR = ("sidecar", "sidecar-secret-4711")
WRONG_PASSWORD = "wrong-secret-0815"
USERS = dict([PUSHER, SIDECAR])
MIN_BLOB_SIZE = 1024 * 1024
# Seconds to wait for docker-registry to log a completed response.
LOG_TIMEOUT = 30


def _hex(layer):
    return layer.digest.split(":", 1)[1]


def _read(driver, hex_digest, repository=REPOSITORY):
    with driver.open(hex_digest, repository) as body:
        return body.read()


@pytest.fixture
def secrets_log(caplog):
    """Capture every log record, so tests can check that no secret reaches a log line."""
    caplog.set_level(logging.DEBUG)
    return caplog


@pytest.fixture
def htpasswd_registry(tmp_path, small_image):
    with Registry(tmp_path / "registry", users=USERS) as registry:
        push_image(small_image, f"{registry.hostport}/{REPOSITORY}:v1", creds=":".join(PUSHER))
        yield registry


@pytest.fixture
def make_driver():
    drivers = []

    def make(*args, **options):
        driver = RegistryDriver(*args, **options)
        drivers.append(driver)
        return driver

    yield make
    for driver in drivers:
        driver.close()


def test_basic_auth_reads_blob(htpasswd_registry, small_image, make_driver, secrets_log):
    driver = make_driver(htpasswd_registry.url, *SIDECAR)

    for layer in small_image.layers:
        hex_digest = _hex(layer)
        assert driver.is_linked(REPOSITORY, hex_digest)
        assert driver.stat(hex_digest, REPOSITORY) == layer.size
        content = _read(driver, hex_digest)
        assert len(content) == layer.size
        assert hashlib.sha256(content).hexdigest() == hex_digest

    assert SIDECAR[1] not in secrets_log.text


def test_basic_auth_unlinked_and_unknown(htpasswd_registry, small_image, make_driver):
    driver = make_driver(htpasswd_registry.url, *SIDECAR)
    hex_digest = _hex(small_image.layers[0])

    assert not driver.is_linked(OTHER_REPOSITORY, hex_digest)
    assert not driver.is_linked(REPOSITORY, UNKNOWN_HEX)
    with pytest.raises(BlobNotFound):
        driver.stat(UNKNOWN_HEX, REPOSITORY)
    with pytest.raises(BlobNotFound):
        driver.open(UNKNOWN_HEX, REPOSITORY)
    with pytest.raises(BlobNotFound):
        driver.open(hex_digest, OTHER_REPOSITORY)


def test_wrong_password_names_credentials(htpasswd_registry, small_image, make_driver,
                                          secrets_log):
    driver = make_driver(htpasswd_registry.url, SIDECAR[0], WRONG_PASSWORD)
    hex_digest = _hex(small_image.layers[0])

    for call in (partial(driver.is_linked, REPOSITORY, hex_digest),
                 partial(driver.stat, hex_digest, REPOSITORY),
                 partial(driver.open, hex_digest, REPOSITORY)):
        with pytest.raises(StorageError) as caught:
            call()
        message = str(caught.value)
        assert not isinstance(caught.value, BlobNotFound)
        assert "rejected the sidecar's storage.registry credentials" in message
        assert htpasswd_registry.url in message
        assert REPOSITORY in message
        assert hex_digest in message
        assert "'sidecar'" in message
        assert WRONG_PASSWORD not in message

    assert WRONG_PASSWORD not in secrets_log.text


def test_no_credentials_names_options(htpasswd_registry, small_image, make_driver):
    driver = make_driver(htpasswd_registry.url)

    with pytest.raises(StorageError, match="requires credentials.*storage.registry.username"):
        driver.is_linked(REPOSITORY, _hex(small_image.layers[0]))


def test_unreachable_registry_names_url(make_driver):
    url = f"http://127.0.0.1:{free_port()}"
    driver = make_driver(url, *SIDECAR, timeout=5)

    with pytest.raises(StorageError) as caught:
        driver.stat(UNKNOWN_HEX, REPOSITORY)

    assert not isinstance(caught.value, BlobNotFound)
    assert url in str(caught.value)
    assert REPOSITORY in str(caught.value)
    assert UNKNOWN_HEX in str(caught.value)


class _StorageServer:
    """Serves a registry's filesystem storage over HTTP and records each request's headers."""

    def __init__(self, root):
        self.requests = []
        server = self

        class Handler(SimpleHTTPRequestHandler):
            def send_head(self):
                server.requests.append((self.command, self.path,
                                        self.headers.get("Authorization")))
                return super().send_head()

            def log_message(self, format, *args):
                pass

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), partial(Handler, directory=str(root)))
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)

    @property
    def url(self):
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}"

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc_info):
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=10)


def test_redirect_followed_without_authorization(tmp_path, small_image, make_driver):
    registry = Registry(tmp_path / "registry", users=USERS)
    with _StorageServer(registry.root_directory) as storage_server:
        # distribution's redirect middleware sends blob GETs and HEADs to
        # <baseurl host><storage path>, as it would to a CDN in front of storage.
        registry.config_overrides = {"middleware": {"storage": [
            {"name": "redirect", "options": {"baseurl": storage_server.url}}]}}
        with registry:
            push_image(small_image, f"{registry.hostport}/{REPOSITORY}:v1",
                       creds=":".join(PUSHER))
            layer = max(small_image.layers, key=lambda item: item.size)
            hex_digest = _hex(layer)
            driver = make_driver(registry.url, *SIDECAR)

            assert driver.is_linked(REPOSITORY, hex_digest)
            assert driver.stat(hex_digest, REPOSITORY) == layer.size
            assert hashlib.sha256(_read(driver, hex_digest)).hexdigest() == hex_digest
            with pytest.raises(BlobNotFound):
                driver.open(hex_digest, OTHER_REPOSITORY)

            redirected = [entry for entry in registry.blob_requests() if entry["status"] == 307]
            assert redirected, "the registry did not redirect"
            blob_path = f"/docker/registry/v2/blobs/sha256/{hex_digest[:2]}/{hex_digest}/data"
            assert ("GET", blob_path, None) in storage_server.requests
            assert ("HEAD", blob_path, None) in storage_server.requests
            assert all(authorization is None for _, _, authorization in storage_server.requests)


@pytest.fixture
def token_registry(tmp_path, small_image):
    with TokenIssuer(tmp_path / "issuer", USERS) as issuer:
        with Registry(tmp_path / "registry",
                      config_overrides={"auth": issuer.registry_auth()}) as registry:
            push_image(small_image, f"{registry.hostport}/{REPOSITORY}:v1",
                       creds=":".join(PUSHER))
            yield registry, issuer


def test_token_auth_reads_blob(token_registry, small_image, make_driver, secrets_log):
    registry, issuer = token_registry
    driver = make_driver(registry.url, *SIDECAR)
    pull_scope = f"repository:{REPOSITORY}:pull"

    for layer in small_image.layers:
        hex_digest = _hex(layer)
        assert driver.is_linked(REPOSITORY, hex_digest)
        assert driver.stat(hex_digest, REPOSITORY) == layer.size
        assert hashlib.sha256(_read(driver, hex_digest)).hexdigest() == hex_digest
    assert not driver.is_linked(OTHER_REPOSITORY, _hex(small_image.layers[0]))

    sidecar_requests = [entry for entry in issuer.token_requests() if entry["user"] == "sidecar"]
    # One token per repository: the driver reuses it until it expires.
    assert [entry["scopes"] for entry in sidecar_requests] == [
        [pull_scope], [f"repository:{OTHER_REPOSITORY}:pull"]]
    assert all(entry["status"] == 200 for entry in sidecar_requests)
    assert SIDECAR[1] not in secrets_log.text
    for record in secrets_log.records:
        assert "eyJ" not in record.getMessage(), "a JWT reached the log"


def test_token_auth_wrong_password(token_registry, small_image, make_driver, secrets_log):
    registry, issuer = token_registry
    driver = make_driver(registry.url, SIDECAR[0], WRONG_PASSWORD)
    hex_digest = _hex(small_image.layers[0])

    with pytest.raises(StorageError) as caught:
        driver.open(hex_digest, REPOSITORY)

    message = str(caught.value)
    assert "rejected the sidecar's storage.registry credentials" in message
    assert issuer.realm in message
    assert REPOSITORY in message
    assert hex_digest in message
    assert WRONG_PASSWORD not in message
    assert WRONG_PASSWORD not in secrets_log.text
    assert issuer.token_requests()[-1]["status"] == 401


@pytest.fixture
def make_registry_stack(tmp_path, htpasswd_registry):
    """Start a sidecar with storage.driver = "registry" and agents in front of htpasswd_registry."""
    services = []

    def make(password, agent_count):
        registry = htpasswd_registry
        sidecar = SidecarService(tmp_path / f"sidecar{len(services)}", registry.url, None,
                                 storage={"registry": {"username": SIDECAR[0],
                                                       "password": password}})
        services.append(sidecar.start())
        entry = {"name": registry.hostport, "url": registry.url, "sidecars": [sidecar.url]}
        agents = []
        for index in range(agent_count):
            agent = AgentService(tmp_path / f"agent{len(services)}", [entry],
                                 min_blob_size=MIN_BLOB_SIZE)
            services.append(agent.start())
            agents.append(agent)
        return sidecar, agents

    yield make
    for service in services:
        service.stop()


def _wait_for_blob_bytes(registry, expected):
    deadline = time.monotonic() + LOG_TIMEOUT
    while registry.blob_bytes_sent() < expected and time.monotonic() < deadline:
        time.sleep(0.2)
    return registry.blob_bytes_sent()


def test_agents_pull_through_registry_driver(htpasswd_registry, small_image, make_registry_stack):
    registry = htpasswd_registry
    pushed_bytes = registry.blob_bytes_sent()
    sidecar, agents = make_registry_stack(SIDECAR[1], agent_count=2)

    results = [pull_image(agent.url, registry.hostport, REPOSITORY, "v1", auth=PUSHER)
               for agent in agents]

    for result in results:
        assert result.manifest_status == 200
        assert sorted(blob.digest for blob in result.blobs) == sorted(
            [small_image.config_digest] + [layer.digest for layer in small_image.layers])
        for blob in result.blobs:
            assert blob.verified, blob
    big_layers = [layer for layer in small_image.layers if layer.size >= MIN_BLOB_SIZE]
    assert big_layers
    for agent in agents:
        blobs = agent.stats()["blobs"]
        for layer in big_layers:
            assert blobs[_hex(layer)]["source"] == "p2p", blobs[_hex(layer)]
    stats = sidecar.stats()
    assert stats["storage_read_bytes"] == sum(layer.size for layer in big_layers)
    assert stats["cache_fills"] == len(big_layers)

    # Each big layer left the registry once, to the sidecar. Every agent
    # fetched the config and the small layers from the registry itself.
    config_size = (small_image.layout_dir / "blobs" / "sha256"
                   / small_image.config_digest.split(":", 1)[1]).stat().st_size
    small_bytes = config_size + sum(layer.size for layer in small_image.layers
                                    if layer.size < MIN_BLOB_SIZE)
    expected = pushed_bytes + sum(layer.size for layer in big_layers) + len(agents) * small_bytes
    assert _wait_for_blob_bytes(registry, expected) == expected


def test_rejected_sidecar_credentials_fall_back(htpasswd_registry, small_image,
                                                make_registry_stack, http):
    registry = htpasswd_registry
    sidecar, (agent,) = make_registry_stack(WRONG_PASSWORD, agent_count=1)
    layer = max(small_image.layers, key=lambda item: item.size)

    response = http.get(f"{sidecar.url}/p2p/v1/{REPOSITORY}/blobs/{layer.digest}/torrent",
                            auth=PUSHER, timeout=60)
    result = pull_image(agent.url, registry.hostport, REPOSITORY, "v1", auth=PUSHER)

    assert response.status_code == 503
    assert response.json()["errors"][0]["code"] == "UNAVAILABLE"
    assert ("rejected the sidecar's storage.registry credentials"
            in response.json()["errors"][0]["detail"])
    assert WRONG_PASSWORD not in response.text
    assert result.complete
    assert agent.stats()["blobs"][_hex(layer)]["source"] == "fallback"
    sidecar_log = (sidecar.workdir / "sidecar.log").read_text()
    assert "rejected the sidecar's storage.registry credentials" in sidecar_log
    assert WRONG_PASSWORD not in sidecar_log
