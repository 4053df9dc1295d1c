"""TorrentSession piece deadlines and reads, between two real libtorrent sessions on loopback."""

import concurrent.futures
import hashlib
import random

import libtorrent
import pytest

from registry_p2p import torrent
from registry_p2p.errors import P2PError
from registry_p2p.session import TorrentSession

pytestmark = pytest.mark.integration

BLOB_SIZE = 24 * 1024 * 1024 + 1000
NO_TRACKER = ["http://127.0.0.1:9/announce"]
WAIT_SECONDS = 60


@pytest.fixture(scope="module")
def blob():
    data = random.Random(5).randbytes(BLOB_SIZE)
    hex_digest = hashlib.sha256(data).hexdigest()
    hasher = torrent.BlobHasher(len(data))
    hasher.update(data)
    metainfo = torrent.build_metainfo(hex_digest, len(data), hasher.pieces(), NO_TRACKER)

    return data, hex_digest, metainfo


@pytest.fixture
def seeder(tmp_path, blob):
    data, hex_digest, metainfo = blob
    (tmp_path / "seed").mkdir()
    (tmp_path / "seed" / hex_digest).write_bytes(data)
    session = TorrentSession("127.0.0.1", 0, role="S")
    session.start()
    session.add_seed(metainfo, tmp_path / "seed").result(WAIT_SECONDS)
    yield session
    session.stop()


@pytest.fixture
def leecher():
    session = TorrentSession("127.0.0.1", 0, role="A")
    session.start()
    yield session
    session.stop()


def _connect(session, info_hash, port):
    def connect(lt_session):
        handle = lt_session.find_torrent(libtorrent.sha1_hash(bytes.fromhex(info_hash)))
        handle.connect_peer(("127.0.0.1", port))

    session.submit(connect).result(WAIT_SECONDS)


def _read_all(session, download, reader, window):
    """Read every piece in order with ``window`` pieces of deadlines and reads ahead."""
    count = -(-download.length // download.piece_length)
    pending = {}
    pieces = []
    for position in range(count):
        end = min(position + window, count)
        wanted = [piece for piece in range(position, end) if piece not in pending]
        pending.update(session.read_pieces(download.info_hash, reader, position, end, wanted))
        pieces.append(pending.pop(position).result(WAIT_SECONDS))

    return b"".join(pieces)


def test_two_readers_get_every_piece(tmp_path, blob, seeder, leecher):
    data, _, metainfo = blob
    download = leecher.add_download(metainfo, tmp_path / "download",
                                     len(data)).result(WAIT_SECONDS)
    _connect(leecher, download.info_hash, seeder.listen_port().result(WAIT_SECONDS))

    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        first = pool.submit(_read_all, leecher, download, "first", 4)
        second = pool.submit(_read_all, leecher, download, "second", 2)
        assert first.result(WAIT_SECONDS) == data
        assert second.result(WAIT_SECONDS) == data

    assert leecher.stream_readers() == 2
    leecher.release_reader(download.info_hash, "first").result(WAIT_SECONDS)
    assert leecher.stream_readers() == 1
    leecher.release_reader(download.info_hash, "second").result(WAIT_SECONDS)
    assert leecher.stream_readers() == 0


def test_seeded_pieces_read_at_once(blob, seeder):
    data, hex_digest, metainfo = blob
    parsed = torrent.parse_metainfo(metainfo, hex_digest, len(data))
    last = len(parsed.pieces) // 20 - 1

    futures = seeder.read_pieces(parsed.info_hash, "reader", last, last + 1, [0, last])

    assert futures[0].result(WAIT_SECONDS) == data[:parsed.piece_length]
    assert futures[last].result(WAIT_SECONDS) == data[last * parsed.piece_length:]
    seeder.release_reader(parsed.info_hash, "reader").result(WAIT_SECONDS)
    assert seeder.stream_readers() == 0


def test_reads_fail_on_removal(tmp_path, blob, leecher):
    data, _, metainfo = blob
    download = leecher.add_download(metainfo, tmp_path / "download",
                                    len(data)).result(WAIT_SECONDS)
    futures = leecher.read_pieces(download.info_hash, "reader", 0, 4, [0, 1])

    leecher.remove(download.info_hash, delete_files=True).result(WAIT_SECONDS)

    for future in futures.values():
        with pytest.raises(P2PError):
            future.result(WAIT_SECONDS)
    assert leecher.stream_readers() == 0
    later = leecher.read_pieces(download.info_hash, "reader", 2, 4, [2])
    with pytest.raises(P2PError):
        later[2].result(WAIT_SECONDS)
