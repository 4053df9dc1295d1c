"""Which Range requests the agent serves from a cached blob and which go to the registry."""

import pytest

from registry_p2p.agent.blobs import LeasedFile, call_once, single_range

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


# Leases of cached blobs


def test_leased_file_releases_once_on_close(tmp_path):
    path = tmp_path / "blob"
    path.write_bytes(b"data")
    releases = []
    blob = LeasedFile(path, lambda: releases.append(1))

    assert blob.read() == b"data"
    blob.close()
    blob.close()

    assert releases == [1]


def test_leased_file_missing_releases_nothing(tmp_path):
    releases = []

    with pytest.raises(FileNotFoundError):
        LeasedFile(tmp_path / "missing", lambda: releases.append(1))

    assert releases == []


def test_call_once_calls_first_time_only():
    calls = []
    call = call_once(calls.append, "released")

    call()
    call()

    assert calls == ["released"]
