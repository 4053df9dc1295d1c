"""Runtime settings written by `registry-p2p agent configure`, used by real ctr and skopeo.

The command runs as a separate process with --root, so nothing is written
to this machine's /etc. ctr reads the hosts directory under that root and
skopeo the registries.conf drop-in, with image names unchanged.
"""

import json
import os
import socket
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

import registry_p2p
from registry_p2p.sandbox.containerd import ctr_image_names, ctr_pull, write_hosts_toml
from registry_p2p.sandbox.dockerd import Dockerd
from registry_p2p.sandbox.image import RandomLayer, build_image, pull_to_layout, push_image
from registry_p2p.sandbox.p2p import AgentService, write_toml
from registry_p2p.sandbox.process import clean_environment, free_port

pytestmark = pytest.mark.integration

REPOSITORY = "runtimes/app"
MIN_BLOB_SIZE = 1024 * 1024
SOURCE_ROOT = str(Path(registry_p2p.__file__).resolve().parent.parent)


def configure(*args):
    """Run `registry-p2p agent configure` with ``args`` and return its result."""
    env = clean_environment()
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [SOURCE_ROOT, env.get("PYTHONPATH")]))
    return subprocess.run([sys.executable, "-m", "registry_p2p", "agent", "configure", *args],
                          capture_output=True, text=True, env=env, timeout=60, check=False)


def _hex(digest):
    return digest.split(":", 1)[1]


def _big_layers(image):
    return [layer for layer in image.layers if layer.size >= MIN_BLOB_SIZE]


def _assert_layers_over_p2p(agent, image):
    blobs = agent.stats()["blobs"]
    for layer in _big_layers(image):
        entry = blobs.get(_hex(layer.digest))
        assert entry is not None, f"{layer.digest} never reached {agent.url}: {blobs}"
        assert entry["source"] == "p2p", entry
        assert entry["from_sidecars"] + entry["from_peers"] >= layer.size, entry


def _direct_blob_gets(registry, image):
    """Return the digests of ``image``'s layers that the registry served without ?ns=.

    containerd adds ?ns= to requests for mirrors only, so these came from
    the hosts.toml ``server``, not through an agent.
    """
    served = set()
    for entry in registry.blob_requests():
        if entry["method"] == "GET" and entry["status"] == 200 and "ns=" not in entry["uri"]:
            served |= {layer.digest for layer in image.layers if layer.digest in entry["uri"]}

    return served


def _image(tmp_path_factory, name, seed):
    layers = [RandomLayer(1536 * 1024, seed=seed), RandomLayer(1280 * 1024, seed=seed + 1)]
    return build_image(tmp_path_factory.mktemp(f"image-{name}"), layers)


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    return {name: _image(tmp_path_factory, name, seed)
            for name, seed in {"p2p": 1100, "rejected": 1200, "dead": 1300,
                               "skopeo": 1400}.items()}


def _closed_port():
    port = free_port()
    with socket.socket() as probe:
        assert probe.connect_ex(("127.0.0.1", port)) != 0
    return port


