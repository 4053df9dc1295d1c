"""Reading a blob as parts: in order, resumed after failures, bounded."""

import random
import threading

import pytest

from registry_p2p.errors import BlobNotFound, StorageError
from registry_p2p.storage import parallel
from registry_p2p.storage.parallel import ChunkReader, Part, PartReader

DATA = random.Random(1).randbytes(100_000)


@pytest.fixture(autouse=True)
def no_retry_delay(monkeypatch):
    monkeypatch.setattr(parallel, "RETRY_DELAY", 0)


@pytest.fixture
def pool():
    with parallel.part_pool(4) as executor:
        yield executor


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


def _parts(sizes):
    parts = []
    offset = 0
    for index, size in enumerate(sizes):
        parts.append(Part(f"part {index}", size, offset))
        offset += size
    return parts


def _chunked(data, size=1000):
    return [data[start:start + size] for start in range(0, len(data), size)]


def _fetch_from(data):
    """Return a fetch over ``data`` and the list of (part name, offset) it records."""
    calls = []

    def fetch(part, offset):
        calls.append((part.name, offset))
        return _chunked(data[part.offset + offset:part.offset + part.size])

    return fetch, calls


@pytest.mark.parametrize("chunk_size, read_sizes", [
    (3333, [7, 13, 1000, 99_999]),
    (3333, [1] * 10 + [100_000]),
    (100_000, [65_536]),
    (1, [4096]),
])
def test_chunk_reader_returns_every_byte(chunk_size, read_sizes):
    assert _read_all(ChunkReader(_chunks(chunk_size)), read_sizes) == DATA


def test_chunk_reader_read_all_then_empty():
    reader = ChunkReader([DATA[:10], DATA[10:]])

    assert reader.read() == DATA
    assert reader.read(5) == b""


def test_chunk_reader_exact_sizes():
    reader = ChunkReader(_chunks(1000))

    assert len(reader.read(2500)) == 2500
    assert reader.read(500) == DATA[2500:3000]


@pytest.mark.parametrize("workers", [1, 2, 4, 16])
def test_parts_come_back_in_order(workers, pool):
    sizes = [7000, 1, 30_000, 12_345, 0, 50_654]
    fetch, calls = _fetch_from(DATA)

    with PartReader(_parts(sizes), fetch, "blob", pool, workers=workers) as reader:
        assert _read_all(reader, [4096]) == DATA

    assert sorted(calls) == sorted((f"part {index}", 0) for index in range(len(sizes)))


def test_failed_part_resumes_at_offset(pool):
    failed = threading.Event()
    calls = []

    def fetch(part, offset):
        calls.append((part.name, offset))
        content = DATA[part.offset + offset:part.offset + part.size]
        if part.name == "part 1" and not failed.is_set():
            failed.set()
            yield content[:2500]
            raise StorageError("connection reset")
        yield from _chunked(content)

    with PartReader(_parts([10_000, 40_000, 50_000]), fetch, "blob", pool) as reader:
        assert reader.read() == DATA

    assert ("part 1", 0) in calls
    assert ("part 1", 2500) in calls


def test_part_that_ends_early_is_resumed(pool):
    short = []

    def fetch(part, offset):
        content = DATA[part.offset + offset:part.offset + part.size]
        if not short:
            short.append(offset)
            return [content[:100]]
        short.append(offset)
        return [content]

    with PartReader(_parts([100_000]), fetch, "blob", pool) as reader:
        assert reader.read() == DATA

    assert short == [0, 100]


def test_part_failing_every_attempt_raises_storage_error(pool):
    calls = []

    def fetch(part, offset):
        calls.append(offset)
        raise StorageError("503 from storage")

    with PartReader(_parts([10, 20]), fetch, "blob sha256:ab", pool, attempts=3) as reader:
        with pytest.raises(StorageError, match="503 from storage"):
            reader.read()

    assert calls.count(0) >= 3


def test_part_ending_early_every_time_names_the_part(pool):
    with PartReader(_parts([1000]), lambda part, offset: [], "blob sha256:ab", pool) as reader:
        with pytest.raises(StorageError, match="part 0 of blob sha256:ab ended after 0 of 1000"):
            reader.read()


def test_missing_part_fails_at_once(pool):
    calls = []

    def fetch(part, offset):
        calls.append(part.name)
        if part.name == "part 2":
            raise BlobNotFound("gone")
        return [DATA[part.offset:part.offset + part.size]]

    with PartReader(_parts([10, 10, 10, 10]), fetch, "blob sha256:ab", pool, workers=1) as reader:
        with pytest.raises(StorageError, match="part 2 of blob sha256:ab is missing"):
            reader.read()

    assert calls.count("part 2") == 1


def test_part_longer_than_listed_is_an_error(pool):
    def fetch(part, offset):
        return [DATA[:part.size + 1]]

    with PartReader(_parts([50]), fetch, "blob", pool) as reader:
        with pytest.raises(StorageError, match="contains more than the 50 bytes listed"):
            reader.read()


def test_close_before_reading_stops_pending_parts(pool):
    fetch, calls = _fetch_from(DATA)

    reader = PartReader(_parts([1000] * 100), fetch, "blob", pool, workers=2)
    reader.read(10)
    reader.close()

    assert len(calls) <= 3


def test_stalled_storage_fails_the_read(pool):
    release = threading.Event()

    def fetch(part, offset):
        yield DATA[:10]
        release.wait(30)
        yield DATA[10:part.size]

    reader = PartReader(_parts([1000]), fetch, "blob sha256:ab", pool, stall_timeout=1.5)
    try:
        with pytest.raises(StorageError, match="no bytes of blob sha256:ab arrived from storage"):
            reader.read()
    finally:
        reader.close()
        release.set()
