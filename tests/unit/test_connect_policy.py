"""CONNECT targets: parsing, and the choice between interception, tunnel and rejection."""

import logging

import pytest

from registry_p2p.agent.connect_policy import (
    INTERCEPT, REJECT, TUNNEL, ConnectPolicy, ConnectTarget, parse_connect_target,
    registry_target, rejection)
from registry_p2p.config import Registry
from registry_p2p.errors import ConfigError

TLS_WITH_PORT = Registry(name="10.0.0.5:5000", url="https://10.0.0.5:5000", sidecars=())
TLS_DEFAULT_PORT = Registry(name="registry.example.org", url="https://registry.example.org",
                            sidecars=())
PLAIN = Registry(name="plain.example.org:5000", url="http://plain.example.org:5000",
                 sidecars=())
IPV6 = Registry(name="[fd00::5]:5000", url="https://[fd00::5]:5000", sidecars=())
REGISTRIES = (TLS_WITH_PORT, TLS_DEFAULT_PORT, PLAIN, IPV6)


@pytest.mark.parametrize("raw, host, port", [
    ("registry.example.org:443", "registry.example.org", 443),
    ("Registry.Example.ORG:443", "registry.example.org", 443),
    ("10.0.0.5:5000", "10.0.0.5", 5000),
    ("[fd00::5]:5000", "fd00::5", 5000),
    ("[FD00:0::5]:5000", "fd00::5", 5000),
    ("localhost:1", "localhost", 1),
    ("my_registry:65535", "my_registry", 65535),
])
def test_parse_valid_target(raw, host, port):
    assert parse_connect_target(raw) == ConnectTarget(host, port)


@pytest.mark.parametrize("raw", [
    "", ":443", "registry.example.org", "registry.example.org:", "registry.example.org:0",
    "registry.example.org:65536", "registry.example.org:44a", "registry.example.org:+443",
    "fd00::5:5000", "[fd00::zz]:5000", "user@registry.example.org:443",
    "http://registry.example.org:443", "registry.example.org/v2:443", "bad host:443",
    "-registry.example.org:443", "registry.example.org.:443",
])
def test_parse_invalid_target(raw):
    with pytest.raises(ValueError):
        parse_connect_target(raw)


def test_target_prints_as_authority():
    assert str(ConnectTarget("fd00::5", 5000)) == "[fd00::5]:5000"
    assert str(ConnectTarget("registry.example.org", 443)) == "registry.example.org:443"


@pytest.mark.parametrize("name, target", [
    ("registry.example.org", ConnectTarget("registry.example.org", 443)),
    ("registry.example.org:5000", ConnectTarget("registry.example.org", 5000)),
    ("10.0.0.5", ConnectTarget("10.0.0.5", 443)),
    ("[fd00::5]", ConnectTarget("fd00::5", 443)),
    ("[fd00::5]:5000", ConnectTarget("fd00::5", 5000)),
])
def test_registry_target(name, target):
    assert registry_target(name) == target


@pytest.fixture
def policy():
    return ConnectPolicy(REGISTRIES, intercept=True)


@pytest.mark.parametrize("raw, registry", [
    ("10.0.0.5:5000", TLS_WITH_PORT),
    ("registry.example.org:443", TLS_DEFAULT_PORT),
    ("REGISTRY.example.org:443", TLS_DEFAULT_PORT),
    ("[fd00::5]:5000", IPV6),
])
def test_configured_registry_is_intercepted(policy, raw, registry):
    decision = policy.decide(raw)

    assert decision.action == INTERCEPT
    assert decision.registry is registry


@pytest.mark.parametrize("raw", [
    "10.0.0.5:443",                 # the registry's host on another port
    "registry.example.org:5000",
    "10.0.0.6:5000",
    "example.org:443",
    "plain.example.org:5000",       # http:// url
    "127.0.0.1:5080",
])
def test_other_host_is_rejected(policy, raw):
    decision = policy.decide(raw)

    assert decision.action == REJECT
    assert decision.registry is None
    assert decision.reason


def test_plain_registry_reason_names_http(policy):
    assert "http://" in policy.decide("plain.example.org:5000").reason


def test_invalid_target_is_rejected_even_with_tunnel():
    policy = ConnectPolicy(REGISTRIES, intercept=True, other_hosts=TUNNEL)
    decision = policy.decide("http://example.org:443")

    assert decision.action == REJECT
    assert decision.target is None


def test_other_host_is_tunnelled_when_configured():
    policy = ConnectPolicy(REGISTRIES, intercept=True, other_hosts=TUNNEL)

    assert policy.decide("example.org:443").action == TUNNEL
    assert policy.decide("10.0.0.5:443").action == TUNNEL
    assert policy.decide("10.0.0.5:5000").action == INTERCEPT


def test_no_interception_without_ca():
    policy = ConnectPolicy(REGISTRIES, intercept=False)
    decision = policy.decide("10.0.0.5:5000")

    assert decision.action == REJECT
    assert "proxy.ca_dir" in decision.reason
    assert policy.intercepted_registries() == []


def test_no_interception_without_ca_tunnels_when_configured():
    policy = ConnectPolicy(REGISTRIES, intercept=False, other_hosts=TUNNEL)

    assert policy.decide("10.0.0.5:5000").action == TUNNEL


def test_intercepted_registries_are_https_ones(policy):
    assert policy.intercepted_registries() == [TLS_WITH_PORT, TLS_DEFAULT_PORT, IPV6]


def test_unknown_other_hosts_value():
    with pytest.raises(ValueError):
        ConnectPolicy(REGISTRIES, intercept=True, other_hosts="allow")


def test_unparsable_registry_name_is_config_error():
    bad = Registry(name="bad name:5000", url="https://bad:5000", sidecars=())

    with pytest.raises(ConfigError, match="bad name"):
        ConnectPolicy((bad,), intercept=True)


def test_rejection_is_logged_and_denied(policy, caplog):
    decision = policy.decide("example.org:443")

    with caplog.at_level(logging.WARNING, logger="registry_p2p.agent.connect_policy"):
        error = rejection(decision, "192.0.2.7:40000")

    assert error.status == 403
    assert error.code == "DENIED"
    assert "example.org:443" in error.detail
    assert "rejected CONNECT example.org:443 from 192.0.2.7:40000" in caplog.text
