"""Pure parts of the Swift driver and the driver table."""

import random

import pytest

from registry_p2p import storage
from registry_p2p.storage.base import StorageDriver
from swift_backend.driver import SwiftDriver, _ChunkReader

DATA = random.Random(1).randbytes(100_000)


def _chunks(size):
    return [DATA[start:start + size] for start in range(0, len(DATA), size)]


def _read_all(reader, sizes):
    parts = []
    index = 0
    while True:
        part = reader.read(sizes[index % len(sizes)])
        index += 1
        if not part:
            return b"".join(parts)
        parts.append(part)


@pytest.mark.parametrize("chunk_size, read_sizes", [
    (3333, [7, 13, 1000, 99_999]),
    (3333, [1] * 10 + [100_000]),
    (100_000, [65_536]),
    (1, [4096]),
])
def test_chunk_reader_returns_every_byte(chunk_size, read_sizes):
    assert _read_all(_ChunkReader(_chunks(chunk_size)), read_sizes) == DATA


def test_chunk_reader_read_all_then_empty():
    reader = _ChunkReader([DATA[:10], DATA[10:]])

    assert reader.read() == DATA
    assert reader.read(5) == b""


def test_chunk_reader_exact_sizes():
    reader = _ChunkReader(_chunks(1000))

    assert len(reader.read(2500)) == 2500
    assert reader.read(500) == DATA[2500:3000]


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
