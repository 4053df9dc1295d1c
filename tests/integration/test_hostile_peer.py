"""A peer that claims every piece and sends random bytes: agents reject its pieces and still pull."""

import hashlib
import re

import pytest

from registry_p2p import torrent
from registry_p2p.bencode import bdecode
from registry_p2p.sandbox.hostile_peer import HostilePeer, Torrent
from registry_p2p.sandbox.image import push_image
from registry_p2p.sandbox.pull import pull_image

pytestmark = pytest.mark.integration

REPOSITORY = "hostile/peer"
FAILED_BYTES_METRIC = re.compile(
    r"^registry_p2p_libtorrent_net_recv_failed_bytes_total (\S+)$", re.MULTILINE)


def _torrent(http, sidecar, digest):
    """Return the Torrent of a blob, as the sidecar builds and seeds it."""
    response = http.get(f"{sidecar.url}/p2p/v1/{REPOSITORY}/blobs/{digest}/torrent", timeout=60)
    assert response.status_code == 200, response.content
    info = bdecode(response.content)[b"info"]

    return Torrent(bytes.fromhex(torrent.info_hash(info)), info[b"length"],
                   info[b"piece length"])


def _failed_bytes(http, agent):
    response = http.get(f"{agent.url}/metrics", timeout=10)
    match = FAILED_BYTES_METRIC.search(response.text)
    assert match is not None, response.text

    return float(match.group(1))


def _corrupt_bytes(result):
    """Return the bytes the client received under a digest that they do not hash to."""
    return sum(blob.received for blob in result.blobs
               if blob.status == 200 and blob.sha256 != blob.digest)


def _unverified_cache_files(cache_dir):
    return [data for data in (cache_dir / "blobs").glob("*/*")
            if not data.suffix and hashlib.sha256(data.read_bytes()).hexdigest() != data.name]


@pytest.mark.reliability("Peer sends corrupt pieces", "attack")
def test_corrupt_pieces_rejected(make_stack, small_image, http, reliability):
    stack = make_stack(agent_count=2)
    push_image(small_image, f"{stack.registry.hostport}/{REPOSITORY}:v1")
    big_layers = [layer for layer in small_image.layers if layer.size >= 1024 * 1024]
    torrents = [_torrent(http, stack.sidecar, layer.digest) for layer in big_layers]

    with HostilePeer(torrents) as peer:
        # Announced as a seed before any agent, the peer is the only peer
        # that the tracker hands the first agent. The agent's chain has no
        # other node before it, and a swarm with a node seed hands out the
        # origin only to a leecher that stalls.
        for item in torrents:
            reply = peer.announce(f"{stack.sidecar.url}/announce", item.info_hash)
            assert b"failure reason" not in reply

        results = []
        for agent in stack.agents:
            result = pull_image(agent.url, stack.registry.hostport, REPOSITORY, "v1")
            results.append(result)
            reliability.add(completed=result.complete, corrupt_bytes=_corrupt_bytes(result))

    for result in results:
        assert result.complete
        assert _corrupt_bytes(result) == 0
    assert peer.requests_answered > 0
    first = stack.agents[0]
    assert _failed_bytes(http, first) > 0
    log_text = first.process.log_path.read_text()
    assert "failed its hash check" in log_text
    assert f"banned peer 127.0.0.1:{peer.port}" in log_text
    for agent in stack.agents:
        assert _unverified_cache_files(agent.cache_dir) == []
