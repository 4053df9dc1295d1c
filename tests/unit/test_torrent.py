"""Unit tests of registry_p2p.torrent: piece sizes, hashing and deterministic metainfo.

The expected info dictionaries and infohashes are built here with hashlib
and the small bencoder below, never with registry_p2p's own encoder, and
are compared with what libtorrent reports for the same bytes.
"""

import functools
import hashlib
import random

import libtorrent
import pytest

from registry_p2p import torrent
from registry_p2p.errors import P2PError

KIB = 1024
MIB = 1024 * KIB
GIB = 1024 * MIB
MIN_PIECE = torrent.MIN_PIECE_SIZE
MAX_PIECE = torrent.MAX_PIECE_SIZE

TRACKERS = [
    "http://127.0.0.1:5050/announce",
    "http://127.0.0.2:5050/announce",
    "http://127.0.0.3:5050/announce",
]

# A 12 MiB + 4 byte blob, its piece length and its infohash, as computed by
# the reference encoder below and confirmed by libtorrent 2.0.8 and 2.1.1.
# When these values must change, the infohash of every blob changes with
# them, so sidecars and agents of the old and the new version stop sharing
# swarms.
GOLDEN_BLOB = bytes(range(256)) * (48 * 1024) + b"tail"
GOLDEN_PIECE_LENGTH = MIB
GOLDEN_INFO_HASH = "beb3aaa48f2af6ba82b24f745a3968ecbcee2fcd"


def reference_bencode(value):
    """Encode ints, bytes, lists and dicts with bytes keys (BEP 3)."""
    if isinstance(value, int):
        return b"i" + str(value).encode() + b"e"
    if isinstance(value, bytes):
        return str(len(value)).encode() + b":" + value
    if isinstance(value, list):
        return b"l" + b"".join(reference_bencode(item) for item in value) + b"e"
    if isinstance(value, dict):
        items = sorted(value.items())
        return b"d" + b"".join(reference_bencode(k) + reference_bencode(v) for k, v in items) + b"e"
    raise TypeError(f"reference_bencode cannot encode {type(value).__name__}")


def reference_pieces(data, piece_length):
    return b"".join(hashlib.sha1(data[start:start + piece_length]).digest()
                    for start in range(0, len(data), piece_length))


def reference_info(data, piece_length=MIN_PIECE):
    return {
        b"length": len(data),
        b"name": hashlib.sha256(data).hexdigest().encode(),
        b"piece length": piece_length,
        b"pieces": reference_pieces(data, piece_length),
        b"private": 1,
    }


def reference_info_hash(info):
    return hashlib.sha1(reference_bencode(info)).hexdigest()


def libtorrent_info_hash(raw):
    return str(libtorrent.torrent_info(libtorrent.bdecode(raw)).info_hash())


def blob_bytes(length, seed=1):
    return random.Random(seed).randbytes(length)


def hash_in_chunks(data, chunk_sizes):
    """Feed ``data`` to a BlobHasher in chunks of the given sizes, cycling through them."""
    hasher = torrent.BlobHasher(len(data))
    position = 0
    index = 0
    while position < len(data):
        size = chunk_sizes[index % len(chunk_sizes)]
        hasher.update(data[position:position + size])
        position += size
        index += 1

    return hasher


@functools.lru_cache(maxsize=8)
def metainfo_for(data, trackers=tuple(TRACKERS)):
    """Return build_metainfo() bytes for ``data``; cached because most tests use GOLDEN_BLOB."""
    hex_digest = hashlib.sha256(data).hexdigest()
    hasher = torrent.BlobHasher(len(data))
    hasher.update(data)

    return torrent.build_metainfo(hex_digest, len(data), hasher.pieces(), list(trackers))


# piece_size


