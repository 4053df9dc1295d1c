"""Through an agent, docker-registry responds as it does without one.

One module-scoped stack: docker-registry 2.8 in a network namespace (so
that dockerd sends its requests through its HTTP proxy), a sidecar and
three agents on loopback, and one dockerd. skopeo pulls through every
agent, ctr (the dockerd's containerd) through agent 1 as its mirror, and
dockerd through agent 2 as its HTTP proxy. Each test pushes its own
repository, so the tests do not depend on each other.
"""

import base64
import hashlib
import http.client
import json
import socket
import ssl
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import requests

from registry_p2p.sandbox.containerd import ctr_image_target, ctr_pull, write_hosts_toml
from registry_p2p.sandbox.dockerd import Dockerd
from registry_p2p.sandbox.image import RandomLayer, build_image, build_index, push_image
from registry_p2p.sandbox.netns import NetworkNamespace
from registry_p2p.sandbox.p2p import AgentService, SidecarService
from registry_p2p.sandbox.process import clean_environment, require_binary
from registry_p2p.sandbox.registry import Registry

pytestmark = pytest.mark.integration

MIB = 1024 * 1024
# Headers that differ between two responses of the registry itself, plus
# gunicorn's Server and the agent's own request id.
VOLATILE_HEADERS = {"date", "x-request-id", "connection", "keep-alive", "server"}
MANIFEST_ACCEPT = ", ".join([
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
    "application/vnd.docker.distribution.manifest.v2+json",
    "application/vnd.docker.distribution.manifest.v1+prettyjws",
])
# Every request here completes in milliseconds. The timeout only turns a
# hung connection into a failure instead of a stuck test run.
HANG_TIMEOUT = 60


def _hex(digest):
    return digest.split(":", 1)[1]


def _random_image(layout_dir, seed, architecture="amd64"):
    """An image with a 2 MiB layer, which agents fetch over BitTorrent, and a small one."""
    return build_image(layout_dir, [RandomLayer(2 * MIB, seed), RandomLayer(4096, seed + 1)],
                       architecture)


def _big_layer(image):
    return max(image.layers, key=lambda layer: layer.size)


def _stable_headers(response):
    return {name.lower(): value for name, value in response.headers.items()
            if name.lower() not in VOLATILE_HEADERS}


