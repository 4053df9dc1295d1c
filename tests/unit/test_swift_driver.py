"""Pure parts of the Swift driver and the driver table."""

import pytest

from registry_p2p import storage
from registry_p2p.storage.base import StorageDriver
from registry_p2p.errors import StorageError
from registry_p2p.storage.parallel import Part
from registry_p2p.storage.swift.driver import SwiftDriver, _complete_numbering

def test_swift_object_names_follow_prefix():
    with_prefix = SwiftDriver(connect=None, container="registry", prefix="/p2p/")
    without_prefix = SwiftDriver(connect=None, container="registry", prefix="")

    assert with_prefix.object_name("docker/registry/v2/x") == "p2p/files/docker/registry/v2/x"
    assert without_prefix.object_name("docker/registry/v2/x") == "files/docker/registry/v2/x"


@pytest.mark.parametrize("name", sorted(storage.DRIVERS))
def test_driver_table_entries_load(name):
    driver_class = storage.driver_class(name)

    assert issubclass(driver_class, StorageDriver)
    assert driver_class.name == name


PREFIX = "p2p/segments/abc/def"


def _segments(*numbers):
    return [Part(f"{PREFIX}/{number:016d}", 10) for number in numbers]


def _complete(listed, existing=()):
    """Complete ``listed`` where the numbers in ``existing`` also exist in Swift."""
    looked_up = []

    def segment_size(name):
        looked_up.append(name)
        return 7 if int(name.rpartition("/")[2]) in existing else None

    return _complete_numbering(listed, PREFIX, "blob", segment_size), looked_up


def test_full_listing_needs_one_lookup():
    segments, looked_up = _complete(_segments(1, 2, 3))

    assert segments == _segments(1, 2, 3)
    assert looked_up == [f"{PREFIX}/{4:016d}"]


def test_segments_missing_from_listing_are_looked_up():
    segments, _ = _complete(_segments(1, 3), existing={2, 4})

    assert [segment.name for segment in segments] == [
        f"{PREFIX}/{number:016d}" for number in (1, 2, 3, 4)]
    assert [segment.size for segment in segments] == [10, 7, 10, 7]


def test_empty_listing_reads_as_empty_blob():
    segments, _ = _complete([])

    assert segments == []


@pytest.mark.parametrize("numbers, missing", [((1, 2, 4), 3), ((2, 3), 1), ((1, 3, 4, 5), 2)])
def test_lost_segment_is_named(numbers, missing):
    with pytest.raises(StorageError, match=f"segment {PREFIX}/{missing:016d} of blob is missing"):
        _complete(_segments(*numbers))


def test_segments_named_otherwise_are_kept():
    listed = [Part(f"{PREFIX}/part-a", 1), Part(f"{PREFIX}/part-c", 1)]

    segments, looked_up = _complete(listed)

    assert segments == listed
    assert looked_up == []
