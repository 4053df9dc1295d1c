"""registry_p2p.sandbox against the real docker-registry, skopeo, dockerd and ctr.

Needs root (network namespaces, dockerd) and the Debian packages docker-registry,
skopeo, docker.io, containerd and apache2-utils.
"""

import gzip
import hashlib
import json
import os
import subprocess
import tarfile
import time
from pathlib import Path

import pytest
import requests

from registry_p2p.sandbox import SandboxError
from registry_p2p.sandbox.containerd import ctr_image_names, ctr_pull, write_hosts_toml
from registry_p2p.sandbox.dockerd import Dockerd
from registry_p2p.sandbox.image import DirectoryLayer, RandomLayer, build_image, push_image
from registry_p2p.sandbox.netns import NetworkNamespace
from registry_p2p.sandbox.process import ManagedProcess
from registry_p2p.sandbox.registry import Registry

pytestmark = pytest.mark.integration

REPOSITORY = "sandbox/image"
DOC_LAYER_MAX_BYTES = 5 * 1024 * 1024
# The registry logs a request after the client has read the response, so
# tests poll the log for up to this many seconds.
LOG_WAIT = 5.0


def _image_layers() -> list:
    return [
        RandomLayer(1024 * 1024, seed=1),
        RandomLayer(1024 * 1024, seed=2),
        DirectoryLayer([Path("/usr/share/doc")], max_bytes=DOC_LAYER_MAX_BYTES),
    ]


@pytest.fixture(scope="module")
def image(tmp_path_factory):
    return build_image(tmp_path_factory.mktemp("image"), _image_layers())


@pytest.fixture
def registry(tmp_path):
    with Registry(tmp_path / "registry") as registry:
        yield registry


@pytest.fixture
def http():
    """requests session that ignores proxy variables, so loopback requests stay local."""
    with requests.Session() as session:
        session.trust_env = False
        yield session


def _inspect_raw(reference: str, creds: str | None = None) -> bytes:
    argv = ["skopeo", "inspect", "--raw", "--tls-verify=false"]
    if creds is not None:
        argv += ["--creds", creds]
    result = subprocess.run([*argv, f"docker://{reference}"], capture_output=True, check=False)
    assert result.returncode == 0, result.stderr.decode()
    return result.stdout


def _wait_for_requests(registry: Registry, count: int, method: str | None = None) -> list[dict]:
    """Return the logged blob requests, only those with `method` if given.

    Waits until there are at least `count` of them, or LOG_WAIT seconds.
    """
    deadline = time.monotonic() + LOG_WAIT
    while True:
        logged = [entry for entry in registry.blob_requests() if method is None or entry["method"] == method]
        if len(logged) >= count or time.monotonic() >= deadline:
            return logged
        time.sleep(0.05)


