"""containerd hosts.toml files: the agent first, the registry as server, the operator's settings kept."""

import tomllib

import pytest

from registry_p2p.config import Registry
from registry_p2p.runtimes.changes import ConfigureError
from registry_p2p.runtimes.containerd import (hosts_directory, merge_hosts_toml, plan,
                                              render_hosts_toml)

AGENT = "http://127.0.0.1:5080"
SERVER = "https://registry.example.org"
REGISTRY = Registry(name="registry.example.org", url=SERVER, sidecars=())
LOCAL = Registry(name="localhost:5000", url="http://localhost:5000", sidecars=())

OPERATOR_FILE = """\
# Mirrors of registry.example.org, kept by the operator.
server = "https://registry.example.org"
ca = "/etc/containerd/certs.d/registry.example.org/ca.pem"

[host."https://mirror.example.org"]
  capabilities = ["pull"]  # the mirror cannot resolve tags
  skip_verify = true

[host."https://mirror.example.org".header]
  x-team = ["ops"]
"""


def test_rendered_file():
    parsed = tomllib.loads(render_hosts_toml(SERVER, AGENT))

    assert parsed == {"server": SERVER, "host": {AGENT: {"capabilities": ["pull", "resolve"]}}}


def test_merge_keeps_operator_settings():
    merged = merge_hosts_toml(OPERATOR_FILE, SERVER, AGENT, "hosts.toml")
    parsed = tomllib.loads(merged)
    original = tomllib.loads(OPERATOR_FILE)

    assert list(parsed["host"]) == [AGENT, "https://mirror.example.org"]
    assert parsed["host"][AGENT] == {"capabilities": ["pull", "resolve"]}
    assert parsed["host"]["https://mirror.example.org"] == original["host"]["https://mirror.example.org"]
    assert parsed["server"] == original["server"]
    assert parsed["ca"] == original["ca"]
    assert "# the mirror cannot resolve tags" in merged
    assert merged.startswith("# Mirrors of registry.example.org")


def test_merge_is_idempotent():
    merged = merge_hosts_toml(OPERATOR_FILE, SERVER, AGENT, "hosts.toml")

    assert merge_hosts_toml(merged, SERVER, AGENT, "hosts.toml") == merged


def test_merge_adds_missing_server():
    text = '[host."https://mirror.example.org"]\n  capabilities = ["pull"]\n'

    parsed = tomllib.loads(merge_hosts_toml(text, SERVER, AGENT, "hosts.toml"))

    assert parsed["server"] == SERVER
    assert list(parsed["host"]) == [AGENT, "https://mirror.example.org"]


def test_merge_moves_agent_first_and_keeps_its_keys():
    text = ('server = "https://registry.example.org"\n\n'
            '[host."https://mirror.example.org"]\n  capabilities = ["pull"]\n\n'
            f'[host."{AGENT}"]\n  capabilities = ["pull"]\n  skip_verify = true\n\n'
            f'[host."{AGENT}".header]\n  x-a = ["1"]\n')

    parsed = tomllib.loads(merge_hosts_toml(text, SERVER, AGENT, "hosts.toml"))

    assert list(parsed["host"]) == [AGENT, "https://mirror.example.org"]
    assert parsed["host"][AGENT] == {"capabilities": ["pull", "resolve"], "skip_verify": True,
                                     "header": {"x-a": ["1"]}}


def test_merge_of_file_without_hosts():
    text = 'server = "https://other.example.org"\n'

    parsed = tomllib.loads(merge_hosts_toml(text, SERVER, AGENT, "hosts.toml"))

    assert parsed == {"server": "https://other.example.org",
                      "host": {AGENT: {"capabilities": ["pull", "resolve"]}}}


def test_merge_rejects_invalid_toml():
    with pytest.raises(ConfigureError, match="hosts.toml is not valid TOML"):
        merge_hosts_toml("server = ", SERVER, AGENT, "hosts.toml")


def test_merge_refuses_layout_it_cannot_edit():
    # Dotted keys define the hosts without table headers, so the line-based
    # merge cannot place the agent before them.
    text = 'host."https://mirror.example.org".capabilities = ["pull"]\n'

    with pytest.raises(ConfigureError, match="add this table"):
        merge_hosts_toml(text, SERVER, AGENT, "hosts.toml")


@pytest.mark.parametrize("config_text, expected_dir, warning", [
    (None, "/etc/containerd/certs.d", "does not exist"),
    ("version = 2\n", "/etc/containerd/certs.d", "does not set"),
    ('version = 2\n[plugins."io.containerd.grpc.v1.cri".registry]\n'
     '  config_path = "/etc/containerd/certs.d:/etc/docker/certs.d"\n',
     "/etc/containerd/certs.d", None),
    ('version = 2\n[plugins."io.containerd.grpc.v1.cri".registry]\n  config_path = "/srv/hosts"\n',
     "/srv/hosts", None),
])
def test_hosts_directory_from_config(config_text, expected_dir, warning):
    directory, warnings = hosts_directory(config_text, "config.toml")

    assert directory == expected_dir
    if warning is None:
        assert warnings == []
    else:
        assert any(warning in item for item in warnings), warnings


def test_plan_writes_one_file_per_registry(tmp_path):
    changes, _ = plan([REGISTRY, LOCAL], "127.0.0.1:5080", tmp_path)

    paths = [change.path for change in changes]
    assert paths == [tmp_path / "etc/containerd/certs.d/registry.example.org/hosts.toml",
                     tmp_path / "etc/containerd/certs.d/localhost:5000/hosts.toml"]
    assert tomllib.loads(changes[1].new)["server"] == "http://localhost:5000"


def test_plan_uses_existing_port_directory(tmp_path):
    # containerd 1.6 reads <host>_<port>_ before <host>:<port>.
    existing = tmp_path / "etc/containerd/certs.d/localhost_5000_"
    existing.mkdir(parents=True)

    changes, _ = plan([LOCAL], "127.0.0.1:5080", tmp_path)

    assert changes[0].path == existing / "hosts.toml"


def test_plan_warns_about_other_server(tmp_path):
    path = tmp_path / "etc/containerd/certs.d/registry.example.org/hosts.toml"
    path.parent.mkdir(parents=True)
    path.write_text('server = "https://elsewhere.example.org"\n')

    changes, warnings = plan([REGISTRY], "127.0.0.1:5080", tmp_path)

    assert tomllib.loads(changes[0].new)["server"] == "https://elsewhere.example.org"
    assert any("keeps server" in warning for warning in warnings), warnings


def test_plan_all_registries_adds_default_without_server(tmp_path):
    changes, _ = plan([REGISTRY], "127.0.0.1:5080", tmp_path, all_registries=True)

    default = changes[-1]
    assert default.path == tmp_path / "etc/containerd/certs.d/_default/hosts.toml"
    assert tomllib.loads(default.new) == {
        "host": {"http://127.0.0.1:5080": {"capabilities": ["pull", "resolve"]}}}


def test_plan_all_registries_merges_existing_default(tmp_path):
    existing = tmp_path / "etc/containerd/certs.d/_default/hosts.toml"
    existing.parent.mkdir(parents=True)
    existing.write_text('[host."https://mirror.example.org"]\n  capabilities = ["pull"]\n')

    changes, _ = plan([REGISTRY], "127.0.0.1:5080", tmp_path, all_registries=True)

    merged = tomllib.loads(changes[-1].new)
    assert "server" not in merged
    assert list(merged["host"]) == ["http://127.0.0.1:5080", "https://mirror.example.org"]
