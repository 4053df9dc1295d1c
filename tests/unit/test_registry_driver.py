"""Pure parts of registry_p2p.storage.registry: configuration, URLs and redaction."""

import pytest
import requests

from registry_p2p import config
from registry_p2p.errors import ConfigError
from registry_p2p.registry_api import blob_url
from registry_p2p.storage import open_driver
from registry_p2p.storage.registry import RegistryDriver, describe_exception, without_query

HEX = "ab" * 32


def load_sidecar(text):
    return config.load(config.SIDECAR_OPTIONS, text=text)


def test_registry_url_defaults_to_sidecar_registry_url():
    driver = open_driver(load_sidecar('registry_url = "http://registry.example.org:5000"\n'
                                      '[storage]\ndriver = "registry"\n'))
    try:
        assert isinstance(driver, RegistryDriver)
        assert driver.registry_url == "http://registry.example.org:5000"
        assert driver.auth.authorization("repository:app:pull") is None
    finally:
        driver.close()


def test_registry_url_and_credentials_from_config():
    driver = open_driver(load_sidecar(
        '[storage]\ndriver = "registry"\n'
        '[storage.registry]\nurl = "https://internal.example.org/"\n'
        'username = "sidecar"\npassword = "s3cret"\n'))
    try:
        assert driver.registry_url == "https://internal.example.org"
        assert driver.username == "sidecar"
        assert driver.auth.authorization("repository:app:pull").startswith("Basic ")
    finally:
        driver.close()


def test_password_without_username_rejected():
    loaded = load_sidecar('[storage]\ndriver = "registry"\n'
                          '[storage.registry]\npassword = "s3cret"\n')

    with pytest.raises(ConfigError, match="storage.registry.username is empty"):
        open_driver(loaded)


def test_invalid_registry_url_rejected():
    with pytest.raises(ConfigError, match="storage.registry.url"):
        load_sidecar('[storage.registry]\nurl = "registry.example.org"\n')


@pytest.mark.parametrize("registry_url, repository, expected", [
    ("http://127.0.0.1:5000", "app", f"http://127.0.0.1:5000/v2/app/blobs/sha256:{HEX}"),
    ("https://r.example.org/", "team/app", f"https://r.example.org/v2/team/app/blobs/sha256:{HEX}"),
    ("https://r.example.org/mirror", "a/b/c",
     f"https://r.example.org/mirror/v2/a/b/c/blobs/sha256:{HEX}"),
])
def test_blob_url(registry_url, repository, expected):
    assert blob_url(registry_url, repository, f"sha256:{HEX}") == expected


def test_without_query_drops_signature():
    url = "http://s3.example.org/bucket/data?X-Amz-Signature=deadbeef&X-Amz-Credential=AKIA#f"

    assert without_query(url) == "http://s3.example.org/bucket/data"


def test_describe_exception_drops_query_strings():
    exc = requests.ConnectionError("HTTPConnectionPool(host='s3', port=80): Max retries "
                                   "exceeded with url: /b/data?X-Amz-Signature=deadbeef "
                                   "(Caused by NewConnectionError('refused'))")

    description = describe_exception(exc)

    assert description.startswith("ConnectionError: ")
    assert "deadbeef" not in description
    assert "/b/data?..." in description
    assert "(Caused by NewConnectionError('refused'))" in description


def test_repository_required():
    driver = RegistryDriver("http://127.0.0.1:9")
    try:
        with pytest.raises(ValueError, match="repository"):
            driver.stat(HEX)
    finally:
        driver.close()
