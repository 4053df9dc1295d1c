"""CONNECT targets: parsing, and the choice between interception, tunnel and rejection."""

import logging

import pytest

from registry_p2p.agent.connect_policy import (
    INTERCEPT, REJECT, TUNNEL, ConnectPolicy, ConnectTarget, parse_connect_target,
    refused_address_reason, registry_target, rejection)
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


@pytest.mark.parametrize("address, words", [
    ("127.0.0.1", "loopback"),
    ("127.8.9.10", "loopback"),
    ("::1", "loopback"),
    ("169.254.169.254", "link-local"),
    ("fe80::1", "link-local"),
    ("fe80::1%eth0", "link-local"),
    ("fd00:ec2::254", "metadata"),
    ("100.100.100.200", "metadata"),
    ("0.0.0.0", "unspecified"),
    ("::", "unspecified"),
    ("224.0.0.1", "multicast"),
    ("::ffff:127.0.0.1", "loopback"),
    ("::ffff:169.254.169.254", "link-local"),
    ("2002:a9fe:a9fe::1", "link-local"),
    ("64:ff9b::a9fe:a9fe", "link-local"),
])
def test_refused_address_reason(address, words):
    assert words in refused_address_reason(address)


@pytest.mark.parametrize("address", ["10.0.0.5", "192.0.2.7", "fd00::5", "2001:db8::1",
                                     "100.64.0.1", "::ffff:10.0.0.5"])
def test_ordinary_address_is_not_refused(address):
    assert refused_address_reason(address) is None


@pytest.fixture
def tunnel_policy():
    return ConnectPolicy(REGISTRIES, intercept=True, other_hosts=TUNNEL, own_ports=(5080, 6882))


def _never_local(_address):
    return False


def test_screened_tunnel_keeps_addresses(tunnel_policy):
    decision = tunnel_policy.decide("example.org:443")

    screened = tunnel_policy.screen_tunnel(decision, ["192.0.2.7", "2001:db8::7"], _never_local)

    assert screened.action == TUNNEL
    assert screened.addresses == ("192.0.2.7", "2001:db8::7")


@pytest.mark.parametrize("raw, addresses, refused", [
    ("169.254.169.254:80", ["169.254.169.254"], "169.254.169.254"),
    ("127.0.0.1:22", ["127.0.0.1"], "127.0.0.1"),
    ("[fd00:ec2::254]:80", ["fd00:ec2::254"], "fd00:ec2::254"),
    ("rebound.example.org:443", ["192.0.2.7", "127.0.0.1"], "127.0.0.1"),
])
def test_tunnel_to_refused_address_is_rejected(tunnel_policy, raw, addresses, refused):
    decision = tunnel_policy.screen_tunnel(tunnel_policy.decide(raw), addresses, _never_local)

    assert decision.action == REJECT
    assert decision.refused_address == refused
    assert refused in decision.reason


def test_tunnel_own_port_rejected(tunnel_policy):
    def is_local(address):
        return address == "10.0.0.9"

    own_port = tunnel_policy.screen_tunnel(tunnel_policy.decide("10.0.0.9:5080"), ["10.0.0.9"],
                                           is_local)
    other_port = tunnel_policy.screen_tunnel(tunnel_policy.decide("10.0.0.9:5081"),
                                             ["10.0.0.9"], is_local)
    other_host = tunnel_policy.screen_tunnel(tunnel_policy.decide("10.0.0.8:5080"),
                                             ["10.0.0.8"], is_local)

    assert own_port.action == REJECT
    assert "agent's own" in own_port.reason
    assert other_port.action == TUNNEL
    assert other_host.action == TUNNEL


def test_refused_tunnel_rejection_names_the_rule(tunnel_policy, caplog):
    decision = tunnel_policy.screen_tunnel(tunnel_policy.decide("169.254.169.254:80"),
                                           ["169.254.169.254"], _never_local)

    with caplog.at_level(logging.WARNING, logger="registry_p2p.agent.connect_policy"):
        error = rejection(decision, "192.0.2.7:40000")

    assert error.status == 403
    assert error.code == "DENIED"
    assert "link-local" in error.detail
    assert "rejected CONNECT 169.254.169.254:80 from 192.0.2.7:40000" in caplog.text