class Fidelity:
    """The module's registry, sidecar, agents and dockerd, and ways to pull through them."""

    def __init__(self, root):
        self.root = root
        self.namespace = None
        self.registry = None
        self.sidecar = None
        self.agents = []
        self.dockerd = None
        self.hosts_dir = root / "hosts"
        self.http = requests.Session()
        self.http.trust_env = False

    def start(self):
        self.namespace = NetworkNamespace().create()
        self.registry = Registry(
            self.root / "registry", host=self.namespace.ns_address, netns=self.namespace.name,
            config_overrides={"compatibility": {"schema1": {"enabled": True}}}).start()
        self.sidecar = SidecarService(self.root / "sidecar", self.registry.url,
                                      self.registry.root_directory).start()
        entry = {"name": self.registry.hostport, "url": self.registry.url,
                 "sidecars": [self.sidecar.url]}
        for index in range(3):
            self.agents.append(AgentService(self.root / f"agent{index}", [entry]))
            self.agents[-1].start()

        write_hosts_toml(self.hosts_dir, self.registry.hostport, self.agents[1].url)
        self.dockerd = Dockerd(self.root / "dockerd", insecure_registries=[self.registry.hostport],
                               http_proxy=self.agents[2].url).start()
        return self

    def stop(self):
        self.http.close()
        if self.dockerd is not None:
            self.dockerd.stop()
        for service in [*self.agents, self.sidecar]:
            if service is not None:
                service.stop()
        if self.registry is not None:
            self.registry.stop()
        if self.namespace is not None:
            self.namespace.remove()

    def reference(self, repository, tag="v1"):
        return f"{self.registry.hostport}/{repository}:{tag}"

    def skopeo_pull(self, agent, repository, tag="v1", arch=None):
        """Copy the image through `agent` into a new OCI layout; return skopeo's result and the manifest digest."""
        skopeo = require_binary("skopeo", "skopeo")
        (self.root / "skopeo").mkdir(exist_ok=True)
        layout = Path(tempfile.mkdtemp(dir=self.root / "skopeo"))
        digest_file = layout / "digest"
        source = f"docker://127.0.0.1:{agent.port}/{repository}:{tag}"
        argv = [skopeo, "copy", "--quiet", "--src-tls-verify=false", "--digestfile",
                str(digest_file)]
        if arch is not None:
            argv += ["--override-arch", arch]
        argv += [source, f"oci:{layout / 'image'}"]

        result = subprocess.run(argv, capture_output=True, text=True, timeout=300,
                                env=clean_environment(), check=False)
        digest = digest_file.read_text().strip() if digest_file.exists() else None

        return result, digest

    def ctr_pull(self, repository, tag="v1", platform=None):
        """Pull through agent 1 with ctr; return ctr's result and the digest the image points to."""
        reference = self.reference(repository, tag)
        result = ctr_pull(self.dockerd.containerd_address, reference, self.hosts_dir,
                          platform=platform)

        return result, ctr_image_target(self.dockerd.containerd_address, reference)

    def docker_pull(self, repository, tag="v1"):
        """Pull through agent 2 with dockerd; return docker's result and the image id (config digest)."""
        reference = self.reference(repository, tag)
        result = self.dockerd.pull(reference)
        inspect = self.dockerd.docker("image", "inspect", "--format", "{{.Id}}", reference)
        image_id = inspect.stdout.strip() if inspect.returncode == 0 else None

        return result, image_id

    def blob_source(self, agent, digest):
        """Return where `agent` got blob `digest` ("p2p", "registry", "fallback"), or None."""
        return agent.stats()["blobs"].get(_hex(digest), {}).get("source")

    def cached(self, agent, digest):
        hex_digest = _hex(digest)
        return (agent.cache_dir / "blobs" / hex_digest[:2] / f"{hex_digest}.info").exists()

    def direct(self, method, path, headers=None):
        return self.http.request(method, self.registry.url + path, headers=headers,
                                 allow_redirects=False, timeout=HANG_TIMEOUT)

    def through(self, agent, method, path, headers=None, addressing="mirror"):
        """Send a request through `agent` as a mirror, with ?ns=, or as an HTTP proxy."""
        if addressing == "proxy":
            return self.http.request(method, self.registry.url + path, headers=headers,
                                     proxies={"http": agent.url}, allow_redirects=False,
                                     timeout=HANG_TIMEOUT)

        params = {"ns": self.registry.hostport} if addressing == "ns" else None
        return self.http.request(method, agent.url + path, headers=headers, params=params,
                                 allow_redirects=False, timeout=HANG_TIMEOUT)


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    fidelity = Fidelity(tmp_path_factory.mktemp("fidelity"))
    try:
        yield fidelity.start()
    finally:
        fidelity.stop()


@pytest.fixture(scope="module")
def layouts(tmp_path_factory):
    return tmp_path_factory.mktemp("fidelity-images")


