"""Credentials stay the registry's: real clients pull private images through an agent.

Each test runs against two stacks, one registry with htpasswd (Basic)
authentication and one with token authentication from the sandbox's token
service. A stack has a registry in a network namespace (so that dockerd
sends its requests through agent A as an HTTP proxy), a sidecar, agent A
and agent B. skopeo, ctr and dockerd pull with credentials through agent A
and must get the layers over BitTorrent. Then clients without valid
credentials ask agent A, which has a blob cached and seeds it, agent B,
which does not have it, and the sidecar's torrent endpoint for that blob.
"""

import base64
import contextlib
import re
from dataclasses import dataclass, field

import pytest
import requests

from registry_p2p.sandbox.containerd import ctr_image_names, ctr_pull, write_hosts_toml
from registry_p2p.sandbox.dockerd import Dockerd
from registry_p2p.sandbox.image import (RandomLayer, build_image, pull_to_layout, push_image,
                                        write_auth_file, write_registries_conf)
from registry_p2p.sandbox.netns import NetworkNamespace
from registry_p2p.sandbox.p2p import AgentService, SidecarService
from registry_p2p.sandbox.pull import pull_image
from registry_p2p.sandbox.registry import Registry
from registry_p2p.sandbox.token_issuer import TokenIssuer

pytestmark = pytest.mark.integration

REPOSITORY = "private/app"
OTHER_REPOSITORY = "private/other"
USER = "alice"
PASSWORD = "alice-password-5713"
WRONG_PASSWORD = "wrong-password-2861"
MIN_BLOB_SIZE = 1024 * 1024
# One image per client, so that every client's pull fetches its layers
# over BitTorrent instead of from agent A's cache. "probe" is the image
# whose blob the rejection tests ask for; "other" is pushed to
# OTHER_REPOSITORY.
IMAGE_SEEDS = {"skopeo-mirror": 100, "skopeo-source": 200, "ctr": 300, "docker": 400,
               "probe": 500, "other": 600}
RANGE = (1024, 2047)
JWT = re.compile(r"eyJ[A-Za-z0-9_-]+\.eyJ[A-Za-z0-9_-]+")


def _hex(digest):
    return digest.split(":", 1)[1]


def _basic(user, password):
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode("ascii")


def _big_layers(image):
    return [layer for layer in image.layers if layer.size >= MIN_BLOB_SIZE]


def _layer_bytes(image, layer):
    return (image.layout_dir / "blobs" / "sha256" / _hex(layer.digest)).read_bytes()


