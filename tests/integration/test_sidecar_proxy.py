"""The sidecar's /v2/ proxy returns what the registry returns, byte for byte."""

import json

import pytest

from registry_p2p.sandbox.image import push_image

pytestmark = pytest.mark.integration

REPOSITORY = "proxy/app"
# Headers that differ between any two responses of the registry itself, and
# Server, which gunicorn adds to every response.
VOLATILE_HEADERS = {"date", "x-request-id", "connection", "keep-alive", "server"}
MANIFEST_TYPES = "application/vnd.oci.image.manifest.v1+json"


def _compare(http, registry_url, sidecar_url, method, path, headers=None):
    direct = http.request(method, registry_url + path, headers=headers, allow_redirects=False)
    proxied = http.request(method, sidecar_url + path, headers=headers, allow_redirects=False)
    return direct, proxied


def _stable_headers(response):
    return {name.lower(): value for name, value in response.headers.items()
            if name.lower() not in VOLATILE_HEADERS}


@pytest.fixture
def stack(make_stack, small_image):
    stack = make_stack(agent_count=0, registry_users={"alice": "wonderland"})
    push_image(small_image, f"{stack.registry.hostport}/{REPOSITORY}:v1",
               creds="alice:wonderland")
    return stack


@pytest.mark.parametrize("method, path_template, extra_headers", [
    ("GET", "/v2/", {}),
    ("GET", "/v2/{repo}/manifests/v1", {"Accept": MANIFEST_TYPES}),
    ("HEAD", "/v2/{repo}/manifests/v1", {"Accept": MANIFEST_TYPES}),
    ("GET", "/v2/{repo}/blobs/{layer}", {}),
    ("HEAD", "/v2/{repo}/blobs/{layer}", {}),
    ("GET", "/v2/{repo}/blobs/{layer}", {"Range": "bytes=100-4195"}),
    ("GET", "/v2/{repo}/blobs/sha256:" + "ab" * 32, {}),
    ("GET", "/v2/{repo}/tags/list", {}),
    ("GET", "/v2/{repo}/manifests/missing", {"Accept": MANIFEST_TYPES}),
])
def test_sidecar_proxy_matches_registry(stack, small_image, http, method, path_template,
                                        extra_headers):
    layer = max(small_image.layers, key=lambda item: item.size)
    path = path_template.format(repo=REPOSITORY, layer=layer.digest)
    auth = {"Authorization": "Basic YWxpY2U6d29uZGVybGFuZA=="}

    direct, proxied = _compare(http, stack.registry.url, stack.sidecar.url, method, path,
                               {**auth, **extra_headers})

    assert proxied.status_code == direct.status_code
    assert proxied.content == direct.content
    assert _stable_headers(proxied) == _stable_headers(direct)


def test_sidecar_proxy_passes_challenge(stack, http):
    direct, proxied = _compare(http, stack.registry.url, stack.sidecar.url, "GET",
                               f"/v2/{REPOSITORY}/manifests/v1")

    assert proxied.status_code == 401
    assert proxied.headers["WWW-Authenticate"] == direct.headers["WWW-Authenticate"]
    assert json.loads(proxied.content) == json.loads(direct.content)


def test_sidecar_upload_location_points_back(stack, http):
    auth = {"Authorization": "Basic YWxpY2U6d29uZGVybGFuZA=="}
    response = http.post(f"{stack.sidecar.url}/v2/{REPOSITORY}/blobs/uploads/", headers=auth,
                         allow_redirects=False)

    assert response.status_code == 202
    assert response.headers["Location"].startswith(stack.sidecar.url + "/v2/")
    assert "Docker-Upload-UUID" in response.headers