def test_retagged_image_pulled_on_every_agent(stack, layouts):
    repository = "fidelity/retag"
    first = _random_image(layouts / "retag-1", seed=100)
    second = _random_image(layouts / "retag-2", seed=110)
    push_image(first, stack.reference(repository))

    for agent in stack.agents:
        result, digest = stack.skopeo_pull(agent, repository)
        assert result.returncode == 0, result.stderr
        assert digest == first.manifest_digest
    ctr_result, ctr_target = stack.ctr_pull(repository)
    docker_result, image_id = stack.docker_pull(repository)
    assert ctr_result.returncode == 0, ctr_result.stderr
    assert ctr_target == first.manifest_digest
    assert docker_result.returncode == 0, docker_result.stderr
    assert image_id == first.config_digest

    push_image(second, stack.reference(repository))

    for agent in stack.agents:
        result, digest = stack.skopeo_pull(agent, repository)
        assert result.returncode == 0, result.stderr
        assert digest == second.manifest_digest
    ctr_result, ctr_target = stack.ctr_pull(repository)
    docker_result, image_id = stack.docker_pull(repository)
    assert ctr_result.returncode == 0, ctr_result.stderr
    assert ctr_target == second.manifest_digest
    assert docker_result.returncode == 0, docker_result.stderr
    assert image_id == second.config_digest
    for agent in stack.agents:
        assert stack.blob_source(agent, _big_layer(second).digest) == "p2p", agent.stats()


def test_deleted_manifest_not_pullable(stack, layouts):
    repository = "fidelity/deleted-manifest"
    image = _random_image(layouts / "deleted-manifest", seed=200)
    push_image(image, stack.reference(repository))
    for agent in stack.agents:
        assert stack.skopeo_pull(agent, repository)[0].returncode == 0
    assert stack.ctr_pull(repository)[0].returncode == 0
    assert stack.docker_pull(repository)[0].returncode == 0
    for agent in stack.agents:
        assert stack.cached(agent, _big_layer(image).digest)

    deleted = stack.through(stack.agents[0], "DELETE",
                            f"/v2/{repository}/manifests/{image.manifest_digest}")

    assert deleted.status_code == 202
    for agent in stack.agents:
        result, _ = stack.skopeo_pull(agent, repository)
        assert result.returncode != 0
        assert "manifest unknown" in result.stderr
        for reference in ("v1", image.manifest_digest):
            path = f"/v2/{repository}/manifests/{reference}"
            accept = {"Accept": MANIFEST_ACCEPT}
            through_agent = stack.through(agent, "GET", path, accept)
            direct = stack.direct("GET", path, accept)
            assert through_agent.status_code == direct.status_code == 404
            assert through_agent.content == direct.content
    ctr_result, _ = stack.ctr_pull(repository)
    assert ctr_result.returncode != 0
    docker_result, _ = stack.docker_pull(repository)
    assert docker_result.returncode != 0
    assert "not found" in docker_result.stderr


def test_deleted_blob_is_404_on_caching_agent(stack, layouts):
    repository = "fidelity/deleted-blob"
    image = _random_image(layouts / "deleted-blob", seed=300)
    layer = _big_layer(image)
    push_image(image, stack.reference(repository))
    agent = stack.agents[0]
    assert stack.skopeo_pull(agent, repository)[0].returncode == 0
    assert stack.cached(agent, layer.digest)
    path = f"/v2/{repository}/blobs/{layer.digest}"

    deleted = stack.through(agent, "DELETE", path)

    assert deleted.status_code == 202
    assert stack.cached(agent, layer.digest)
    for method in ("GET", "HEAD"):
        for addressing in ("mirror", "ns", "proxy"):
            through_agent = stack.through(agent, method, path, addressing=addressing)
            direct = stack.direct(method, path)
            assert through_agent.status_code == direct.status_code == 404
            assert through_agent.content == direct.content
            assert _stable_headers(through_agent) == _stable_headers(direct)
    errors = json.loads(stack.through(agent, "GET", path).content)["errors"]
    assert [error["code"] for error in errors] == ["BLOB_UNKNOWN"]


