"""The one-line description of a stalled download that the agent logs."""

from types import SimpleNamespace

import libtorrent as lt

from registry_p2p.session import describe_stall


def peer(address, pieces, flags=0, queue=0):
    return SimpleNamespace(ip=address, pieces=pieces, flags=flags, download_queue_length=queue)


def block(state):
    return {"state": state}


def test_names_missing_pieces_blocks_and_peers():
    have = [True, False, True, False]
    queue = [{"piece_index": 3, "blocks": [block(3), block(3), block(1)]}]
    peers = [peer(("10.0.0.2", 6881), [True, True, True, False], flags=lt.peer_info.interesting,
                  queue=1),
             peer(("10.0.0.3", 6881), [False] * 4, flags=lt.peer_info.remote_choked)]

    report = describe_stall(have, queue, peers)

    assert report.startswith("2 of 4 pieces missing (1, 3); ")
    assert "piece 3 blocks finished=2 requested=1" in report
    assert "peer 10.0.0.2:6881 has 1 missing, queue 1, interested" in report
    assert "peer 10.0.0.3:6881 has 0 missing, queue 0, choked-us" in report


def test_lists_at_most_eight_missing_pieces():
    report = describe_stall([False] * 20, [], [])

    assert report == "20 of 20 pieces missing (0, 1, 2, 3, 4, 5, 6, 7, ...)"


def test_complete_download_without_peers():
    assert describe_stall([True, True], [], []) == "0 of 2 pieces missing"


def test_short_peer_bitfield():
    report = describe_stall([True, False, False], [], [peer(("10.0.0.4", 1), [False, True])])

    assert report.endswith("peer 10.0.0.4:1 has 1 missing, queue 0, unchoked")