@pytest.mark.parametrize("length, expected", [
    pytest.param(0, MIN_PIECE, id="empty"),
    pytest.param(1, MIN_PIECE, id="one-byte"),
    pytest.param(MIN_PIECE * 1024, MIN_PIECE, id="1024-min-pieces"),
    pytest.param(MIN_PIECE * 1024 + 1, 2 * MIN_PIECE, id="1024-min-pieces-plus-one"),
    pytest.param(2 * MIN_PIECE * 1024, 2 * MIN_PIECE, id="1024-double-min-pieces"),
    pytest.param(2 * MIN_PIECE * 1024 + 1, 4 * MIN_PIECE, id="1024-double-min-pieces-plus-one"),
    pytest.param(MAX_PIECE // 2 * 1024 + 1, MAX_PIECE, id="1024-half-max-pieces-plus-one"),
    pytest.param(MAX_PIECE * 1024, MAX_PIECE, id="1024-max-pieces"),
    pytest.param(MAX_PIECE * 1024 + 1, MAX_PIECE, id="above-16g-capped"),
    pytest.param(2**50, MAX_PIECE, id="petabyte-capped"),
])
def test_piece_size_boundaries(length, expected):
    assert torrent.piece_size(length) == expected


def test_piece_size_capped_at_16_mib():
    assert torrent.piece_size(2**50) == 16 * MIB


def test_piece_size_doubles_at_each_boundary():
    size = MIN_PIECE
    while size < MAX_PIECE:
        assert torrent.piece_size(size * 1024) == size
        assert torrent.piece_size(size * 1024 + 1) == 2 * size
        size *= 2


@pytest.mark.parametrize("length", [0, 1, 12345, 300 * MIB, 3 * GIB + 7, 40 * GIB, 2**60])
def test_piece_size_power_of_two(length):
    size = torrent.piece_size(length)

    assert size & (size - 1) == 0


@pytest.mark.parametrize("length", [1, 257 * MIB, 3 * GIB + 7, 16 * GIB])
def test_piece_size_at_most_1024_pieces(length):
    size = torrent.piece_size(length)

    assert -(-length // size) <= 1024


def test_piece_size_negative():
    with pytest.raises(ValueError):
        torrent.piece_size(-1)


# BlobHasher

# Three full pieces and a short last one.
CHUNKED_BLOB = blob_bytes(3 * MIN_PIECE + 1234)


@pytest.mark.parametrize("chunk_sizes", [
    pytest.param([len(CHUNKED_BLOB)], id="whole"),
    pytest.param([4093], id="4093-bytes"),
    pytest.param([65537], id="65537-bytes"),
    pytest.param([MIN_PIECE - 1], id="piece-minus-one"),
    pytest.param([MIN_PIECE + 1], id="piece-plus-one"),
    pytest.param([MIN_PIECE], id="piece"),
    pytest.param([2 * MIN_PIECE + 3], id="two-pieces-plus-three"),
    pytest.param([1, 300_000, 5, 131_071], id="mixed"),
])
def test_hasher_chunking(chunk_sizes):
    hasher = hash_in_chunks(CHUNKED_BLOB, chunk_sizes)

    assert hasher.pieces() == reference_pieces(CHUNKED_BLOB, MIN_PIECE)


def test_hasher_one_byte_chunks():
    data = blob_bytes(5000)

    hasher = hash_in_chunks(data, [1])

    assert hasher.pieces() == reference_pieces(data, MIN_PIECE)


def test_hasher_one_byte_chunks_across_boundaries():
    # Feeding all of a multi-piece blob one byte at a time is slow, so only
    # the bytes around each piece boundary come one at a time.
    data = CHUNKED_BLOB
    hasher = torrent.BlobHasher(len(data))
    position = 0
    for boundary in range(MIN_PIECE, len(data), MIN_PIECE):
        hasher.update(data[position:boundary - 3])
        for index in range(boundary - 3, boundary + 3):
            hasher.update(data[index:index + 1])
        position = boundary + 3
    hasher.update(data[position:])

    assert hasher.pieces() == reference_pieces(data, MIN_PIECE)


@pytest.mark.parametrize("chunk_size", [MIN_PIECE, MIN_PIECE // 2, 2 * MIN_PIECE])
def test_hasher_exact_piece_multiple(chunk_size):
    data = blob_bytes(2 * MIN_PIECE)

    hasher = hash_in_chunks(data, [chunk_size])

    assert hasher.pieces() == reference_pieces(data, MIN_PIECE)


def test_hasher_exact_multiple_has_no_empty_piece():
    data = blob_bytes(2 * MIN_PIECE)

    hasher = hash_in_chunks(data, [MIN_PIECE])

    assert len(hasher.pieces()) == 2 * 20


def test_hasher_sha256():
    hasher = hash_in_chunks(CHUNKED_BLOB, [4093])

    assert hasher.sha256.hexdigest() == hashlib.sha256(CHUNKED_BLOB).hexdigest()


def test_hasher_received():
    hasher = hash_in_chunks(CHUNKED_BLOB, [4093])

    assert hasher.received == len(CHUNKED_BLOB)


def test_hasher_empty_chunks_ignored():
    data = blob_bytes(MIN_PIECE + 10)
    hasher = torrent.BlobHasher(len(data))
    hasher.update(b"")
    hasher.update(data[:MIN_PIECE])
    hasher.update(b"")
    hasher.update(data[MIN_PIECE:])
    hasher.update(b"")

    assert hasher.pieces() == reference_pieces(data, MIN_PIECE)


def test_hasher_uses_piece_size_of_length():
    length = MIN_PIECE * 1024 + 1

    assert torrent.BlobHasher(length).piece_length == 2 * MIN_PIECE


# Infohash determinism


@pytest.mark.parametrize("length", [1, 1000, MIN_PIECE, MIN_PIECE + 1, 3 * MIN_PIECE + 1234])
def test_info_hash_matches_reference(length):
    data = blob_bytes(length, seed=length)
    expected = reference_info(data)
    info = torrent.build_info(expected[b"name"].decode(), length, expected[b"pieces"])

    assert torrent.info_hash(info) == reference_info_hash(expected)


@pytest.mark.parametrize("length", [1, 1000, MIN_PIECE, MIN_PIECE + 1, 3 * MIN_PIECE + 1234])
def test_info_hash_matches_libtorrent(length):
    data = blob_bytes(length, seed=length)

    raw = metainfo_for(data)

    assert libtorrent_info_hash(raw) == reference_info_hash(reference_info(data))


def test_golden_piece_length():
    assert torrent.piece_size(len(GOLDEN_BLOB)) == GOLDEN_PIECE_LENGTH


def test_info_hash_golden_reference():
    info = reference_info(GOLDEN_BLOB, GOLDEN_PIECE_LENGTH)

    assert reference_info_hash(info) == GOLDEN_INFO_HASH


def test_info_hash_golden_build_info():
    hex_digest = hashlib.sha256(GOLDEN_BLOB).hexdigest()
    pieces = reference_pieces(GOLDEN_BLOB, GOLDEN_PIECE_LENGTH)
    info = torrent.build_info(hex_digest, len(GOLDEN_BLOB), pieces)

    assert torrent.info_hash(info) == GOLDEN_INFO_HASH


def test_info_hash_golden_libtorrent():
    assert libtorrent_info_hash(metainfo_for(GOLDEN_BLOB)) == GOLDEN_INFO_HASH


def test_info_hash_independent_of_trackers():
    single_tracker = metainfo_for(GOLDEN_BLOB, trackers=tuple(TRACKERS[:1]))
    three_trackers = metainfo_for(GOLDEN_BLOB)

    assert libtorrent_info_hash(single_tracker) == libtorrent_info_hash(three_trackers)


def test_build_info_reference_bytes():
    expected = reference_info(GOLDEN_BLOB)
    info = torrent.build_info(expected[b"name"].decode(), len(GOLDEN_BLOB), expected[b"pieces"])

    assert torrent.bencode(info) == reference_bencode(expected)


# build_metainfo


def test_metainfo_reference_bytes():
    info = reference_info(GOLDEN_BLOB)
    expected = {
        b"announce": TRACKERS[0].encode(),
        b"announce-list": [[url.encode()] for url in TRACKERS],
        b"info": info,
    }

    assert metainfo_for(GOLDEN_BLOB) == reference_bencode(expected)


def test_metainfo_top_level_keys():
    decoded = libtorrent.bdecode(metainfo_for(GOLDEN_BLOB))

    assert set(decoded) == {b"announce", b"announce-list", b"info"}


def test_metainfo_info_keys():
    decoded = libtorrent.bdecode(metainfo_for(GOLDEN_BLOB))

    assert set(decoded[b"info"]) == {b"length", b"name", b"piece length", b"pieces", b"private"}


@pytest.mark.parametrize("key", [b"creation date", b"created by", b"comment", b"encoding"])
def test_metainfo_without_builder_key(key):
    decoded = libtorrent.bdecode(metainfo_for(GOLDEN_BLOB))

    assert key not in decoded


@pytest.mark.parametrize("key", [b"attr", b"files", b"md5sum", b"source"])
def test_metainfo_info_without_key(key):
    decoded = libtorrent.bdecode(metainfo_for(GOLDEN_BLOB))

    assert key not in decoded[b"info"]


def test_metainfo_announce_is_first_tracker():
    decoded = libtorrent.bdecode(metainfo_for(GOLDEN_BLOB))

    assert decoded[b"announce"] == TRACKERS[0].encode()


def test_metainfo_one_tier_per_tracker():
    decoded = libtorrent.bdecode(metainfo_for(GOLDEN_BLOB))

    assert decoded[b"announce-list"] == [[url.encode()] for url in TRACKERS]


def test_metainfo_single_tracker_has_no_announce_list():
    decoded = libtorrent.bdecode(metainfo_for(GOLDEN_BLOB, trackers=tuple(TRACKERS[:1])))

    assert b"announce-list" not in decoded


def test_metainfo_libtorrent_private():
    info = libtorrent.torrent_info(metainfo_for(GOLDEN_BLOB))

    assert info.priv()


def test_metainfo_libtorrent_piece_count():
    info = libtorrent.torrent_info(metainfo_for(GOLDEN_BLOB))

    assert info.num_pieces() == -(-len(GOLDEN_BLOB) // MIN_PIECE)


def test_metainfo_requires_tracker():
    with pytest.raises(ValueError):
        metainfo_for(GOLDEN_BLOB, trackers=())


# parse_metainfo

GOLDEN_HEX = hashlib.sha256(GOLDEN_BLOB).hexdigest()
GOLDEN_REFERENCE_HASH = reference_info_hash(reference_info(GOLDEN_BLOB))


def raw_torrent(info_changes=(), drop=(), **top_level):
    """Encode a torrent of GOLDEN_BLOB with the reference encoder, altered as given."""
    info = reference_info(GOLDEN_BLOB)
    info.update(info_changes)
    for key in drop:
        del info[key]
    metainfo = {b"announce": TRACKERS[0].encode(), b"info": info}
    metainfo.update({key.replace("_", "-").encode(): value for key, value in top_level.items()})

    return reference_bencode(metainfo)


def test_parse_good_info_hash():
    parsed = torrent.parse_metainfo(metainfo_for(GOLDEN_BLOB), GOLDEN_HEX, len(GOLDEN_BLOB))

    assert parsed.info_hash == GOLDEN_REFERENCE_HASH


def test_parse_good_fields():
    raw = metainfo_for(GOLDEN_BLOB)

    parsed = torrent.parse_metainfo(raw, GOLDEN_HEX, len(GOLDEN_BLOB))

    assert parsed == torrent.Metainfo(
        info_hash=GOLDEN_REFERENCE_HASH,
        hex_digest=GOLDEN_HEX,
        length=len(GOLDEN_BLOB),
        piece_length=MIN_PIECE,
        pieces=reference_pieces(GOLDEN_BLOB, MIN_PIECE),
        announce=tuple(TRACKERS),
        raw=raw,
    )


def test_parse_reference_torrent():
    parsed = torrent.parse_metainfo(raw_torrent(), GOLDEN_HEX, len(GOLDEN_BLOB))

    assert parsed.info_hash == GOLDEN_REFERENCE_HASH


def test_parse_merges_announce_and_tiers():
    raw = raw_torrent(announce_list=[[TRACKERS[1].encode(), TRACKERS[0].encode()],
                                     [TRACKERS[2].encode()]])

    parsed = torrent.parse_metainfo(raw, GOLDEN_HEX, len(GOLDEN_BLOB))

    assert parsed.announce == tuple(TRACKERS)


def test_parse_ignores_malformed_announce_list():
    parsed = torrent.parse_metainfo(raw_torrent(announce_list=5), GOLDEN_HEX, len(GOLDEN_BLOB))

    assert parsed.announce == (TRACKERS[0],)


def test_parse_ignores_malformed_tier():
    raw = raw_torrent(announce_list=[5, [TRACKERS[1].encode()]])

    parsed = torrent.parse_metainfo(raw, GOLDEN_HEX, len(GOLDEN_BLOB))

    assert parsed.announce == (TRACKERS[0], TRACKERS[1])


def test_parse_wrong_name():
    other_hex = hashlib.sha256(b"another blob").hexdigest()

    with pytest.raises(P2PError):
        torrent.parse_metainfo(metainfo_for(GOLDEN_BLOB), other_hex, len(GOLDEN_BLOB))


def test_parse_wrong_length():
    with pytest.raises(P2PError):
        torrent.parse_metainfo(metainfo_for(GOLDEN_BLOB), GOLDEN_HEX, len(GOLDEN_BLOB) + 1)


def test_parse_wrong_piece_length():
    # Twice the deterministic piece length, with piece hashes to match, so
    # that only the piece length is wrong.
    raw = raw_torrent({
        b"piece length": 2 * MIN_PIECE,
        b"pieces": reference_pieces(GOLDEN_BLOB, 2 * MIN_PIECE),
    })

    with pytest.raises(P2PError):
        torrent.parse_metainfo(raw, GOLDEN_HEX, len(GOLDEN_BLOB))


@pytest.mark.parametrize("cut", [1, 19, 20])
def test_parse_truncated_pieces(cut):
    pieces = reference_pieces(GOLDEN_BLOB, MIN_PIECE)

    with pytest.raises(P2PError):
        torrent.parse_metainfo(raw_torrent({b"pieces": pieces[:-cut]}),
                               GOLDEN_HEX, len(GOLDEN_BLOB))


def test_parse_extra_piece_hash():
    pieces = reference_pieces(GOLDEN_BLOB, MIN_PIECE) + bytes(20)

    with pytest.raises(P2PError):
        torrent.parse_metainfo(raw_torrent({b"pieces": pieces}), GOLDEN_HEX, len(GOLDEN_BLOB))


@pytest.mark.parametrize("value", [
    pytest.param(5, id="int"),
    pytest.param([b"x" * 20], id="list"),
])
def test_parse_pieces_not_bytes(value):
    with pytest.raises(P2PError):
        torrent.parse_metainfo(raw_torrent({b"pieces": value}), GOLDEN_HEX, len(GOLDEN_BLOB))


@pytest.mark.parametrize("key", [b"attr", b"source", b"md5sum", b"name.utf-8"])
def test_parse_extra_info_key(key):
    with pytest.raises(P2PError):
        torrent.parse_metainfo(raw_torrent({key: b"x"}), GOLDEN_HEX, len(GOLDEN_BLOB))


def test_parse_missing_private():
    with pytest.raises(P2PError):
        torrent.parse_metainfo(raw_torrent(drop=[b"private"]), GOLDEN_HEX, len(GOLDEN_BLOB))


def test_parse_not_private():
    with pytest.raises(P2PError):
        torrent.parse_metainfo(raw_torrent({b"private": 0}), GOLDEN_HEX, len(GOLDEN_BLOB))


@pytest.mark.parametrize("raw", [
    pytest.param(b"", id="empty"),
    pytest.param(b"<html>502 Bad Gateway</html>", id="html"),
    pytest.param(b"d4:info", id="truncated"),
    pytest.param(raw_torrent() + b"\n", id="trailing-newline"),
    pytest.param(b"le", id="list"),
    pytest.param(b"de", id="no-info"),
    pytest.param(b"d4:infoi1ee", id="info-not-dict"),
])
def test_parse_garbage(raw):
    with pytest.raises(P2PError):
        torrent.parse_metainfo(raw, GOLDEN_HEX, len(GOLDEN_BLOB))


def test_parse_zero_length():
    empty_hex = hashlib.sha256(b"").hexdigest()
    raw = reference_bencode({
        b"announce": TRACKERS[0].encode(),
        b"info": {
            b"length": 0,
            b"name": empty_hex.encode(),
            b"piece length": MIN_PIECE,
            b"pieces": b"",
            b"private": 1,
        },
    })

    with pytest.raises(P2PError):
        torrent.parse_metainfo(raw, empty_hex, 0)