def test_multi_arch_index_pulled_per_platform(stack, layouts):
    repository = "fidelity/multi-arch"
    layout = layouts / "multi-arch"
    amd64 = _random_image(layout, seed=400, architecture="amd64")
    arm64 = _random_image(layout, seed=410, architecture="arm64")
    index = build_index(layout, [amd64, arm64])
    push_image(index, stack.reference(repository))
    amd64_layer = _big_layer(amd64).digest
    arm64_layer = _big_layer(arm64).digest
    skopeo_agent, ctr_agent, docker_agent = stack.agents

    arm64_result, arm64_digest = stack.skopeo_pull(skopeo_agent, repository, arch="arm64")
    ctr_result, ctr_target = stack.ctr_pull(repository, platform="linux/arm64")
    docker_result, image_id = stack.docker_pull(repository)

    assert arm64_result.returncode == 0, arm64_result.stderr
    assert arm64_digest == arm64.manifest_digest
    assert stack.blob_source(skopeo_agent, arm64_layer) == "p2p", skopeo_agent.stats()
    assert stack.blob_source(skopeo_agent, amd64_layer) is None
    assert ctr_result.returncode == 0, ctr_result.stderr
    assert ctr_target == index.manifest_digest
    assert stack.blob_source(ctr_agent, arm64_layer) == "p2p", ctr_agent.stats()
    assert stack.blob_source(ctr_agent, amd64_layer) is None
    assert docker_result.returncode == 0, docker_result.stderr
    assert image_id == amd64.config_digest
    assert stack.blob_source(docker_agent, amd64_layer) == "p2p", docker_agent.stats()
    assert stack.blob_source(docker_agent, arm64_layer) is None

    amd64_result, amd64_digest = stack.skopeo_pull(skopeo_agent, repository, arch="amd64")

    assert amd64_result.returncode == 0, amd64_result.stderr
    assert amd64_digest == amd64.manifest_digest
    assert stack.blob_source(skopeo_agent, amd64_layer) == "p2p", skopeo_agent.stats()


MANIFEST_KINDS = {
    "oci-manifest": "application/vnd.oci.image.manifest.v1+json",
    "oci-index": "application/vnd.oci.image.index.v1+json",
    "schema2": "application/vnd.docker.distribution.manifest.v2+json",
    "manifest-list": "application/vnd.docker.distribution.manifest.list.v2+json",
    "schema1": "application/vnd.docker.distribution.manifest.v1+prettyjws",
}


def _skopeo_push(layout, reference, *options):
    """Push an OCI layout with skopeo, with the manifest conversion that `options` select."""
    skopeo = require_binary("skopeo", "skopeo")
    result = subprocess.run([skopeo, "copy", "--quiet", "--dest-tls-verify=false", *options,
                             f"oci:{layout}", f"docker://{reference}"],
                            capture_output=True, text=True, timeout=300,
                            env=clean_environment(), check=False)
    assert result.returncode == 0, result.stderr


def _base64url(text):
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _schema1_payload(body):
    """Return the signed payload of a schema 1 manifest: the body without its signatures."""
    protected = json.loads(_base64url(json.loads(body)["signatures"][0]["protected"]))

    return body[:protected["formatLength"]] + _base64url(protected["formatTail"])


@pytest.fixture(scope="module")
def manifest_repositories(stack, layouts):
    """Push one repository per manifest kind and return {kind: repository}."""
    single = _random_image(layouts / "manifests-single", seed=500)
    multi = layouts / "manifests-multi"
    index = build_index(multi, [_random_image(multi, seed=510, architecture="amd64"),
                                _random_image(multi, seed=520, architecture="arm64")])
    repositories = {kind: f"fidelity/manifest-{kind}" for kind in MANIFEST_KINDS}

    push_image(single, stack.reference(repositories["oci-manifest"]))
    push_image(index, stack.reference(repositories["oci-index"]))
    _skopeo_push(single.layout_dir, stack.reference(repositories["schema2"]), "--format", "v2s2")
    _skopeo_push(multi, stack.reference(repositories["manifest-list"]), "--all",
                 "--format", "v2s2")
    _skopeo_push(single.layout_dir, stack.reference(repositories["schema1"]), "--format", "v2s1")

    return repositories


