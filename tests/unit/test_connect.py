"""Address helpers of the CONNECT handler: resolution and the local-address check."""

from registry_p2p.agent.connect import is_local_address, resolve_addresses


def test_loopback_is_local():
    assert is_local_address("127.0.0.1")


def test_documentation_address_is_not_local():
    assert not is_local_address("192.0.2.55")


def test_literal_resolves_to_itself():
    assert resolve_addresses("192.0.2.55", 443) == ["192.0.2.55"]
    assert resolve_addresses("2001:db8::5", 443) == ["2001:db8::5"]