def _contains_blob_bytes(body, blob):
    """Return whether ``body`` contains any 64-byte window of ``blob`` that the tests request."""
    offsets = [0, RANGE[0], len(blob) // 2, len(blob) - 64]
    return any(blob[offset:offset + 64] in body for offset in offsets)


class _AuthorizationHeader(requests.auth.AuthBase):
    """A fixed Authorization header, Basic or Bearer, for requests."""

    def __init__(self, value):
        self.value = value

    def __call__(self, prepared):
        prepared.headers["Authorization"] = self.value
        return prepared


@dataclass
class AuthStack:
    kind: str
    registry: Registry
    sidecar: SidecarService
    agent_a: AgentService
    agent_b: AgentService
    issuer: TokenIssuer | None
    # Authorization header values (None: no header) that the registry must reject.
    bad_credentials: dict = field(default_factory=dict)

    def agent(self, name):
        return {"A": self.agent_a, "B": self.agent_b}[name]

    def authorization(self, repository=REPOSITORY, password=PASSWORD):
        """Return the Authorization value that a client sends after logging in with ``password``.

        With token auth this is the token flow that clients run: a Basic
        request to the realm for a pull token of ``repository``.
        """
        if self.issuer is None:
            return _basic(USER, password)

        with requests.Session() as http:
            http.trust_env = False
            response = http.get(self.issuer.realm, auth=(USER, password), timeout=30, params={
                "service": self.issuer.service, "scope": f"repository:{repository}:pull"})
        response.raise_for_status()

        return "Bearer " + response.json()["token"]


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    built = {}
    for name, seed in IMAGE_SEEDS.items():
        if name == "other":
            layers = [RandomLayer(64 * 1024, seed=seed)]
        else:
            layers = [RandomLayer(1536 * 1024, seed=seed), RandomLayer(1280 * 1024, seed=seed + 1)]
        built[name] = build_image(tmp_path_factory.mktemp(f"image-{name}"), layers)

    return built


@pytest.fixture(scope="module")
def forged_token(tmp_path_factory):
    """A pull token for REPOSITORY in the right format, signed by a key no registry trusts."""
    with TokenIssuer(tmp_path_factory.mktemp("forger"), {USER: PASSWORD}) as forger:
        return forger.issue(USER, [{"type": "repository", "name": REPOSITORY,
                                    "actions": ["pull"]}])


@pytest.fixture(scope="module", params=["htpasswd", "token"])
def stack(request, tmp_path_factory, images, forged_token):
    kind = request.param
    root = tmp_path_factory.mktemp(f"auth-{kind}")
    with contextlib.ExitStack() as cleanup:
        namespace = cleanup.enter_context(NetworkNamespace())
        issuer = None
        if kind == "token":
            issuer = cleanup.enter_context(TokenIssuer(root / "issuer", {USER: PASSWORD}))
            registry = Registry(root / "registry", host=namespace.ns_address,
                                netns=namespace.name,
                                config_overrides={"auth": issuer.registry_auth()})
        else:
            registry = Registry(root / "registry", host=namespace.ns_address,
                                netns=namespace.name, users={USER: PASSWORD})
        cleanup.enter_context(registry)

        for name, image in images.items():
            repository, tag = (OTHER_REPOSITORY, "v1") if name == "other" else (REPOSITORY, name)
            push_image(image, f"{registry.hostport}/{repository}:{tag}",
                       creds=f"{USER}:{PASSWORD}")

        sidecar = cleanup.enter_context(
            SidecarService(root / "sidecar", registry.url, registry.root_directory))
        entry = {"name": registry.hostport, "url": registry.url, "sidecars": [sidecar.url]}
        agent_a = cleanup.enter_context(AgentService(root / "agent-a", [entry],
                                                     min_blob_size=MIN_BLOB_SIZE))
        agent_b = cleanup.enter_context(AgentService(root / "agent-b", [entry],
                                                     min_blob_size=MIN_BLOB_SIZE))

        built = AuthStack(kind, registry, sidecar, agent_a, agent_b, issuer)
        built.bad_credentials = {
            "no credentials": None,
            "wrong password": _basic(USER, WRONG_PASSWORD),
            "forged token": "Bearer " + forged_token,
        }
        if issuer is not None:
            built.bad_credentials["token for another repository"] = built.authorization(
                OTHER_REPOSITORY)

        yield built


@pytest.fixture(scope="module")
def dockerd(stack, tmp_path_factory):
    """A dockerd whose HTTP proxy is agent A; Go sends requests for the namespace's address through it."""
    with Dockerd(tmp_path_factory.mktemp(f"dockerd-{stack.kind}"),
                 insecure_registries=[stack.registry.hostport],
                 http_proxy=stack.agent_a.url) as started:
        yield started


@pytest.fixture(scope="module")
def probe_layer(stack, images):
    """Pull the probe image through agent A with credentials; return its biggest layer.

    Agent A then has the layer cached and seeds it; agent B has never seen it.
    """
    image = images["probe"]
    result = pull_image(stack.agent_a.url, stack.registry.hostport, REPOSITORY, "probe",
                        auth=_AuthorizationHeader(stack.authorization()))
    assert result.complete, result

    layer = max(image.layers, key=lambda item: item.size)
    blobs = stack.agent_a.stats()["blobs"]
    assert blobs[_hex(layer.digest)]["source"] == "p2p", blobs

    return layer, _layer_bytes(image, layer)


def _assert_layers_over_p2p(agent, image):
    blobs = agent.stats()["blobs"]
    for layer in _big_layers(image):
        entry = blobs.get(_hex(layer.digest))
        assert entry is not None, f"{layer.digest} never reached {agent.url}: {blobs}"
        assert entry["source"] == "p2p", entry
        assert entry["from_sidecars"] + entry["from_peers"] >= layer.size, entry


def _cached(agent, digest):
    hex_digest = _hex(digest)
    return (agent.cache_dir / "blobs" / hex_digest[:2] / hex_digest).exists()


def test_skopeo_mirror_with_auth_file(stack, images, tmp_path):
    image = images["skopeo-mirror"]
    agent_host = f"127.0.0.1:{stack.agent_a.port}"
    registries_conf = write_registries_conf(tmp_path / "registries.conf",
                                            stack.registry.hostport, agent_host)
    # containers/image looks up the credentials for a mirror under the
    # mirror's own host name, not under the registry's.
    authfile = write_auth_file(tmp_path / "auth.json", {agent_host: (USER, PASSWORD)})

    result = pull_to_layout(f"{stack.registry.hostport}/{REPOSITORY}:skopeo-mirror",
                            tmp_path / "layout", authfile=authfile,
                            registries_conf=registries_conf)

    assert result.returncode == 0, result.stderr
    for layer in image.layers:
        assert (tmp_path / "layout" / "blobs" / "sha256" / _hex(layer.digest)).exists()
    _assert_layers_over_p2p(stack.agent_a, image)


def test_skopeo_from_agent_with_creds(stack, images, tmp_path):
    image = images["skopeo-source"]

    result = pull_to_layout(f"127.0.0.1:{stack.agent_a.port}/{REPOSITORY}:skopeo-source",
                            tmp_path / "layout", creds=f"{USER}:{PASSWORD}")

    assert result.returncode == 0, result.stderr
    for layer in image.layers:
        assert (tmp_path / "layout" / "blobs" / "sha256" / _hex(layer.digest)).exists()
    _assert_layers_over_p2p(stack.agent_a, image)


def test_ctr_mirror_with_user(stack, images, dockerd, tmp_path):
    image = images["ctr"]
    reference = f"{stack.registry.hostport}/{REPOSITORY}:ctr"
    hosts_dir = tmp_path / "hosts"
    write_hosts_toml(hosts_dir, stack.registry.hostport, stack.agent_a.url)

    result = ctr_pull(dockerd.containerd_address, reference, hosts_dir,
                      user=f"{USER}:{PASSWORD}")

    assert result.returncode == 0, result.stderr
    assert reference in ctr_image_names(dockerd.containerd_address)
    _assert_layers_over_p2p(stack.agent_a, image)


def test_docker_login_through_proxy(stack, images, dockerd):
    image = images["docker"]
    reference = f"{stack.registry.hostport}/{REPOSITORY}:docker"

    login = dockerd.login(stack.registry.hostport, USER, PASSWORD)
    pull = dockerd.pull(reference)

    assert login.returncode == 0, login.stderr
    assert pull.returncode == 0, pull.stderr
    assert image.config_digest in dockerd.image_ids()
    _assert_layers_over_p2p(stack.agent_a, image)


@pytest.mark.parametrize("agent_name", ["A", "B"])
def test_ping_challenge_passed_through(stack, agent_name, http):
    agent = stack.agent(agent_name)

    direct = http.get(f"{stack.registry.url}/v2/")
    through_agent = http.get(f"{agent.url}/v2/")

    assert through_agent.status_code == 401
    assert through_agent.headers["WWW-Authenticate"] == direct.headers["WWW-Authenticate"]
    assert through_agent.content == direct.content


def test_cached_blob_served_with_credentials(stack, probe_layer, http):
    layer, blob = probe_layer
    before = stack.agent_a.stats()["blobs"][_hex(layer.digest)].get("from_cache", 0)

    response = http.get(f"{stack.agent_a.url}/v2/{REPOSITORY}/blobs/{layer.digest}",
                        headers={"Authorization": stack.authorization()})

    assert response.status_code == 200
    assert response.content == blob
    after = stack.agent_a.stats()["blobs"][_hex(layer.digest)]["from_cache"]
    assert after == before + layer.size


@pytest.mark.parametrize("agent_name", ["A", "B"])
@pytest.mark.parametrize("request_kind", ["GET", "HEAD", "Range"])
def test_agent_rejects_bad_credentials(stack, probe_layer, agent_name, request_kind, http):
    layer, blob = probe_layer
    agent = stack.agent(agent_name)
    path = f"/v2/{REPOSITORY}/blobs/{layer.digest}"
    method = "HEAD" if request_kind == "HEAD" else "GET"
    metainfo_served = stack.sidecar.stats()["metainfo_served"]
    assert _cached(stack.agent_a, layer.digest)
    assert not _cached(stack.agent_b, layer.digest)

    for case, authorization in stack.bad_credentials.items():
        headers = {"Authorization": authorization} if authorization else {}
        if request_kind == "Range":
            headers["Range"] = f"bytes={RANGE[0]}-{RANGE[1]}"

        direct = http.request(method, stack.registry.url + path, headers=headers)
        through_agent = http.request(method, agent.url + path, headers=headers)

        assert through_agent.status_code == 401, case
        assert direct.status_code == 401, case
        assert (through_agent.headers["WWW-Authenticate"]
                == direct.headers["WWW-Authenticate"]), case
        assert through_agent.content == direct.content, case
        assert not _contains_blob_bytes(through_agent.content, blob), case

    assert not _cached(stack.agent_b, layer.digest)
    assert _hex(layer.digest) not in stack.agent_b.stats()["blobs"]
    assert stack.sidecar.stats()["metainfo_served"] == metainfo_served


@pytest.mark.parametrize("method", ["GET", "HEAD"])
def test_torrent_endpoint_rejects_bad_credentials(stack, probe_layer, method, http):
    layer, _ = probe_layer
    blob_path = f"/v2/{REPOSITORY}/blobs/{layer.digest}"
    torrent_url = f"{stack.sidecar.url}/p2p/v1/{REPOSITORY}/blobs/{layer.digest}/torrent"
    metainfo_served = stack.sidecar.stats()["metainfo_served"]

    for case, authorization in stack.bad_credentials.items():
        headers = {"Authorization": authorization} if authorization else {}

        direct = http.head(stack.registry.url + blob_path, headers=headers)
        response = http.request(method, torrent_url, headers=headers)

        assert response.status_code == 401, case
        assert response.headers["WWW-Authenticate"] == direct.headers["WWW-Authenticate"], case
        assert response.headers["Content-Type"] != "application/x-bittorrent", case
        assert b"pieces" not in response.content, case

    assert stack.sidecar.stats()["metainfo_served"] == metainfo_served


def test_cached_blob_not_in_other_repository(stack, probe_layer, http):
    layer, blob = probe_layer
    path = f"/v2/{OTHER_REPOSITORY}/blobs/{layer.digest}"
    headers = {"Authorization": stack.authorization(OTHER_REPOSITORY)}

    direct = http.get(stack.registry.url + path, headers=headers)
    torrent = http.get(f"{stack.sidecar.url}/p2p/v1/{OTHER_REPOSITORY}/blobs/{layer.digest}"
                       f"/torrent", headers=headers)

    assert direct.status_code == 404
    assert torrent.status_code == 404
    assert b"pieces" not in torrent.content
    for agent in (stack.agent_a, stack.agent_b):
        response = http.get(agent.url + path, headers=headers)
        assert response.status_code == 404, agent.url
        assert response.content == direct.content, agent.url
        assert not _contains_blob_bytes(response.content, blob), agent.url


def test_logs_contain_no_secret(stack, probe_layer, http):
    layer, _ = probe_layer
    good = stack.authorization()
    blob_path = f"/v2/{REPOSITORY}/blobs/{layer.digest}"
    torrent_url = f"{stack.sidecar.url}/p2p/v1/{REPOSITORY}/blobs/{layer.digest}/torrent"
    # Requests with good and bad credentials, so that this test reads logs
    # with both in them even when it runs alone. Agent B gets no good
    # credentials for the blob, so that it keeps not having it.
    http.get(stack.agent_a.url + blob_path, headers={"Authorization": good})
    http.get(torrent_url, headers={"Authorization": good})
    for authorization in stack.bad_credentials.values():
        headers = {"Authorization": authorization} if authorization else {}
        for agent in (stack.agent_a, stack.agent_b):
            http.get(agent.url + blob_path, headers={**headers, "Range": "bytes=0-9"})
            http.head(agent.url + blob_path, headers=headers)
            http.get(f"{agent.url}/v2/{REPOSITORY}/manifests/probe", headers=headers)
        http.get(torrent_url, headers=headers)

    secrets = [PASSWORD, WRONG_PASSWORD, _basic(USER, PASSWORD).split()[1],
               _basic(USER, WRONG_PASSWORD).split()[1]]
    secrets += [value.split()[1] for value in [good, *stack.bad_credentials.values()]
                if value and value.startswith("Bearer ")]
    logs = {
        stack.agent_a.workdir / "agent.log": "returned 401 for HEAD",
        stack.agent_b.workdir / "agent.log": "returned 401 for HEAD",
        stack.sidecar.workdir / "sidecar.log": "401 UNAUTHORIZED",
    }
    for path, rejection in logs.items():
        text = path.read_text()
        assert rejection in text, path
        for secret in secrets:
            assert secret not in text, f"{path} contains a credential"
        assert JWT.search(text) is None, f"{path} contains a JWT"