@pytest.mark.parametrize("addressing", ["mirror", "ns", "proxy"])
@pytest.mark.parametrize("by", ["tag", "digest"])
@pytest.mark.parametrize("method", ["GET", "HEAD"])
@pytest.mark.parametrize("kind", list(MANIFEST_KINDS))
def test_manifest_same_bytes_as_registry(stack, manifest_repositories, kind, method, by,
                                         addressing):
    repository = manifest_repositories[kind]
    accept = {"Accept": MANIFEST_ACCEPT}
    by_tag = stack.direct("GET", f"/v2/{repository}/manifests/v1", accept)
    assert by_tag.status_code == 200, by_tag.content
    digest = by_tag.headers["Docker-Content-Digest"]
    reference = "v1" if by == "tag" else digest
    path = f"/v2/{repository}/manifests/{reference}"

    direct = stack.direct(method, path, accept)
    through_agent = stack.through(stack.agents[0], method, path, accept, addressing)

    assert direct.status_code == 200
    assert through_agent.status_code == 200
    assert through_agent.headers["Content-Type"] == MANIFEST_KINDS[kind]
    assert through_agent.headers["Docker-Content-Digest"] == digest
    assert _stable_headers(through_agent) == _stable_headers(direct)
    if kind != "schema1":
        assert through_agent.content == direct.content
        assert "sha256:" + hashlib.sha256(by_tag.content).hexdigest() == digest
    elif method == "GET":
        # The registry signs a schema 1 manifest anew for every GET, so two
        # of its own responses differ in the signature. The digest covers
        # the signed payload.
        assert _schema1_payload(through_agent.content) == _schema1_payload(direct.content)
        assert "sha256:" + hashlib.sha256(_schema1_payload(direct.content)).hexdigest() == digest
    else:
        assert through_agent.content == direct.content == b""


def _blob_counts(agent, digest):
    """Return the agent's record of one blob without the BitTorrent byte counts.

    Those keep growing for a moment after a download finished, because
    libtorrent can report its last blocks late.
    """
    entry = agent.stats()["blobs"].get(_hex(digest), {})
    return {key: value for key, value in entry.items()
            if key not in ("from_sidecars", "from_peers")}


def test_blob_head_starts_no_download(stack, layouts):
    repository = "fidelity/blob-head"
    image = _random_image(layouts / "blob-head", seed=600)
    layer = _big_layer(image)
    push_image(image, stack.reference(repository))
    agent = stack.agents[0]
    path = f"/v2/{repository}/blobs/{layer.digest}"
    sidecar_before = stack.sidecar.stats()

    heads = [stack.through(agent, "HEAD", path, addressing=addressing)
             for addressing in ("mirror", "ns", "proxy")]
    direct = stack.direct("HEAD", path)
    sidecar_after = stack.sidecar.stats()

    for head in heads:
        assert head.status_code == direct.status_code == 200
        assert head.content == b""
        assert _stable_headers(head) == _stable_headers(direct)
    assert _hex(layer.digest) not in agent.stats()["blobs"]
    assert not stack.cached(agent, layer.digest)
    for counter in ("metainfo_served", "cache_fills", "seeded_blobs"):
        assert sidecar_after[counter] == sidecar_before[counter], counter

    # Once the blob is cached, a HEAD still transfers nothing.
    assert stack.through(agent, "GET", path).status_code == 200
    cached_before = _blob_counts(agent, layer.digest)
    cached_head = stack.through(agent, "HEAD", path)

    assert cached_head.status_code == 200
    assert _stable_headers(cached_head) == _stable_headers(direct)
    assert _blob_counts(agent, layer.digest) == cached_before
    assert cached_before["source"] == "p2p"


@pytest.fixture(scope="module")
def range_image(stack, layouts):
    image = _random_image(layouts / "range", seed=700)
    push_image(image, stack.reference("fidelity/range"))
    return image


