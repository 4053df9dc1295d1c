"""Deterministic BitTorrent metainfo for registry blobs.

The info dictionary of a blob depends only on its digest and bytes, so every
sidecar, whatever its libtorrent version, gives the same blob the same
infohash. It contains exactly these keys (BEP 3, plus BEP 27's private flag)::

    length        blob size in bytes
    name          hex part of the sha256 digest
    piece length  piece_size(length)
    pieces        concatenated SHA-1 of each piece
    private       1: peers come from the trackers only, never from DHT or PEX

No creation date, creator, comment or file attributes are written, because
each would make the bytes differ between builders.
"""

import hashlib
from dataclasses import dataclass

from registry_p2p.bencode import BencodeError, bdecode, bencode
from registry_p2p.errors import P2PError

MIN_PIECE_SIZE = 1024 * 1024
MAX_PIECE_SIZE = 16 * 1024 * 1024
# Piece counts stay near or below this, which keeps metainfo under ~20 KiB
# while pieces remain small enough to spread among peers early.
TARGET_PIECES = 1024


def piece_size(length):
    """Return the piece length for a blob of ``length`` bytes.

    The smallest power of two from 1 MiB to 16 MiB that splits the blob
    into at most 1024 pieces; 16 MiB for blobs above 16 GiB.
    """
    if length < 0:
        raise ValueError(f"negative blob length {length}")

    size = MIN_PIECE_SIZE
    while size < MAX_PIECE_SIZE and size * TARGET_PIECES < length:
        size *= 2

    return size


class BlobHasher:
    """Compute a blob's sha256 and its SHA-1 piece hashes in one pass.

    The sidecar reads each blob from storage once and gets both the digest
    check and the torrent's pieces from that read.
    """

    def __init__(self, length):
        self.length = length
        self.piece_length = piece_size(length)
        self.sha256 = hashlib.sha256()
        self.received = 0
        self._pieces = []
        self._piece = hashlib.sha1()
        self._piece_filled = 0

    def update(self, chunk):
        self.sha256.update(chunk)
        self.received += len(chunk)

        view = memoryview(chunk)
        while view:
            room = self.piece_length - self._piece_filled
            part = view[:room]
            self._piece.update(part)
            self._piece_filled += len(part)
            view = view[len(part):]
            if self._piece_filled == self.piece_length:
                self._pieces.append(self._piece.digest())
                self._piece = hashlib.sha1()
                self._piece_filled = 0

    def pieces(self):
        """Return the concatenated piece hashes; call after the last update."""
        tail = [self._piece.digest()] if self._piece_filled else []

        return b"".join(self._pieces + tail)


@dataclass(frozen=True)
class Metainfo:
    """A parsed, validated single-file torrent of one blob."""

    info_hash: str
    hex_digest: str
    length: int
    piece_length: int
    pieces: bytes
    announce: tuple
    raw: bytes


def build_info(hex_digest, length, pieces):
    return {
        "length": length,
        "name": hex_digest,
        "piece length": piece_size(length),
        "pieces": pieces,
        "private": 1,
    }


def build_metainfo(hex_digest, length, pieces, trackers):
    """Return the .torrent bytes of a blob, announcing to ``trackers`` (URLs)."""
    if not trackers:
        raise ValueError("at least one tracker URL is required")

    metainfo = {
        "announce": trackers[0],
        "info": build_info(hex_digest, length, pieces),
    }
    if len(trackers) > 1:
        # BEP 12: one tier per tracker, because the sidecars' trackers
        # share no state and a peer must announce to each of them.
        metainfo["announce-list"] = [[url] for url in trackers]

    return bencode(metainfo)


def info_hash(info):
    """Return the hex SHA-1 of a bencoded info dictionary."""
    return hashlib.sha1(bencode(info)).hexdigest()


def parse_metainfo(raw, expected_hex_digest, expected_length):
    """Parse .torrent bytes received for a blob and check them against the blob.

    The name must be the blob's hex digest, the length its size from the
    registry, the piece length the deterministic one and the piece hashes
    complete, or P2PError is raised. Extra info keys are rejected because
    they would change the infohash.
    """
    try:
        metainfo = bdecode(raw)
    except BencodeError as exc:
        raise P2PError(f"invalid metainfo for {expected_hex_digest}: {exc}") from exc

    info = metainfo.get(b"info") if isinstance(metainfo, dict) else None
    if not isinstance(info, dict):
        raise P2PError(f"metainfo for {expected_hex_digest} has no info dictionary")

    expected_keys = {b"length", b"name", b"piece length", b"pieces", b"private"}
    if set(info) != expected_keys:
        raise P2PError(f"metainfo for {expected_hex_digest} has info keys "
                       f"{sorted(k.decode(errors='replace') for k in info)}")

    length = info[b"length"]
    pieces = info[b"pieces"]
    if info[b"name"] != expected_hex_digest.encode():
        raise P2PError(f"metainfo name {info[b'name']!r} is not {expected_hex_digest}")
    if length != expected_length:
        raise P2PError(f"metainfo length {length} for {expected_hex_digest}, "
                       f"registry reports {expected_length}")
    if info[b"piece length"] != piece_size(length) or info[b"private"] != 1:
        raise P2PError(f"metainfo for {expected_hex_digest} is not in deterministic form")

    if not isinstance(length, int) or length <= 0:
        raise P2PError(f"metainfo for {expected_hex_digest} has invalid length {length!r}")

    count = -(-length // piece_size(length))
    if not isinstance(pieces, bytes):
        raise P2PError(f"metainfo for {expected_hex_digest} has piece hashes of type "
                       f"{type(pieces).__name__}, expected a byte string")
    if len(pieces) != 20 * count:
        raise P2PError(f"metainfo for {expected_hex_digest} has {len(pieces)} bytes "
                       f"of piece hashes, expected {20 * count}")

    announce = _trackers(metainfo)

    return Metainfo(
        info_hash=info_hash(build_info(expected_hex_digest, length, pieces)),
        hex_digest=expected_hex_digest,
        length=length,
        piece_length=piece_size(length),
        pieces=pieces,
        announce=tuple(announce),
        raw=raw,
    )


def _trackers(metainfo):
    urls = []
    tiers = metainfo.get(b"announce-list", [])
    if not isinstance(tiers, list):
        tiers = []
    for tier in tiers:
        if isinstance(tier, list):
            urls.extend(url for url in tier if isinstance(url, bytes))
    if isinstance(metainfo.get(b"announce"), bytes):
        urls.insert(0, metainfo[b"announce"])

    unique = []
    for url in urls:
        text = url.decode(errors="replace")
        if text not in unique:
            unique.append(text)

    return unique
