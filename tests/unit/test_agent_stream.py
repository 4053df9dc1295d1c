"""Piece windows and the digest check of blobs that the agent streams while they download."""

import hashlib

import pytest

from registry_p2p.agent.stream import READ_AHEAD_BYTES, DigestCheck, PieceWindow
from registry_p2p.proxy import BodyDigestMismatch
from registry_p2p.torrent import piece_size

MIB = 1024 * 1024


def test_piece_window_count_and_sizes():
    window = PieceWindow(length=10 * MIB + 5, piece_length=MIB)

    assert window.count == 11
    assert window.piece_size(0) == MIB
    assert window.piece_size(10) == 5


@pytest.mark.parametrize("offset, piece", [(0, 0), (MIB - 1, 0), (MIB, 1), (10 * MIB + 4, 10)])
def test_piece_at_offset(offset, piece):
    window = PieceWindow(length=10 * MIB + 5, piece_length=MIB)

    assert window.piece_at(offset) == piece


@pytest.mark.parametrize("offset", [-1, 10 * MIB + 5])
def test_piece_at_outside_blob(offset):
    window = PieceWindow(length=10 * MIB + 5, piece_length=MIB)

    with pytest.raises(ValueError):
        window.piece_at(offset)


def test_window_ends_clamped_to_blob():
    window = PieceWindow(length=20 * MIB, piece_length=MIB, deadline_bytes=64 * MIB)

    assert window.read_end(0) == READ_AHEAD_BYTES // MIB
    assert window.deadline_end(0) == 20
    assert window.read_end(18) == 20


@pytest.mark.parametrize("deadline_bytes, pieces", [(0, 0), (MIB - 1, 0), (4 * MIB, 4), (5 * MIB + 1, 5)])
def test_deadlines_cover_the_configured_bytes(deadline_bytes, pieces):
    window = PieceWindow(length=20 * MIB, piece_length=MIB, deadline_bytes=deadline_bytes)

    assert window.deadline_end(3) == 3 + pieces
    assert window.deadline_end(19) == min(20, 19 + pieces)


@pytest.mark.parametrize("deadline_bytes", [0, 4 * MIB])
def test_deadline_on_first_piece(deadline_bytes):
    window = PieceWindow(length=20 * MIB, piece_length=MIB, deadline_bytes=deadline_bytes)

    assert window.deadline_end(0, first=True) == max(1, deadline_bytes // MIB)


@pytest.mark.parametrize("length", [MIB, 512 * MIB, 4 * 1024 * MIB, 64 * 1024 * MIB])
def test_window_memory_bounded(length):
    window = PieceWindow(length=length, piece_length=piece_size(length))

    # Pieces read ahead are held in memory, and one more is being sent.
    assert (window.read_pieces + 1) * window.piece_length <= 48 * MIB
    assert window.read_pieces >= 2


def test_digest_check_passes_matching_body():
    body = bytes(range(256)) * 1000
    check = DigestCheck(hashlib.sha256(body).hexdigest(), len(body))

    for start in range(0, len(body), 4096):
        check.add(body[start:start + 4096])

    assert check.complete
    assert check.sent == len(body)


def test_digest_check_rejects_last_chunk():
    body = b"a" * 10000
    check = DigestCheck(hashlib.sha256(b"b" * 10000).hexdigest(), len(body))

    check.add(body[:9000])

    with pytest.raises(BodyDigestMismatch):
        check.add(body[9000:])


def test_digest_check_rejects_extra_bytes():
    check = DigestCheck(hashlib.sha256(b"abc").hexdigest(), 3)

    with pytest.raises(BodyDigestMismatch):
        check.add(b"abcd")
    assert check.sent == 0
