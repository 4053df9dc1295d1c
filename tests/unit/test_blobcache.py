"""Unit tests of registry_p2p.blobcache: verified fills and crash leftovers."""

import errno
import hashlib
import io
import random
import threading

import pytest

from registry_p2p import torrent
from registry_p2p.bencode import bdecode
from registry_p2p.blobcache import BlobCache, LockTimeout
from registry_p2p.errors import DigestMismatch, StorageError

HEX_LOCKED = "c" * 64

PIECE = torrent.MIN_PIECE_SIZE
# Three pieces, the last one short, read in several chunks by fill().
BLOB = random.Random(7).randbytes(2 * PIECE + 5000)
HEX = hashlib.sha256(BLOB).hexdigest()


def reference_pieces(data):
    return b"".join(hashlib.sha1(data[start:start + PIECE]).digest()
                    for start in range(0, len(data), PIECE))


def files_under(directory):
    return sorted(path for path in directory.rglob("*") if path.is_file())


class ShortReads(io.RawIOBase):
    """A stream that returns at most ``limit`` bytes per read, as sockets do."""

    def __init__(self, data, limit):
        self._data = io.BytesIO(data)
        self._limit = limit

    def readable(self):
        return True

    def read(self, size=-1):
        return self._data.read(min(size, self._limit) if size >= 0 else self._limit)


class FailingStream:
    """A stream that returns ``good`` bytes and then raises OSError (EIO)."""

    def __init__(self, good):
        self._good = good

    def read(self, size=-1):
        if self._good:
            chunk, self._good = self._good, b""
            return chunk
        raise OSError(errno.EIO, "Input/output error")


class EndlessStream:
    """A stream that returns ``data`` and then more bytes on every read.

    After ``max_extra_reads`` reads past ``data`` it raises RuntimeError, so
    a reader that does not stop at the expected size fails with that error.
    """

    def __init__(self, data, max_extra_reads=3):
        self._data = io.BytesIO(data)
        self._extra_reads = 0
        self._max_extra_reads = max_extra_reads

    def read(self, size=-1):
        chunk = self._data.read(size)
        if chunk:
            return chunk
        self._extra_reads += 1
        if self._extra_reads > self._max_extra_reads:
            raise RuntimeError("read continued past the expected size")
        return b"x" * size


@pytest.fixture
def cache(tmp_path):
    return BlobCache(tmp_path / "cache")


# Successful fill


def test_fill_writes_data(cache):
    cache.fill(HEX, len(BLOB), io.BytesIO(BLOB))

    assert cache.data_path(HEX).read_bytes() == BLOB


def test_fill_data_path_layout(cache):
    cache.fill(HEX, len(BLOB), io.BytesIO(BLOB))

    assert cache.data_path(HEX) == cache.root / "blobs" / HEX[:2] / HEX


def test_fill_writes_info(cache):
    cache.fill(HEX, len(BLOB), io.BytesIO(BLOB))

    assert cache.info_path(HEX).exists()


def test_fill_info_pieces(cache):
    cache.fill(HEX, len(BLOB), io.BytesIO(BLOB))

    assert bdecode(cache.info_path(HEX).read_bytes())[b"pieces"] == reference_pieces(BLOB)


def test_fill_returns_info(cache):
    info = cache.fill(HEX, len(BLOB), io.BytesIO(BLOB))

    assert info == {
        "length": len(BLOB),
        "name": HEX,
        "piece length": PIECE,
        "pieces": reference_pieces(BLOB),
        "private": 1,
    }


def test_fill_load_info(cache):
    cache.fill(HEX, len(BLOB), io.BytesIO(BLOB))

    assert cache.load_info(HEX)[b"name"] == HEX.encode()


def test_fill_listed(cache):
    cache.fill(HEX, len(BLOB), io.BytesIO(BLOB))

    assert list(cache.cached_digests()) == [HEX]


def test_fill_leaves_tmp_empty(cache):
    cache.fill(HEX, len(BLOB), io.BytesIO(BLOB))

    assert files_under(cache.tmp_dir) == []


def test_fill_short_reads(cache):
    cache.fill(HEX, len(BLOB), ShortReads(BLOB, limit=4093))

    assert cache.data_path(HEX).read_bytes() == BLOB


def test_fill_usage(cache):
    cache.fill(HEX, len(BLOB), io.BytesIO(BLOB))

    assert cache.usage() == (1, len(BLOB))


def test_data_not_executable(cache):
    # libtorrent adds an "attr" key, and so changes the infohash, for a
    # file with the executable bit.
    cache.fill(HEX, len(BLOB), io.BytesIO(BLOB))

    assert cache.data_path(HEX).stat().st_mode & 0o111 == 0


def test_load_info_missing(cache):
    assert cache.load_info(HEX) is None


def test_empty_cache_lists_nothing(cache):
    assert list(cache.cached_digests()) == []


# Failed fills leave nothing behind

