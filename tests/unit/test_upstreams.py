"""The agent's allowlist: which registry a request goes to, and which are rejected."""

import pytest

from registry_p2p.agent.upstreams import Upstreams, path_segment, remove_first_segment
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


LOCAL = Registry(name="localhost:5000", url="http://localhost:5000", sidecars=())


@pytest.fixture
def three_upstreams():
    return Upstreams((MAIN, OTHER, LOCAL))


@pytest.mark.parametrize("path, expected", [
    ("/v2/registry.example.org/app/manifests/v1", MAIN),
    ("/v2/registry.example.org/team/app/blobs/sha256:abc", MAIN),
    ("/v2/Registry.Example.ORG/app/tags/list", MAIN),
    ("/v2/registry.example.org/app/blobs/uploads/", MAIN),
    ("/v2/10.0.0.5_5000/app/manifests/v1", OTHER),
    ("/v2/10.0.0.5:5000/app/manifests/v1", OTHER),
    ("/v2/localhost_5000/app/manifests/v1", LOCAL),
])
def test_path_prefix_selects_registry(three_upstreams, path, expected):
    assert three_upstreams.route(None, None, path) == (expected, True)


@pytest.mark.parametrize("path", [
    "/v2/",
    "/v2/app/manifests/v1",
    "/v2/team/app/blobs/sha256:abc",
    # An unknown first segment is never taken for a registry.
    "/v2/evil.example.com/app/manifests/v1",
    "/v2/registry.example.org.evil.com/app/manifests/v1",
    # A registry's URL host is no path prefix; only its name is.
    "/v2/10.0.0.5/app/manifests/v1",
    # Without a repository after it, the segment is the repository.
    "/v2/registry.example.org/manifests/v1",
    "/v2/registry.example.org/tags/list",
    "/v2/registry.example.org/blobs/sha256:abc",
    "/v2/_catalog",
])
def test_path_without_prefix_goes_to_default(three_upstreams, path):
    assert three_upstreams.route(None, None, path) == (MAIN, False)


def test_ns_wins_over_path_prefix(three_upstreams):
    # containerd sends ?ns=, so a repository of that registry may start with
    # another registry's name.
    assert three_upstreams.route("10.0.0.5:5000", None,
                                 "/v2/registry.example.org/app/manifests/v1") == (OTHER, False)


def test_proxy_host_wins_over_path_prefix(three_upstreams):
    assert three_upstreams.route(None, "localhost:5000",
                                 "/v2/10.0.0.5_5000/app/manifests/v1") == (LOCAL, False)


def test_route_denies_unconfigured_ns(three_upstreams):
    with pytest.raises(RegistryHTTPError) as raised:
        three_upstreams.route("evil.example.com", None, "/v2/registry.example.org/a/tags/list")

    assert raised.value.code == "DENIED"


@pytest.mark.parametrize("name, segment", [
    ("registry.example.org", "registry.example.org"),
    ("localhost:5000", "localhost_5000"),
    ("10.0.0.5:5000", "10.0.0.5_5000"),
    ("[::1]:5000", None),
])
def test_path_segment_of_name(name, segment):
    assert path_segment(name) == segment


@pytest.mark.parametrize("path, expected", [
    ("/v2/localhost_5000/app/manifests/v1", "/v2/app/manifests/v1"),
    ("/v2/localhost%3A5000/team/app/blobs/sha256:abc", "/v2/team/app/blobs/sha256:abc"),
])
def test_remove_first_segment(path, expected):
    assert remove_first_segment(path) == expected
