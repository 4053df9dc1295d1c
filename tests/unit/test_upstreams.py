"""The agent's allowlist: which registry a request goes to, and which are rejected."""

import pytest

from registry_p2p.agent.upstreams import Upstreams
from registry_p2p.config import Registry
from registry_p2p.errors import ConfigError, RegistryHTTPError

MAIN = Registry(name="registry.example.org", url="https://registry.example.org",
                sidecars=("http://side-1:5050", "http://side-2:5050"))
OTHER = Registry(name="10.0.0.5:5000", url="http://10.0.0.5:5000", sidecars=("http://side-1:5050",))


@pytest.fixture
def upstreams():
    return Upstreams((MAIN, OTHER))


def test_plain_request_goes_to_default(upstreams):
    assert upstreams.resolve(None, None) is MAIN


def test_named_default_registry():
    assert Upstreams((MAIN, OTHER), "10.0.0.5:5000").resolve(None, None) is OTHER


def test_ns_selects_registry(upstreams):
    assert upstreams.resolve("10.0.0.5:5000", None) is OTHER


def test_ns_is_case_insensitive(upstreams):
    assert upstreams.resolve("Registry.Example.ORG", None) is MAIN


def test_proxy_host_selects_registry(upstreams):
    assert upstreams.resolve(None, "10.0.0.5:5000") is OTHER


def test_url_host_matches_registry():
    by_url = Registry(name="alias.example.org", url="http://10.0.0.9:5000", sidecars=())

    assert Upstreams((by_url,)).resolve(None, "10.0.0.9:5000") is by_url


@pytest.mark.parametrize("ns, proxy_host", [
    ("evil.example.com", None),
    (None, "evil.example.com"),
    ("registry.example.org", "evil.example.com"),
    ("evil.example.com", "registry.example.org"),
    ("registry.example.org:443", None),
])
def test_unconfigured_registry_denied(upstreams, ns, proxy_host):
    with pytest.raises(RegistryHTTPError) as raised:
        upstreams.resolve(ns, proxy_host)

    assert raised.value.status == 403
    assert raised.value.code == "DENIED"


def test_no_registries_is_config_error():
    with pytest.raises(ConfigError, match=r"no \[\[registries\]\] configured"):
        Upstreams(())


def test_unknown_default_is_config_error():
    with pytest.raises(ConfigError, match="default_registry 'nowhere'"):
        Upstreams((MAIN,), "nowhere")


def test_announce_urls_deduplicated(upstreams):
    assert upstreams.announce_urls() == ["http://side-1:5050/announce",
                                         "http://side-2:5050/announce"]