def _processes_mentioning(text: str) -> list[str]:
    """Return the command lines of running processes that contain `text`."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ").decode()
            state = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if text in cmdline and state != "Z":
            found.append(f"{entry}: {cmdline}")

    return found


def _mount_points_under(directory: Path) -> list[str]:
    with open("/proc/self/mountinfo") as mountinfo:
        points = [line.split()[4] for line in mountinfo]

    return [point for point in points if point == str(directory) or point.startswith(f"{directory}/")]


def _pid_alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False

    return state != "Z"


def test_image_layout_is_valid_and_deterministic(image, tmp_path):
    config = json.loads((image.layout_dir / "blobs/sha256" / image.config_digest.split(":")[1]).read_bytes())
    assert config["architecture"] == "amd64"
    assert config["os"] == "linux"
    assert len(config["rootfs"]["diff_ids"]) == 3

    for layer, diff_id in zip(image.layers, config["rootfs"]["diff_ids"]):
        blob = (image.layout_dir / "blobs/sha256" / layer.digest.split(":")[1]).read_bytes()
        assert len(blob) == layer.size
        assert "sha256:" + hashlib.sha256(blob).hexdigest() == layer.digest
        assert "sha256:" + hashlib.sha256(gzip.decompress(blob)).hexdigest() == diff_id

    doc_blob = image.layout_dir / "blobs/sha256" / image.layers[2].digest.split(":")[1]
    with tarfile.open(doc_blob) as archive:
        members = archive.getmembers()
    content_bytes = sum(member.size for member in members if member.isfile())
    assert 0 < content_bytes <= DOC_LAYER_MAX_BYTES
    assert {member.uid for member in members} == {0}
    assert {member.mtime for member in members} == {0}
    assert members[0].name == "usr"

    rebuilt = build_image(tmp_path / "rebuilt", _image_layers())
    assert rebuilt.manifest_digest == image.manifest_digest


def test_push_keeps_digests(registry, image):
    reference = f"{registry.hostport}/{REPOSITORY}:v1"
    push_image(image, reference)

    raw_manifest = _inspect_raw(reference)
    manifest = json.loads(raw_manifest)
    assert [layer["digest"] for layer in manifest["layers"]] == [layer.digest for layer in image.layers]
    assert [layer["size"] for layer in manifest["layers"]] == [layer.size for layer in image.layers]
    assert manifest["config"]["digest"] == image.config_digest
    assert "sha256:" + hashlib.sha256(raw_manifest).hexdigest() == image.manifest_digest
    assert registry.blob_path(image.layers[0].digest).stat().st_size == image.layers[0].size


def test_blob_bytes_sent_counts_one_get(registry, image, http):
    push_image(image, f"{registry.hostport}/{REPOSITORY}:v1")
    layer = image.layers[2]
    blob_url = f"{registry.url}/v2/{REPOSITORY}/blobs/{layer.digest}"
    # skopeo sends no blob GET while pushing, so nothing is counted yet.
    assert registry.blob_bytes_sent() == 0

    response = http.get(blob_url)
    assert response.status_code == 200
    assert len(response.content) == layer.size
    _wait_for_requests(registry, 1, method="GET")
    assert registry.blob_bytes_sent() == layer.size

    # Neither a HEAD nor a GET of an unknown blob adds to the count.
    heads_before = len([entry for entry in registry.blob_requests() if entry["method"] == "HEAD"])
    assert http.head(blob_url).status_code == 200
    unknown_url = f"{registry.url}/v2/{REPOSITORY}/blobs/sha256:{'0' * 64}"
    assert http.get(unknown_url).status_code == 404
    gets = _wait_for_requests(registry, 2, method="GET")
    heads = _wait_for_requests(registry, heads_before + 1, method="HEAD")
    assert gets[-1]["status"] == 404
    assert gets[-1]["written"] > 0
    assert heads[-1]["status"] == 200
    assert heads[-1]["written"] == 0
    assert registry.blob_bytes_sent() == layer.size


def test_registry_with_htpasswd_users(tmp_path, image, http):
    with Registry(tmp_path / "registry", users={"alice": "secret"}) as registry:
        assert http.get(f"{registry.url}/v2/").status_code == 401
        assert http.get(f"{registry.url}/v2/", auth=("alice", "wrong")).status_code == 401
        assert http.get(f"{registry.url}/v2/", auth=("alice", "secret")).status_code == 200

        reference = f"{registry.hostport}/{REPOSITORY}:v1"
        push_image(image, reference, creds="alice:secret")
        manifest = json.loads(_inspect_raw(reference, creds="alice:secret"))
        assert manifest["config"]["digest"] == image.config_digest


def test_dockerd_pulls_from_namespace_registry(tmp_path, image):
    dockerd_dir = tmp_path / "dockerd"
    with NetworkNamespace() as netns:
        routes = netns.run(["ip", "-4", "route", "show"]).stdout
        assert "default" not in routes

        with Registry(tmp_path / "registry", host=netns.ns_address, netns=netns.name) as registry:
            reference = f"{registry.hostport}/{REPOSITORY}:v1"
            push_image(image, reference)

            with Dockerd(dockerd_dir, insecure_registries=[registry.hostport]) as dockerd:
                result = dockerd.pull(reference)
                assert result.returncode == 0, result.stderr
                assert image.config_digest in dockerd.image_ids()
            runtime_dir = dockerd.runtime_dir

            downloaded = {
                entry["uri"].rsplit("/", 1)[1]
                for entry in _wait_for_requests(registry, len(image.layers) + 1, method="GET")
                if entry["status"] == 200
            }
            assert {layer.digest for layer in image.layers} <= downloaded

        assert _processes_mentioning(str(dockerd_dir)) == []
        assert _processes_mentioning(str(runtime_dir)) == []
        assert _mount_points_under(dockerd_dir) == []
        assert _mount_points_under(runtime_dir) == []
        assert netns.pids() == []

    namespaces = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True).stdout
    assert netns.name not in namespaces
    assert not Path(f"/sys/class/net/{netns.host_interface}").exists()


def test_ctr_pulls_through_mirror(tmp_path, registry, image):
    push_image(image, f"{registry.hostport}/{REPOSITORY}:v1")

    # A registry name that differs from the mirror's host:port makes ctr add ?ns=.
    registry_host = f"localhost:{registry.port}"
    reference = f"{registry_host}/{REPOSITORY}:v1"
    hosts_dir = tmp_path / "hosts"
    write_hosts_toml(hosts_dir, registry_host, registry.url)

    with Dockerd(tmp_path / "dockerd") as dockerd:
        result = ctr_pull(dockerd.containerd_address, reference, hosts_dir)
        assert result.returncode == 0, result.stderr
        assert reference in ctr_image_names(dockerd.containerd_address)

    # ctr fetches the config and every layer; skopeo's push sent no blob GET.
    gets = _wait_for_requests(registry, len(image.layers) + 1, method="GET")
    uris = {entry["uri"] for entry in gets if entry["status"] == 200}
    for layer in image.layers:
        assert f"/v2/{REPOSITORY}/blobs/{layer.digest}?ns=localhost%3A{registry.port}" in uris
    assert [entry["uri"] for entry in gets if "?ns=" not in entry["uri"]] == []


def test_wait_http_reports_early_exit(tmp_path):
    missing_config = tmp_path / "missing.yml"
    process = ManagedProcess("docker-registry", ["docker-registry", "serve", str(missing_config)],
                             tmp_path / "registry.log")
    with process:
        with pytest.raises(SandboxError, match="exited with status") as error:
            process.wait_http("http://127.0.0.1:9/v2/", timeout=10)

    assert str(missing_config) in str(error.value)
    assert not process.running


def test_stop_kills_process_group(tmp_path):
    child_pid_file = tmp_path / "child.pid"
    # The shell and its background child both ignore SIGTERM, so stop() must
    # fall back to SIGKILL for the whole group.
    script = f"trap '' TERM; sleep 300 & echo $! > {child_pid_file}; wait"
    process = ManagedProcess("sh", ["sh", "-c", script], tmp_path / "sh.log").start()
    process.wait_for(child_pid_file.exists, 10, "the child's pid file")
    process.wait_for(lambda: child_pid_file.read_text().strip() != "", 10, "the child's pid")
    child_pid = int(child_pid_file.read_text())

    status = process.stop(timeout=1)

    assert status == -9
    assert not _pid_alive(process.pid)
    deadline = time.monotonic() + LOG_WAIT
    while _pid_alive(child_pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _pid_alive(child_pid)
