"""Unit tests of registry_p2p.digest: sha256 digests and repository names."""

import pytest

from registry_p2p.digest import is_digest, parse_digest, validate_api_path, validate_repository
from registry_p2p.errors import RegistryHTTPError

HEX = "0123456789abcdef" * 4

VALID_DIGEST = f"sha256:{HEX}"

INVALID_DIGESTS = [
    pytest.param(f"sha256:{HEX.upper()}", id="uppercase-hex"),
    pytest.param(f"sha256:{HEX[:-1]}F", id="one-uppercase-digit"),
    pytest.param(f"SHA256:{HEX}", id="uppercase-algorithm"),
    pytest.param(f"sha512:{HEX * 2}", id="sha512"),
    pytest.param(f"sha512:{HEX}", id="sha512-with-64-digits"),
    pytest.param(HEX, id="missing-prefix"),
    pytest.param(f":{HEX}", id="empty-algorithm"),
    pytest.param(f"sha256{HEX}", id="missing-colon"),
    pytest.param(f"sha256:{HEX[:63]}", id="63-digits"),
    pytest.param(f"sha256:{HEX}0", id="65-digits"),
    pytest.param(f"sha256:{HEX}\n", id="trailing-newline"),
    pytest.param(f" sha256:{HEX}", id="leading-space"),
    pytest.param(f"sha256:{HEX[:63]}g", id="non-hex-digit"),
    pytest.param(f"sha256:{HEX}/data", id="path-suffix"),
    pytest.param("sha256:", id="empty-hex"),
    pytest.param("", id="empty"),
    pytest.param(None, id="none"),
]


def test_parse_digest_valid():
    assert parse_digest(VALID_DIGEST) == HEX


def test_is_digest_valid():
    assert is_digest(VALID_DIGEST)


@pytest.mark.parametrize("value", INVALID_DIGESTS)
def test_parse_digest_invalid_status(value):
    with pytest.raises(RegistryHTTPError) as caught:
        parse_digest(value)

    assert caught.value.status == 400


@pytest.mark.parametrize("value", INVALID_DIGESTS)
def test_parse_digest_invalid_code(value):
    with pytest.raises(RegistryHTTPError) as caught:
        parse_digest(value)

    assert caught.value.code == "DIGEST_INVALID"


@pytest.mark.parametrize("value", INVALID_DIGESTS)
def test_is_digest_invalid(value):
    assert not is_digest(value)


def test_parse_digest_invalid_detail_names_value():
    with pytest.raises(RegistryHTTPError) as caught:
        parse_digest("sha256:xyz")

    assert "'sha256:xyz'" in caught.value.detail


# Repository names follow distribution 2.8's reference.NameRegexp, which
# the registry checks on every /v2/<name>/ route.

VALID_NAMES = [
    pytest.param("app", id="single"),
    pytest.param("0", id="one-digit"),
    pytest.param("library/ubuntu", id="two-components"),
    pytest.param("a/b/c/d/e/f/g", id="seven-components"),
    pytest.param("a.b", id="period"),
    pytest.param("a_b", id="underscore"),
    pytest.param("a__b", id="double-underscore"),
    pytest.param("a-b", id="dash"),
    pytest.param("a---b", id="dashes"),
    pytest.param("team-1/app.v2/build__x", id="mixed-separators"),
    pytest.param("a" * 255, id="255-chars"),
    pytest.param("a/" * 127 + "a", id="255-chars-nested"),
    pytest.param("localhost:5000/app", id="host-with-port"),
    pytest.param("Registry.Example.org/team/app", id="host-mixed-case"),
    pytest.param("Foo/bar", id="uppercase-host-part"),
    pytest.param("my-host.example:443/app", id="host-with-dash-and-port"),
]

INVALID_NAMES = [
    pytest.param("", id="empty"),
    pytest.param(None, id="none"),
    pytest.param("App", id="uppercase"),
    pytest.param("library/Ubuntu", id="uppercase-second-component"),
    pytest.param("localhost:5000/App", id="uppercase-after-host"),
    pytest.param(".app", id="leading-period"),
    pytest.param("_app", id="leading-underscore"),
    pytest.param("__app", id="leading-double-underscore"),
    pytest.param("-app", id="leading-dash"),
    pytest.param("app.", id="trailing-period"),
    pytest.param("app-", id="trailing-dash"),
    pytest.param("app_", id="trailing-underscore"),
    pytest.param("a..b", id="double-period"),
    pytest.param("a___b", id="triple-underscore"),
    pytest.param("a.-b", id="period-dash"),
    pytest.param("a._b", id="period-underscore"),
    pytest.param("/app", id="leading-slash"),
    pytest.param("app/", id="trailing-slash"),
    pytest.param("a//b", id="empty-component"),
    pytest.param("library/.app", id="component-leading-period"),
    pytest.param("a b", id="space"),
    pytest.param("app:latest", id="tag-suffix"),
    pytest.param("team/app:5000/x", id="port-in-second-component"),
    pytest.param("-host.example/app", id="host-leading-dash"),
    pytest.param("host-.example/app", id="host-trailing-dash"),
    pytest.param("host:port/app", id="host-non-numeric-port"),
    pytest.param("../app", id="parent-directory"),
    pytest.param("app\n", id="trailing-newline"),
    pytest.param("a" * 256, id="256-chars"),
    pytest.param("a/" * 127 + "ab", id="256-chars-nested"),
    pytest.param("localhost:5000/" + "a" * 241, id="256-chars-with-host"),
]


@pytest.mark.parametrize("name", VALID_NAMES)
def test_repository_valid(name):
    validate_repository(name)


@pytest.mark.parametrize("name", INVALID_NAMES)
def test_repository_invalid_status(name):
    with pytest.raises(RegistryHTTPError) as caught:
        validate_repository(name)

    assert caught.value.status == 400


@pytest.mark.parametrize("name", INVALID_NAMES)
def test_repository_invalid_code(name):
    with pytest.raises(RegistryHTTPError) as caught:
        validate_repository(name)

    assert caught.value.code == "NAME_INVALID"


@pytest.mark.parametrize("path", [
    "/v2/",
    "/v2/_catalog",
    "/v2/library/alpine/manifests/3.19",
    "/v2/library/alpine/blobs/uploads/",
    "/v2/localhost:5000/library/alpine/blobs/sha256:" + "a" * 64,
    "/v2/a/tags/b/tags/list",
    "/healthz",
])
def test_api_path_valid(path):
    validate_api_path(path)


@pytest.mark.parametrize("path", [
    "/v2/../etc/passwd/blobs/x",
    "/v2/library/./alpine/manifests/latest",
    "/v2//etc/passwd/manifests/latest",
    "/v2/library/alpine/blobs/uploads/../../x",
    "/v2/library/alpine/manifests/..",
    "/v2/library/Alpine/manifests/latest",
    "/v2/library\x00alpine/manifests/latest",
    "/v2/" + "a" * 300 + "/manifests/latest",
])
def test_api_path_invalid(path):
    with pytest.raises(RegistryHTTPError) as caught:
        validate_api_path(path)

    assert caught.value.status == 400
    assert caught.value.code == "NAME_INVALID"
