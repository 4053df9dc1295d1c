"""Docker Engine: daemon.json registry-mirrors, the proxy drop-in and the CA hook."""

import json

import pytest

from registry_p2p.agent.upstreams import Upstreams
from registry_p2p.config import Registry
from registry_p2p.runtimes.changes import ConfigureError
from registry_p2p.runtimes.docker import merge_daemon_json, parse_environment, plan

AGENT = "127.0.0.1:5080"
AGENT_URL = "http://127.0.0.1:5080"
HUB = Registry(name="docker.io", url="https://registry-1.docker.io", sidecars=())
PRIVATE = Registry(name="registry.example.org", url="https://registry.example.org", sidecars=())
DROP_IN = "etc/systemd/system/docker.service.d/registry-p2p-proxy.conf"


def test_merge_keeps_other_keys_and_mirrors():
    text = '{"log-driver": "journald", "registry-mirrors": ["https://mirror.gcr.io"]}'

    merged = json.loads(merge_daemon_json(text, AGENT_URL, "daemon.json"))

    assert merged == {"log-driver": "journald",
                      "registry-mirrors": [AGENT_URL, "https://mirror.gcr.io"]}
    assert list(merged) == ["log-driver", "registry-mirrors"]


def test_merge_is_idempotent():
    merged = merge_daemon_json('{"debug": true}', AGENT_URL, "daemon.json")

    assert merge_daemon_json(merged, AGENT_URL, "daemon.json") == merged
    assert merged == '{\n  "debug": true,\n  "registry-mirrors": [\n    "http://127.0.0.1:5080"\n  ]\n}\n'


def test_merge_leaves_formatting_alone_when_agent_is_first():
    text = '{"registry-mirrors": ["http://127.0.0.1:5080"], "debug": true}'

    assert merge_daemon_json(text, AGENT_URL, "daemon.json") == text


def test_merge_moves_agent_first():
    text = '{"registry-mirrors": ["https://mirror.gcr.io", "http://127.0.0.1:5080/"]}'

    merged = json.loads(merge_daemon_json(text, AGENT_URL, "daemon.json"))

    assert merged["registry-mirrors"] == [AGENT_URL, "https://mirror.gcr.io"]


@pytest.mark.parametrize("text, message", [
    ("{", "is not valid JSON"),
    ("[]", "does not contain a JSON object"),
    ('{"registry-mirrors": "http://x"}', "registry-mirrors is not a list"),
])
def test_merge_rejects_bad_file(text, message):
    with pytest.raises(ConfigureError, match=message):
        merge_daemon_json(text, AGENT_URL, "daemon.json")


def test_parse_environment():
    text = ('[Service]\nEnvironment="HTTP_PROXY=http://proxy:3128" "NO_PROXY=a,b"\n'
            'Environment=HTTPS_PROXY=http://proxy:3128\n# Environment="X=1"\n')

    assert parse_environment(text) == {"HTTP_PROXY": "http://proxy:3128", "NO_PROXY": "a,b",
                                       "HTTPS_PROXY": "http://proxy:3128"}


@pytest.fixture
def ca_certificate(tmp_path):
    path = tmp_path / "ca" / "ca.crt"
    path.parent.mkdir()
    path.write_text("-----BEGIN CERTIFICATE-----\n...\n")
    return path


def test_plan_with_hub_as_default(tmp_path, ca_certificate):
    changes, warnings = plan(Upstreams((HUB, PRIVATE)), AGENT, tmp_path, "agent.toml",
                             ca_certificate, other_hosts="tunnel")

    assert [change.path for change in changes[:2]] == [tmp_path / "etc/docker/daemon.json",
                                                       tmp_path / DROP_IN]
    assert json.loads(changes[0].new) == {"registry-mirrors": [AGENT_URL]}
    assert parse_environment(changes[1].new) == {
        "HTTP_PROXY": AGENT_URL, "HTTPS_PROXY": AGENT_URL,
        "NO_PROXY": "localhost,127.0.0.0/8,::1,auth.docker.io,production.cloudflare.docker.com"}
    assert warnings == []


def test_plan_without_interception_sets_no_https_proxy(tmp_path):
    changes, warnings = plan(Upstreams((PRIVATE,)), AGENT, tmp_path, "agent.toml", None)

    assert [change.path for change in changes] == [tmp_path / DROP_IN]
    assert "HTTPS_PROXY" not in parse_environment(changes[0].new)
    assert len(warnings) == 1
    assert "proxy.ca_dir is empty" in warnings[0]


def test_plan_warns_that_other_hosts_are_rejected(tmp_path, ca_certificate):
    changes, warnings = plan(Upstreams((PRIVATE,)), AGENT, tmp_path, "agent.toml",
                             ca_certificate)

    assert parse_environment(changes[0].new)["HTTPS_PROXY"] == AGENT_URL
    assert len(warnings) == 1
    assert "NO_PROXY" in warnings[0]


def test_plan_warns_about_missing_ca(tmp_path):
    _, warnings = plan(Upstreams((PRIVATE,)), AGENT, tmp_path, "agent.toml",
                       tmp_path / "missing-ca.crt", other_hosts="tunnel")

    assert len(warnings) == 1
    assert "registry-p2p agent ca" in warnings[0]


def test_plan_warns_when_hub_is_not_default(tmp_path, ca_certificate):
    changes, warnings = plan(Upstreams((PRIVATE, HUB)), AGENT, tmp_path, "agent.toml",
                             ca_certificate, other_hosts="tunnel")

    assert changes[0].path == tmp_path / DROP_IN
    assert len(warnings) == 1
    assert 'default_registry = "docker.io"' in warnings[0]


def test_plan_keeps_added_no_proxy_entries(tmp_path):
    drop_in = tmp_path / DROP_IN
    drop_in.parent.mkdir(parents=True)
    drop_in.write_text('[Service]\nEnvironment="NO_PROXY=localhost,auth.example.org"\n')

    changes, _ = plan(Upstreams((PRIVATE,)), AGENT, tmp_path, "agent.toml", None)

    assert parse_environment(changes[0].new)["NO_PROXY"] == (
        "localhost,127.0.0.0/8,::1,auth.example.org")


def test_plan_warns_about_other_proxy_drop_in(tmp_path, ca_certificate):
    other = tmp_path / "etc/systemd/system/docker.service.d/http-proxy.conf"
    other.parent.mkdir(parents=True)
    other.write_text('[Service]\nEnvironment="HTTPS_PROXY=http://proxy.example.org:3128"\n')

    _, warnings = plan(Upstreams((PRIVATE,)), AGENT, tmp_path, "agent.toml", ca_certificate,
                       other_hosts="tunnel")

    assert len(warnings) == 1
    assert "HTTPS_PROXY" in warnings[0]
    assert str(tmp_path / DROP_IN) + " wins" in warnings[0]


def test_plan_copies_ca_for_https_registries_only(tmp_path, ca_certificate):
    plain = Registry(name="plain.example.org:5000", url="http://plain.example.org:5000",
                     sidecars=())

    changes, _ = plan(Upstreams((PRIVATE, plain)), AGENT, tmp_path, "agent.toml",
                      ca_certificate, other_hosts="tunnel")

    copies = [change for change in changes if change.path.name == "ca.crt"]
    assert [change.path for change in copies] == [
        tmp_path / "etc/docker/certs.d/registry.example.org/ca.crt"]
    assert copies[0].new == ca_certificate.read_text()
