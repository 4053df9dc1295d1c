"""Which Range requests the agent serves from a cached blob and which go to the registry."""

import pytest

from registry_p2p.agent.blobs import single_range

SIZE = 1000


@pytest.mark.parametrize("header", [
    None,
    "bytes=0-0",
    "bytes=100-199",
    "bytes=990-",
    "bytes=-10",
    "bytes=0-99999",
])
def test_single_range_served_from_cache(header):
    assert single_range(header, SIZE)


@pytest.mark.parametrize("header", [
    "bytes=0-1,5-6",
    "bytes=1000-",
    "bytes=-99999",
    "bytes=-0",
    "bytes=5-2",
    "bytes=abc",
    "items=0-1",
])
def test_other_ranges_go_to_registry(header):
    assert not single_range(header, SIZE)
