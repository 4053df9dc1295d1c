"""`registry-p2p agent configure`: dry runs write nothing, runs are idempotent, bad input is explained."""

import json
import tomllib

import pytest

from registry_p2p.cli import main
from registry_p2p.runtimes.command import agent_address

AGENT_CONFIG = """\
listen = "0.0.0.0:5080"
default_registry = "docker.io"

[[registries]]
name = "docker.io"
url = "https://registry-1.docker.io"

[[registries]]
name = "registry.example.org"
url = "https://registry.example.org"
sidecars = ["http://registry-host-1.example.org:5050"]
"""


@pytest.fixture
def agent_config(tmp_path):
    path = tmp_path / "agent.toml"
    path.write_text(AGENT_CONFIG)
    return path


def _files(root):
    return {str(path.relative_to(root)): path.read_text()
            for path in sorted(root.rglob("*")) if path.is_file()}


@pytest.mark.parametrize("runtime", ["containerd", "crio", "docker"])
def test_dry_run_writes_nothing(runtime, agent_config, tmp_path, capfd):
    root = tmp_path / "root"
    root.mkdir()

    status = main(["agent", "configure", "--runtime", runtime, "-c", str(agent_config),
                   "--root", str(root), "--dry-run"])

    assert status == 0
    assert _files(root) == {}
    output = capfd.readouterr().out
    assert "--- /dev/null" in output
    assert "nothing written" in output


@pytest.mark.parametrize("runtime", ["containerd", "crio", "docker"])
def test_second_run_changes_nothing(runtime, agent_config, tmp_path, capfd):
    root = tmp_path / "root"
    argv = ["agent", "configure", "--runtime", runtime, "-c", str(agent_config),
            "--root", str(root)]

    assert main(argv) == 0
    written = _files(root)
    capfd.readouterr()
    assert main(argv) == 0

    assert written
    assert _files(root) == written
    lines = capfd.readouterr().out.splitlines()
    assert lines
    assert all(line.endswith(": unchanged") for line in lines), lines


def test_config_before_subcommand(agent_config, tmp_path):
    root = tmp_path / "root"

    status = main(["agent", "-c", str(agent_config), "configure", "--runtime", "containerd",
                   "--root", str(root)])

    assert status == 0
    hosts = tomllib.loads((root / "etc/containerd/certs.d/registry.example.org/hosts.toml")
                          .read_text())
    assert list(hosts["host"]) == ["http://127.0.0.1:5080"]


def test_docker_run_writes_mirror(agent_config, tmp_path):
    root = tmp_path / "root"

    main(["agent", "configure", "--runtime", "docker", "-c", str(agent_config),
          "--root", str(root)])

    daemon = json.loads((root / "etc/docker/daemon.json").read_text())
    assert daemon == {"registry-mirrors": ["http://127.0.0.1:5080"]}


def test_missing_config_is_explained(tmp_path, capfd):
    status = main(["agent", "configure", "--runtime", "crio", "-c", str(tmp_path / "none.toml"),
                   "--root", str(tmp_path)])

    assert status == 2
    assert "cannot read config file" in capfd.readouterr().err


def test_invalid_daemon_json_is_explained(agent_config, tmp_path, capfd):
    daemon_json = tmp_path / "etc/docker/daemon.json"
    daemon_json.parent.mkdir(parents=True)
    daemon_json.write_text("{not json")

    status = main(["agent", "configure", "--runtime", "docker", "-c", str(agent_config),
                   "--root", str(tmp_path)])

    assert status == 2
    assert "is not valid JSON" in capfd.readouterr().err
    assert daemon_json.read_text() == "{not json"


def test_agent_without_config_is_explained(capfd):
    assert main(["agent"]) == 2
    assert "registry-p2p agent -c" in capfd.readouterr().err


@pytest.mark.parametrize("listen, address", [
    (("0.0.0.0", 5080), "127.0.0.1:5080"),
    (("127.0.0.1", 5080), "127.0.0.1:5080"),
    (("::", 5080), "[::1]:5080"),
    (("fd00::5", 5080), "[fd00::5]:5080"),
    (("node-1.example.org", 6000), "node-1.example.org:6000"),
])
def test_agent_address(listen, address):
    assert agent_address(listen) == address


def test_all_registries_only_for_containerd(agent_config, tmp_path, capfd):
    status = main(["agent", "-c", str(agent_config), "configure", "--runtime", "crio",
                   "--all-registries", "--root", str(tmp_path / "root")])

    assert status != 0
    assert "--all-registries applies to --runtime containerd only" in capfd.readouterr().err
    assert not (tmp_path / "root").exists()