def test_ctr_pull_through_configured_hosts(make_stack, images, tmp_path):
    stack = make_stack(agent_count=1, agent_options={"min_blob_size": MIN_BLOB_SIZE})
    agent = stack.agents[0]
    registry = stack.registry
    for tag in images:
        push_image(images[tag], f"{registry.hostport}/{REPOSITORY}:{tag}")
    root = tmp_path / "root"
    hosts_file = root / "etc/containerd/certs.d" / registry.hostport / "hosts.toml"
    hosts_file.parent.mkdir(parents=True)
    # An operator's mirror that is down stays in the file, after the agent.
    operator_mirror = f"http://127.0.0.1:{_closed_port()}"
    hosts_file.write_text(f'# operator settings\n[host."{operator_mirror}"]\n'
                          f'  capabilities = ["pull"]\n')

    result = configure("--runtime", "containerd", "-c", str(agent.config_path),
                       "--root", str(root))

    assert result.returncode == 0, result.stderr
    hosts = tomllib.loads(hosts_file.read_text())
    assert list(hosts["host"]) == [agent.url, operator_mirror]
    assert hosts["server"] == registry.url
    hosts_dir = root / "etc/containerd/certs.d"

    with Dockerd(tmp_path / "dockerd") as dockerd:
        through_agent = ctr_pull(dockerd.containerd_address,
                                 f"{registry.hostport}/{REPOSITORY}:p2p", hosts_dir)
        assert through_agent.returncode == 0, through_agent.stderr
        _assert_layers_over_p2p(agent, images["p2p"])

        # An agent that rejects the registry (403 DENIED, here because its
        # config lists another one) sends containerd on to the registry.
        rejecting = AgentService(tmp_path / "rejecting", [
            {"name": "elsewhere.invalid:5000", "url": "http://127.0.0.1:9", "sidecars": []}])
        rejecting_hosts = tmp_path / "rejecting-hosts"
        write_hosts_toml(rejecting_hosts, registry.hostport, rejecting.url)
        with rejecting:
            rejected = ctr_pull(dockerd.containerd_address,
                               f"{registry.hostport}/{REPOSITORY}:rejected", rejecting_hosts)
            rejecting_blobs = rejecting.stats()["blobs"]

        assert rejected.returncode == 0, rejected.stderr
        assert rejecting_blobs == {}
        assert _direct_blob_gets(registry, images["rejected"]) == {
            layer.digest for layer in images["rejected"].layers}

        agent.stop()
        with socket.socket() as probe:
            assert probe.connect_ex(("127.0.0.1", agent.port)) != 0
        dead = ctr_pull(dockerd.containerd_address, f"{registry.hostport}/{REPOSITORY}:dead",
                        hosts_dir)
        names = ctr_image_names(dockerd.containerd_address)

    assert dead.returncode == 0, dead.stderr
    for tag in ("p2p", "rejected", "dead"):
        assert f"{registry.hostport}/{REPOSITORY}:{tag}" in names
    assert _direct_blob_gets(registry, images["dead"]) == {
        layer.digest for layer in images["dead"].layers}


def test_skopeo_copy_through_configured_mirror(make_stack, images, tmp_path):
    stack = make_stack(agent_count=1, agent_options={"min_blob_size": MIN_BLOB_SIZE})
    agent = stack.agents[0]
    image = images["skopeo"]
    reference = f"{stack.registry.hostport}/{REPOSITORY}:skopeo"
    push_image(image, reference)
    root = tmp_path / "root"

    result = configure("--runtime", "crio", "-c", str(agent.config_path), "--root", str(root))

    assert result.returncode == 0, result.stderr
    drop_in = root / "etc/containers/registries.conf.d/registry-p2p.conf"
    mirror = tomllib.loads(drop_in.read_text())["registry"][0]["mirror"][0]
    assert mirror["location"] == (f"127.0.0.1:{agent.port}/"
                                  f"{stack.registry.hostport.replace(':', '_')}")

    pulled = pull_to_layout(reference, tmp_path / "layout", registries_conf=drop_in)

    assert pulled.returncode == 0, pulled.stderr
    for layer in image.layers:
        assert (tmp_path / "layout" / "blobs" / "sha256" / _hex(layer.digest)).exists()
    _assert_layers_over_p2p(agent, image)

    # With the agent stopped, containers/image pulls from the registry.
    agent.stop()
    without_agent = pull_to_layout(reference, tmp_path / "layout-without-agent",
                                   registries_conf=drop_in)

    assert without_agent.returncode == 0, without_agent.stderr
    for layer in image.layers:
        assert (tmp_path / "layout-without-agent" / "blobs" / "sha256"
                / _hex(layer.digest)).exists()