def _layer_bytes(image, layer):
    return (image.layout_dir / "blobs" / "sha256" / _hex(layer.digest)).read_bytes()


def _assert_same_range(stack, agent, path, header, blob):
    direct = stack.direct("GET", path, {"Range": header})
    through_agent = stack.through(agent, "GET", path, {"Range": header})

    assert direct.status_code == 206
    assert through_agent.status_code == 206, (header, through_agent.content[:200])
    assert through_agent.content == direct.content
    first, _, last = through_agent.headers["Content-Range"].removeprefix("bytes ") \
        .partition("/")[0].partition("-")
    assert through_agent.content == blob[int(first):int(last) + 1]
    assert through_agent.headers["Content-Range"].endswith(f"/{len(blob)}")
    assert _stable_headers(through_agent) == _stable_headers(direct)


def test_range_on_uncached_blob(stack, range_image):
    layer = _big_layer(range_image)
    agent = stack.agents[1]
    path = f"/v2/fidelity/range/blobs/{layer.digest}"
    assert not stack.cached(agent, layer.digest)

    _assert_same_range(stack, agent, path, "bytes=100-4195", _layer_bytes(range_image, layer))

    assert stack.blob_source(agent, layer.digest) == "p2p", agent.stats()


@pytest.mark.parametrize("header", [
    "bytes=0-0", "bytes=100-4195", "bytes=-10", "bytes=2000000-", "bytes=1-999999999",
    "bytes=-999999999", "bytes=0-1,5-6",
])
def test_range_on_cached_blob(stack, range_image, header):
    layer = _big_layer(range_image)
    agent = stack.agents[0]
    path = f"/v2/fidelity/range/blobs/{layer.digest}"
    assert stack.through(agent, "GET", path).status_code == 200
    assert stack.cached(agent, layer.digest)
    blob = _layer_bytes(range_image, layer)

    if "," not in header:
        _assert_same_range(stack, agent, path, header, blob)
        return

    # Several ranges: a multipart/byteranges body, whose boundary is random.
    direct = stack.direct("GET", path, {"Range": header})
    through_agent = stack.through(agent, "GET", path, {"Range": header})
    assert direct.status_code == 206
    assert through_agent.status_code == 206
    assert through_agent.headers["Content-Type"].startswith("multipart/byteranges; boundary=")
    for part in (f"bytes 0-1/{len(blob)}", f"bytes 5-6/{len(blob)}"):
        assert f"Content-Range: {part}".encode() in through_agent.content


@dataclass
class ShortBodyResponse:
    status: int
    headers: http.client.HTTPMessage
    body: bytes


def _short_body_get(url, headers):
    """GET `url` and return the body the server sent, even if shorter than its Content-Length.

    The registry responds to an unsatisfiable Range with a one-line body
    and the blob's size as Content-Length, then closes the connection.
    urllib3 2 raises an error on such a body instead of returning it.
    """
    parts = urlsplit(url)
    connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=HANG_TIMEOUT)
    try:
        connection.request("GET", parts.path, headers=headers)
        response = connection.getresponse()
        try:
            body = response.read()
        except http.client.IncompleteRead as exc:
            body = exc.partial
        return ShortBodyResponse(response.status, response.headers, body)
    finally:
        connection.close()


