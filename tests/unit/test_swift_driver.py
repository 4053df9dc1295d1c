"""Pure parts of the Swift driver and the driver table."""

import pytest

from registry_p2p import storage
from registry_p2p.storage.base import StorageDriver
from registry_p2p.errors import StorageError
from registry_p2p.storage.parallel import Part
from swift_backend.driver import SwiftDriver, _check_numbering

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


def _segments(*numbers, prefix="p2p/segments/abc/def"):
    return [Part(f"{prefix}/{number:016d}", 10) for number in numbers]


def test_numbered_segments_without_gap_pass():
    _check_numbering(_segments(1, 2, 3), "registry", "blob")
    _check_numbering([], "registry", "blob")


@pytest.mark.parametrize("numbers, missing", [((1, 2, 4), 3), ((2, 3), 1), ((1, 3, 4, 5), 2)])
def test_gap_in_numbered_segments_names_the_missing_one(numbers, missing):
    with pytest.raises(StorageError, match=f"registry/p2p/segments/abc/def/{missing:016d} of blob"):
        _check_numbering(_segments(*numbers), "registry", "blob")


def test_segments_named_otherwise_are_not_checked():
    _check_numbering([Part("p2p/segments/x/part-a", 1), Part("p2p/segments/x/part-c", 1)],
                     "registry", "blob")