WRONG_BYTES = bytes([BLOB[0] ^ 1]) + BLOB[1:]

BAD_STREAMS = [
    pytest.param(lambda: io.BytesIO(WRONG_BYTES), DigestMismatch, id="wrong-bytes"),
    pytest.param(lambda: io.BytesIO(BLOB[:-1]), DigestMismatch, id="too-few-bytes"),
    pytest.param(lambda: io.BytesIO(b""), DigestMismatch, id="no-bytes"),
    pytest.param(lambda: io.BytesIO(BLOB + b"x"), DigestMismatch, id="too-many-bytes"),
    pytest.param(lambda: io.BytesIO(BLOB * 2), DigestMismatch, id="twice-the-bytes"),
    pytest.param(lambda: FailingStream(BLOB[:PIECE + 1]), StorageError, id="read-error"),
]


@pytest.mark.parametrize("make_stream, error", BAD_STREAMS)
def test_bad_fill_raises(cache, make_stream, error):
    with pytest.raises(StorageError) as caught:
        cache.fill(HEX, len(BLOB), make_stream())

    assert caught.type is error


@pytest.mark.parametrize("make_stream, error", BAD_STREAMS)
def test_bad_fill_leaves_no_blob(cache, make_stream, error):
    with pytest.raises(error):
        cache.fill(HEX, len(BLOB), make_stream())

    assert files_under(cache.blobs_dir) == []


@pytest.mark.parametrize("make_stream, error", BAD_STREAMS)
def test_bad_fill_leaves_no_tmp(cache, make_stream, error):
    with pytest.raises(error):
        cache.fill(HEX, len(BLOB), make_stream())

    assert files_under(cache.tmp_dir) == []


@pytest.mark.parametrize("make_stream, error", BAD_STREAMS)
def test_bad_fill_not_listed(cache, make_stream, error):
    with pytest.raises(error):
        cache.fill(HEX, len(BLOB), make_stream())

    assert list(cache.cached_digests()) == []


def test_fill_stops_reading_past_size(cache):
    with pytest.raises(DigestMismatch):
        cache.fill(HEX, len(BLOB), EndlessStream(BLOB))


def test_read_error_names_digest(cache):
    with pytest.raises(StorageError) as caught:
        cache.fill(HEX, len(BLOB), FailingStream(BLOB[:100]))

    assert HEX in str(caught.value)


def test_mismatch_names_digest(cache):
    with pytest.raises(DigestMismatch) as caught:
        cache.fill(HEX, len(BLOB), io.BytesIO(WRONG_BYTES))

    assert HEX in str(caught.value)


# Leftovers and removal


def test_remove_leftovers_tmp_files(cache):
    (cache.tmp_dir / f"{HEX}.abc123").write_bytes(b"partial")
    (cache.tmp_dir / "nested").mkdir()
    (cache.tmp_dir / "nested" / "file").write_bytes(b"partial")

    cache.remove_leftovers()

    assert list(cache.tmp_dir.iterdir()) == []


def test_remove_leftovers_blob_without_info(cache):
    orphan_hex = "ab" * 32
    orphan = cache.data_path(orphan_hex)
    orphan.parent.mkdir(parents=True)
    orphan.write_bytes(b"renamed, but info never written")

    cache.remove_leftovers()

    assert not orphan.exists()


def test_remove_leftovers_keeps_complete_blob(cache):
    cache.fill(HEX, len(BLOB), io.BytesIO(BLOB))

    cache.remove_leftovers()

    assert cache.data_path(HEX).read_bytes() == BLOB


def test_remove_leftovers_keeps_info(cache):
    cache.fill(HEX, len(BLOB), io.BytesIO(BLOB))

    cache.remove_leftovers()

    assert cache.info_path(HEX).exists()


def test_info_without_data_not_listed(cache):
    orphan_hex = "cd" * 32
    cache.info_path(orphan_hex).parent.mkdir(parents=True)
    cache.info_path(orphan_hex).write_bytes(b"de")

    assert list(cache.cached_digests()) == []


def test_remove(cache):
    cache.fill(HEX, len(BLOB), io.BytesIO(BLOB))

    cache.remove(HEX)

    assert files_under(cache.blobs_dir) == []


def test_remove_missing_blob(cache):
    cache.remove(HEX)

    assert list(cache.cached_digests()) == []


def test_lock_wait_is_bounded(tmp_path):
    cache = BlobCache(tmp_path / "cache")
    held = threading.Event()
    release = threading.Event()

    def hold():
        with cache.lock(HEX_LOCKED):
            held.set()
            release.wait(30)

    holder = threading.Thread(target=hold)
    holder.start()
    held.wait(10)
    try:
        with pytest.raises(LockTimeout, match=f"sha256:{HEX_LOCKED} stayed locked"):
            with cache.lock(HEX_LOCKED, timeout=0.3):
                pass
    finally:
        release.set()
        holder.join()

    with cache.lock(HEX_LOCKED, timeout=0.3):
        pass