@pytest.mark.parametrize("cached", [True, False], ids=["cached", "uncached"])
@pytest.mark.parametrize("past_end", [0, 10])
def test_unsatisfiable_range_is_416(stack, layouts, range_image, cached, past_end):
    if cached:
        image, agent = range_image, stack.agents[0]
        repository = "fidelity/range"
        assert stack.through(agent, "GET",
                             f"/v2/{repository}/blobs/{_big_layer(image).digest}").ok
    else:
        repository = f"fidelity/range-uncached-{past_end}"
        image, agent = _random_image(layouts / repository, seed=800 + past_end), stack.agents[2]
        push_image(image, stack.reference(repository))
    layer = _big_layer(image)
    path = f"/v2/{repository}/blobs/{layer.digest}"
    header = {"Range": f"bytes={layer.size + past_end}-"}

    direct = _short_body_get(stack.registry.url + path, header)
    through_agent = _short_body_get(agent.url + path, header)

    assert direct.status == 416
    assert through_agent.status == 416
    assert through_agent.headers["Content-Range"] == f"bytes */{layer.size}"
    if through_agent.headers["Content-Type"].startswith("application/json"):
        codes = [error["code"] for error in json.loads(through_agent.body)["errors"]]
        assert codes == ["RANGE_INVALID"]
    else:
        assert through_agent.body == direct.body
    assert stack.cached(agent, layer.digest) == cached
    if not cached:
        assert stack.blob_source(agent, layer.digest) is None, agent.stats()


def test_if_none_match_on_cached_blob(stack, range_image):
    layer = _big_layer(range_image)
    agent = stack.agents[0]
    path = f"/v2/fidelity/range/blobs/{layer.digest}"
    full = stack.through(agent, "GET", path)
    assert stack.cached(agent, layer.digest)
    condition = {"If-None-Match": f'"{layer.digest}"'}

    direct = stack.direct("GET", path, condition)
    through_agent = stack.through(agent, "GET", path, condition)

    assert full.status_code == 200
    assert _stable_headers(full) == _stable_headers(stack.direct("GET", path))
    assert direct.status_code == 304
    assert through_agent.status_code == 304
    assert through_agent.content == b""
    assert through_agent.headers["Etag"] == direct.headers["Etag"]


@pytest.fixture(scope="module")
def listed_repositories(stack, layouts):
    """Three repositories, two tags in one, for the catalog and tag list pages."""
    image = _random_image(layouts / "listed", seed=900)
    for repository, tag in [("fidelity/listed-a", "v1"), ("fidelity/listed-a", "v2"),
                            ("fidelity/listed-b", "v1"), ("fidelity/listed-c", "v1")]:
        push_image(image, stack.reference(repository, tag))
    return image


@pytest.mark.parametrize("addressing", ["mirror", "ns", "proxy"])
@pytest.mark.parametrize("path", [
    "/v2/",
    "/v2/_catalog",
    "/v2/_catalog?n=1",
    "/v2/_catalog?n=2&last=fidelity%2Flisted-a",
    "/v2/fidelity/listed-a/tags/list",
    "/v2/fidelity/listed-a/tags/list?n=1",
    "/v2/fidelity/missing/tags/list",
    "/v2/fidelity/listed-a/referrers/{manifest}",
    "/v2/fidelity/listed-a/referrers/{manifest}?artifactType=application%2Fexample",
])
def test_other_endpoint_passes_through(stack, listed_repositories, path, addressing):
    path = path.format(manifest=listed_repositories.manifest_digest)

    direct = stack.direct("GET", path)
    through_agent = stack.through(stack.agents[0], "GET", path, addressing=addressing)

    assert through_agent.status_code == direct.status_code
    assert through_agent.content == direct.content
    assert _stable_headers(through_agent) == _stable_headers(direct)


def test_tls_handshake_rejected_at_once(stack):
    """Check that a client trying HTTPS first (skopeo, podman) gets a response at once, as from the registry."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    targets = {"registry": (stack.registry.host, stack.registry.port),
               "agent": ("127.0.0.1", stack.agents[0].port),
               "sidecar": ("127.0.0.1", stack.sidecar.port)}

    for name, address in targets.items():
        with socket.create_connection(address, timeout=HANG_TIMEOUT) as sock:
            with pytest.raises(ssl.SSLError, match="WRONG_VERSION_NUMBER|wrong version number"):
                context.wrap_socket(sock).close()

    assert stack.through(stack.agents[0], "GET", "/v2/").status_code == 200