OPERATOR_DAEMON_JSON = """{
  "log-driver": "journald",
  "registry-mirrors": ["https://mirror.example.org"],
  "insecure-registries": ["registry.example.org:5000"]
}
"""
OPERATOR_HOSTS_TOML = """\
# Set up by the operator.
server = "https://registry.example.org"
ca = "/etc/ssl/registry-ca.pem"

[host."https://mirror.example.org"]
  capabilities = ["pull"]
"""


def test_configure_keeps_operator_settings(tmp_path):
    agent_config = tmp_path / "agent.toml"
    write_toml(agent_config, {"listen": "127.0.0.1:5080", "default_registry": "docker.io"},
               tables={"registries": [
                   {"name": "docker.io", "url": "https://registry-1.docker.io"},
                   {"name": "registry.example.org", "url": "https://registry.example.org"}]})
    root = tmp_path / "root"
    daemon_json = root / "etc/docker/daemon.json"
    hosts_toml = root / "etc/containerd/certs.d/registry.example.org/hosts.toml"
    for path, text in ((daemon_json, OPERATOR_DAEMON_JSON), (hosts_toml, OPERATOR_HOSTS_TOML)):
        path.parent.mkdir(parents=True)
        path.write_text(text)
    before = {path: (path.read_text(), path.stat().st_mtime_ns) for path in root.rglob("*")
              if path.is_file()}

    docker_diff = configure("--runtime", "docker", "-c", str(agent_config), "--root", str(root),
                            "--dry-run")
    containerd_diff = configure("--runtime", "containerd", "-c", str(agent_config),
                                "--root", str(root), "--dry-run")

    assert docker_diff.returncode == 0, docker_diff.stderr
    assert containerd_diff.returncode == 0, containerd_diff.stderr
    assert {path: (path.read_text(), path.stat().st_mtime_ns) for path in root.rglob("*")
            if path.is_file()} == before
    for diff in (docker_diff.stdout, containerd_diff.stdout):
        assert "nothing written" in diff
    assert f"+++ {daemon_json}" in docker_diff.stdout
    assert '+    "http://127.0.0.1:5080",' in docker_diff.stdout
    new_lines = [line for line in docker_diff.stdout.splitlines()
                 if line[:1] in "+ " and not line.startswith("+++")]
    for operator_key in ('"log-driver": "journald"', '"insecure-registries"',
                 '"registry.example.org:5000"', '"https://mirror.example.org"'):
        assert any(operator_key in line for line in new_lines), operator_key
    assert "registry-p2p-proxy.conf" in docker_diff.stdout
    assert f"+++ {hosts_toml}" in containerd_diff.stdout
    assert '+[host."http://127.0.0.1:5080"]' in containerd_diff.stdout
    for line in OPERATOR_HOSTS_TOML.splitlines():
        assert f"-{line}\n" not in containerd_diff.stdout, line

    for runtime in ("docker", "containerd"):
        first = configure("--runtime", runtime, "-c", str(agent_config), "--root", str(root))
        assert first.returncode == 0, first.stderr
    written = {path: path.read_text() for path in root.rglob("*") if path.is_file()}
    for runtime in ("docker", "containerd"):
        again = configure("--runtime", runtime, "-c", str(agent_config), "--root", str(root))
        assert again.returncode == 0, again.stderr
        assert all(line.endswith(": unchanged") for line in again.stdout.splitlines()), again.stdout

    assert {path: path.read_text() for path in root.rglob("*") if path.is_file()} == written
    daemon = json.loads(daemon_json.read_text())
    assert daemon == {"log-driver": "journald",
                      "registry-mirrors": ["http://127.0.0.1:5080", "https://mirror.example.org"],
                      "insecure-registries": ["registry.example.org:5000"]}
    hosts = tomllib.loads(hosts_toml.read_text())
    assert hosts["server"] == "https://registry.example.org"
    assert hosts["ca"] == "/etc/ssl/registry-ca.pem"
    assert list(hosts["host"]) == ["http://127.0.0.1:5080", "https://mirror.example.org"]
    assert hosts_toml.read_text().startswith("# Set up by the operator.\n")
