"""Unit tests of registry_p2p.tracker: announce parsing, compact replies, the peer table.

Replies are decoded with the small decoder below, not with registry_p2p's
own bencode module.
"""

import struct

import pytest

from registry_p2p import tracker
from registry_p2p.tracker import Announce, AnnounceError, PeerTable

# 20 bytes that a str-decoding query parser would corrupt: NUL, 0xFF, and
# the query delimiters "+", "&", "=" and "%".
INFO_HASH = b"\x00\xffA+&=%z" + b"\x80" * 12
INFO_HASH_QUERY = "%00%ffA%2B%26%3D%25z" + "%80" * 12
PEER_ID = b"-LT2080-" + bytes(range(12))
PEER_ID_QUERY = "-LT2080-" + "".join(f"%{byte:02X}" for byte in range(12))

REMOTE = "127.0.0.2"


def reference_bdecode(data):
    value, end = _decode_at(data, 0)
    if end != len(data):
        raise ValueError(f"trailing bytes at offset {end}")
    return value


def _decode_at(data, pos):
    lead = data[pos:pos + 1]
    if lead == b"i":
        end = data.index(b"e", pos)
        return int(data[pos + 1:end]), end + 1
    if lead == b"l":
        items = []
        pos += 1
        while data[pos:pos + 1] != b"e":
            item, pos = _decode_at(data, pos)
            items.append(item)
        return items, pos + 1
    if lead == b"d":
        result = {}
        pos += 1
        while data[pos:pos + 1] != b"e":
            key, pos = _decode_at(data, pos)
            result[key], pos = _decode_at(data, pos)
        return result, pos + 1
    colon = data.index(b":", pos)
    end = colon + 1 + int(data[pos:colon])
    return data[colon + 1:end], end


def announce_query(**params):
    """Return a raw announce query string; a value of None leaves that parameter out."""
    values = {
        "info_hash": INFO_HASH_QUERY,
        "peer_id": PEER_ID_QUERY,
        "port": "6881",
        "uploaded": "0",
        "downloaded": "0",
        "left": "1000",
        "compact": "1",
    }
    values.update(params)

    return "&".join(f"{key}={value}" for key, value in values.items() if value is not None)


def parse(remote=REMOTE, **params):
    return tracker.parse_announce(announce_query(**params), remote)


# parse_announce


def test_parse_binary_info_hash():
    assert parse().info_hash == INFO_HASH


def test_parse_binary_peer_id():
    assert parse().peer_id == PEER_ID


def test_parse_bytes_query():
    request = tracker.parse_announce(announce_query().encode("ascii"), REMOTE)

    assert request.info_hash == INFO_HASH


def test_parse_port():
    assert parse().port == 6881


def test_parse_left():
    assert parse().left == 1000


def test_parse_negative_left_is_zero():
    assert parse(left="-5").left == 0


def test_parse_missing_left_is_zero():
    assert parse(left=None).left == 0


def test_parse_remote_address():
    assert parse().ip == REMOTE


def test_parse_ignores_ip_parameter():
    assert parse(ip="127.0.0.99").ip == REMOTE


def test_parse_ipv4_mapped_address():
    assert parse(remote="::ffff:127.0.0.2").ip == "127.0.0.2"


def test_parse_ipv6_address():
    assert parse(remote="::1").ip == "::1"


@pytest.mark.parametrize("value", [
    pytest.param(None, id="missing"),
    pytest.param("", id="empty"),
    pytest.param(INFO_HASH_QUERY[:-3], id="19-bytes"),
    pytest.param(INFO_HASH_QUERY + "%80", id="21-bytes"),
    pytest.param(INFO_HASH.hex(), id="hex-40-chars"),
])
def test_parse_bad_info_hash(value):
    with pytest.raises(AnnounceError):
        parse(info_hash=value)


@pytest.mark.parametrize("value", [
    pytest.param(None, id="missing"),
    pytest.param(PEER_ID_QUERY[:-3], id="19-bytes"),
])
def test_parse_bad_peer_id(value):
    with pytest.raises(AnnounceError):
        parse(peer_id=value)


@pytest.mark.parametrize("value", [
    pytest.param(None, id="missing"),
    pytest.param("", id="empty"),
    pytest.param("0", id="zero"),
    pytest.param("65536", id="too-large"),
    pytest.param("-1", id="negative"),
    pytest.param("http", id="name"),
    pytest.param("68%FF81", id="non-ascii"),
    pytest.param("6881.0", id="fraction"),
])
def test_parse_bad_port(value):
    with pytest.raises(AnnounceError):
        parse(port=value)


@pytest.mark.parametrize("value", ["1", "65535"])
def test_parse_port_range_ends(value):
    assert parse(port=value).port == int(value)


@pytest.mark.parametrize("event", ["started", "completed", "stopped", "empty", ""])
def test_parse_known_event(event):
    assert parse(event=event).event == event


def test_parse_missing_event():
    assert parse().event == ""


@pytest.mark.parametrize("event", ["paused", "STARTED", "start"])
def test_parse_unknown_event(event):
    with pytest.raises(AnnounceError):
        parse(event=event)


def test_parse_default_numwant():
    assert parse().numwant == tracker.DEFAULT_NUMWANT


def test_parse_numwant():
    assert parse(numwant="7").numwant == 7


def test_parse_numwant_capped():
    assert parse(numwant="100000").numwant == tracker.MAX_NUMWANT


def test_parse_negative_numwant():
    assert parse(numwant="-3").numwant == 0


def test_parse_bad_numwant():
    with pytest.raises(AnnounceError):
        parse(numwant="many")


def test_parse_first_duplicate_wins():
    query = announce_query() + "&port=1234"

    assert tracker.parse_announce(query, REMOTE).port == 6881


def test_announce_error_is_value_error():
    assert issubclass(AnnounceError, ValueError)


# compact_reply and failure_reply


def test_compact_ipv4_peers():
    reply = reference_bdecode(tracker.compact_reply(
        [("127.0.0.2", 6881), ("127.0.0.3", 51413)], interval=30))

    assert reply[b"peers"] == (bytes([127, 0, 0, 2]) + struct.pack(">H", 6881)
                               + bytes([127, 0, 0, 3]) + struct.pack(">H", 51413))


def test_compact_six_bytes_per_ipv4_peer():
    peers = [(f"127.0.0.{n}", 6000 + n) for n in range(1, 11)]

    reply = reference_bdecode(tracker.compact_reply(peers, interval=30))

    assert len(reply[b"peers"]) == 6 * 10


def test_compact_ipv4_only_has_no_peers6():
    reply = reference_bdecode(tracker.compact_reply([("127.0.0.2", 6881)], interval=30))

    assert b"peers6" not in reply


def test_compact_ipv6_peer():
    reply = reference_bdecode(tracker.compact_reply([("::1", 6881)], interval=30))

    assert reply[b"peers6"] == bytes(15) + b"\x01" + struct.pack(">H", 6881)


def test_compact_eighteen_bytes_per_ipv6_peer():
    peers = [(f"fd00::{n}", 6000 + n) for n in range(1, 4)]

    reply = reference_bdecode(tracker.compact_reply(peers, interval=30))

    assert len(reply[b"peers6"]) == 18 * 3


def test_compact_ipv6_not_in_peers():
    reply = reference_bdecode(tracker.compact_reply([("::1", 6881)], interval=30))

    assert reply[b"peers"] == b""


def test_compact_mixed_families_ipv4():
    reply = reference_bdecode(tracker.compact_reply(
        [("::1", 1), ("127.0.0.2", 2), ("fd00::2", 3)], interval=30))

    assert reply[b"peers"] == bytes([127, 0, 0, 2, 0, 2])


def test_compact_mixed_families_ipv6():
    reply = reference_bdecode(tracker.compact_reply(
        [("::1", 1), ("127.0.0.2", 2), ("fd00::2", 3)], interval=30))

    assert len(reply[b"peers6"]) == 36


def test_compact_interval():
    reply = reference_bdecode(tracker.compact_reply([], interval=30))

    assert reply[b"interval"] == 30


def test_compact_min_interval():
    reply = reference_bdecode(tracker.compact_reply([], interval=30))

    assert reply[b"min interval"] == 15


def test_compact_empty_peers():
    reply = reference_bdecode(tracker.compact_reply([], interval=30))

    assert reply[b"peers"] == b""


def test_failure_reply():
    reply = reference_bdecode(tracker.failure_reply("port must be an integer"))

    assert reply == {b"failure reason": b"port must be an integer"}


# PeerTable


class FakeClock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


def request(peer, left=100, event="", numwant=50, info_hash=INFO_HASH):
    """Return an announce from peer number ``peer``, listening on 127.0.0.<peer>:6881."""
    return Announce(
        info_hash=info_hash,
        peer_id=bytes([peer]) * 20,
        ip=f"127.0.0.{peer}",
        port=6881,
        left=left,
        event=event,
        numwant=numwant,
    )


def address(peer):
    return (f"127.0.0.{peer}", 6881)


@pytest.fixture
def clock():
    return FakeClock()


@pytest.fixture
def table(clock):
    return PeerTable(ttl=120, peer_selection="random", clock=clock)


def test_table_first_peer_gets_nobody(table):
    assert table.announce(request(1)) == []


def test_table_second_peer_gets_first(table):
    table.announce(request(1))

    assert table.announce(request(2)) == [address(1)]


def test_table_excludes_requester(table):
    table.announce(request(1))
    table.announce(request(2))

    assert address(1) not in table.announce(request(1))


def test_table_separate_swarms(table):
    table.announce(request(1, info_hash=b"\x01" * 20))

    assert table.announce(request(2, info_hash=b"\x02" * 20)) == []


def test_table_keeps_peer_until_ttl(table, clock):
    table.announce(request(1))
    clock.now += 120

    assert table.announce(request(2)) == [address(1)]


def test_table_expires_peer_after_ttl(table, clock):
    table.announce(request(1))
    clock.now += 120.5

    assert table.announce(request(2)) == []


def test_table_reannounce_refreshes(table, clock):
    table.announce(request(1))
    clock.now += 100
    table.announce(request(1))
    clock.now += 100

    assert table.announce(request(2)) == [address(1)]


def test_table_swarm_sizes(table):
    table.announce(request(1))
    table.announce(request(2))

    assert table.swarm_sizes() == {INFO_HASH.hex(): 2}


def test_table_swarm_sizes_expire(table, clock):
    table.announce(request(1))
    clock.now += 121

    assert table.swarm_sizes() == {}


def test_table_stopped_removes_peer(table):
    table.announce(request(1))
    table.announce(request(1, event="stopped"))

    assert table.announce(request(2)) == []


def test_table_stopped_last_peer_drops_swarm(table):
    table.announce(request(1))
    table.announce(request(1, event="stopped"))

    assert table.swarm_sizes() == {}


def test_table_stopped_peer_gets_no_self(table):
    table.announce(request(1))

    assert table.announce(request(1, event="stopped")) == []


def test_table_seed_gets_only_leechers(table):
    table.announce(request(1, left=0))
    table.announce(request(2, left=50))
    table.announce(request(3, left=0))

    assert table.announce(request(4, left=0)) == [address(2)]


def test_table_leecher_gets_seeds_and_leechers(table):
    table.announce(request(1, left=0))
    table.announce(request(2, left=50))

    assert sorted(table.announce(request(3, left=50))) == [address(1), address(2)]


def test_table_completed_peer_is_seed(table):
    table.announce(request(1, left=0))
    table.announce(request(2, left=0, event="completed"))

    assert table.announce(request(3, left=0)) == []


def test_table_numwant_limits_reply(table):
    for peer in range(1, 21):
        table.announce(request(peer))

    assert len(table.announce(request(100, numwant=5))) == 5


def test_table_numwant_zero(table):
    table.announce(request(1))

    assert table.announce(request(2, numwant=0)) == []


def test_table_numwant_capped_from_query():
    # Peer ids and addresses differ per peer, so 250 distinct peers join.
    table = PeerTable(ttl=120, peer_selection="random", clock=FakeClock())
    for peer in range(250):
        table.announce(Announce(INFO_HASH, peer.to_bytes(20, "big"), "127.0.0.1",
                                10000 + peer, 100, "", 0))

    reply = table.announce(parse(numwant="1000"))

    assert len(reply) == tracker.MAX_NUMWANT


# Origin seeds: a sidecar's seeder is handed to origin_fanout leechers at a time.

ORIGIN = 50


def origin_request(peer=ORIGIN, event=""):
    """Return an announce from a sidecar's seeder, listening on 127.0.0.<peer>:6881."""
    return Announce(
        info_hash=INFO_HASH,
        peer_id=tracker.ORIGIN_PEER_ID_PREFIX + bytes([peer]) * 17,
        ip=f"127.0.0.{peer}",
        port=6881,
        left=0,
        event=event,
        numwant=50,
    )


def test_origin_peer_id_prefix():
    assert tracker.is_origin(origin_request().peer_id)


def test_node_peer_id_not_origin():
    assert not tracker.is_origin(PEER_ID)


def test_origin_first_leecher_gets_origin(table):
    table.announce(origin_request())

    assert table.announce(request(1)) == [address(ORIGIN)]


def test_origin_second_leecher_gets_peers_only(table):
    table.announce(origin_request())
    table.announce(request(1))

    assert table.announce(request(2)) == [address(1)]


def test_origin_slot_kept_on_reannounce(table):
    table.announce(origin_request())
    table.announce(request(1))
    table.announce(request(2))

    assert address(ORIGIN) in table.announce(request(1))


def test_origin_slot_freed_on_completion(table):
    table.announce(origin_request())
    table.announce(request(1))
    table.announce(request(1, left=0, event="completed"))

    assert table.announce(origin_request()) == []


def test_origin_withheld_once_node_completes(table):
    # The node that completed serves the blob, so the origin is not handed
    # out again even though its slot is free.
    table.announce(origin_request())
    table.announce(request(1))
    table.announce(request(1, left=0, event="completed"))

    assert table.announce(request(2)) == [address(1)]


def test_origin_slot_freed_on_stop(table):
    table.announce(origin_request())
    table.announce(request(1))
    table.announce(request(1, event="stopped"))

    assert address(ORIGIN) in table.announce(request(2))


def test_origin_slot_freed_on_expiry(table, clock):
    table.announce(origin_request())
    table.announce(request(1))
    clock.now += 100
    table.announce(origin_request())
    clock.now += 30

    assert address(ORIGIN) in table.announce(request(2))


def test_origin_learns_assigned_leechers(table):
    table.announce(origin_request())
    table.announce(request(1))
    table.announce(request(2))

    assert table.announce(origin_request()) == [address(1)]


def test_late_origin_assigned_waiting_leecher(table):
    # The leecher announced before the seeder had the torrent; the seeder's
    # first announce hands it that leecher, so neither waits an interval.
    table.announce(request(1))
    table.announce(request(2))

    assert table.announce(origin_request()) == [address(1)]


def test_late_origin_not_given_leechers_after_node_seed(table):
    table.announce(request(1, left=0))
    table.announce(request(2))

    assert table.announce(origin_request()) == []


def test_stalled_leecher_gets_origin(table):
    # Node 1 completed, so node 2 gets only node 1; when node 2 announces
    # again without progress, it gets the origin after all.
    table.announce(origin_request())
    table.announce(request(1, left=0))
    table.announce(request(2, left=500))

    assert address(ORIGIN) in table.announce(request(2, left=500))


def test_progressing_leecher_no_origin(table):
    table.announce(origin_request())
    table.announce(request(1, left=0))
    table.announce(request(2, left=500))

    assert address(ORIGIN) not in table.announce(request(2, left=400))


def test_origin_not_given_to_seed(table):
    table.announce(origin_request())
    table.announce(request(1))

    assert table.announce(request(2, left=0)) == [address(1)]


def test_origin_fanout_two(clock):
    table = PeerTable(ttl=120, origin_fanout=2, clock=clock)
    table.announce(origin_request())
    table.announce(request(1))
    table.announce(request(2))

    assert address(ORIGIN) not in table.announce(request(3))


def test_origin_fanout_two_second_leecher(clock):
    table = PeerTable(ttl=120, origin_fanout=2, clock=clock)
    table.announce(origin_request())
    table.announce(request(1))

    assert address(ORIGIN) in table.announce(request(2))


def test_origin_stopped_leaves_swarm(table):
    table.announce(origin_request())
    table.announce(origin_request(event="stopped"))

    assert table.announce(request(1)) == []


# Bookkeeping that keeps an announce from scanning the whole swarm.


def test_expiry_follows_last_announce(table, clock):
    # Peer 1 announced first but again after peer 2, so only peer 2 expires.
    table.announce(request(1))
    clock.now += 50
    table.announce(request(2))
    clock.now += 50
    table.announce(request(1))
    clock.now += 75

    assert table.announce(request(3)) == [address(1)]


def test_expiry_of_every_peer(table, clock):
    for peer in range(1, 6):
        table.announce(request(peer))
        clock.now += 1
    clock.now += 121

    assert table.announce(request(9)) == []
    assert table.swarm_sizes() == {INFO_HASH.hex(): 1}


def test_expired_seed_frees_origin(table, clock):
    table.announce(origin_request())
    table.announce(request(1, left=0, event="completed"))
    clock.now += 100
    table.announce(origin_request())
    clock.now += 30

    assert address(ORIGIN) in table.announce(request(2))


def test_stopped_seed_frees_origin(table):
    table.announce(origin_request())
    table.announce(request(1, left=0, event="completed"))
    table.announce(request(1, left=0, event="stopped"))

    assert address(ORIGIN) in table.announce(request(2))


def test_seed_counted_once_per_reannounce(table):
    table.announce(origin_request())
    table.announce(request(1, left=0, event="completed"))
    table.announce(request(1, left=0))
    table.announce(request(1, left=0))
    table.announce(request(1, left=0, event="stopped"))

    assert address(ORIGIN) in table.announce(request(2))


def test_seed_restarting_as_leecher_gets_origin(table):
    # A node that lost its copy announces again with bytes left, and no
    # other node has the blob.
    table.announce(origin_request())
    table.announce(request(1, left=0, event="completed"))

    assert address(ORIGIN) in table.announce(request(1, left=100, event="started"))


def test_sample_is_distinct_others(table):
    for peer in range(1, 41):
        table.announce(request(peer))

    reply = table.announce(request(41, numwant=25))

    assert len(reply) == 25
    assert len(set(reply)) == 25
    assert address(41) not in reply
    assert set(reply) <= {address(peer) for peer in range(1, 41)}


def test_sample_varies_between_announces(table):
    for peer in range(1, 41):
        table.announce(request(peer))

    replies = {tuple(table.announce(request(41, numwant=5))) for _ in range(20)}

    assert len(replies) > 1


def test_origin_comes_first_within_numwant(table):
    table.announce(origin_request())
    for peer in range(1, 11):
        table.announce(request(peer))
    table.announce(request(1))

    assert table.announce(request(1, numwant=1)) == [address(ORIGIN)]


def test_origin_in_reply_with_more_peers(table):
    table.announce(origin_request())
    table.announce(request(1))
    for peer in range(2, 11):
        table.announce(request(peer))

    reply = table.announce(request(1, numwant=5))

    assert reply[0] == address(ORIGIN)
    assert len(reply) == 5
    assert address(1) not in reply


def test_compact_reply_cached_address_changes_nothing():
    first = tracker.compact_reply([("127.0.0.7", 7000), ("::1", 7001)], 30)
    second = tracker.compact_reply([("127.0.0.7", 7000), ("::1", 7001)], 30)

    assert first == second
    assert reference_bdecode(second)[b"peers"] == bytes([127, 0, 0, 7]) + (7000).to_bytes(2, "big")


# Chain selection: each leecher gets the CHAIN_UPSTREAM nodes that announced before it.


@pytest.fixture
def chain(clock):
    return PeerTable(ttl=120, clock=clock)


def test_chain_is_default(chain):
    assert chain.peer_selection == "chain"


def test_chain_rejects_unknown_selection(clock):
    with pytest.raises(ValueError):
        PeerTable(ttl=120, peer_selection="nearest", clock=clock)


def test_chain_leecher_gets_predecessors(chain):
    for peer in range(1, 6):
        chain.announce(request(peer))

    assert chain.announce(request(6)) == [address(4), address(5)]


def test_chain_reannounce_keeps_place(chain):
    for peer in range(1, 6):
        chain.announce(request(peer))

    assert chain.announce(request(3)) == [address(1), address(2)]


def test_chain_second_leecher_gets_first(chain):
    chain.announce(request(1))

    assert chain.announce(request(2)) == [address(1)]


def test_chain_seed_gets_successors(chain):
    for peer in range(1, 6):
        chain.announce(request(peer))

    assert chain.announce(request(2, left=0)) == [address(3), address(4)]


def test_chain_closes_stopped_gap(chain):
    for peer in range(1, 5):
        chain.announce(request(peer))
    chain.announce(request(3, event="stopped"))

    assert chain.announce(request(4)) == [address(1), address(2)]


def test_chain_first_leecher_gets_origin(chain):
    chain.announce(origin_request())

    assert chain.announce(request(1)) == [address(ORIGIN)]


def test_chain_later_leechers_get_nodes_only(chain):
    chain.announce(origin_request())
    chain.announce(request(1))
    chain.announce(request(2))

    assert chain.announce(request(3)) == [address(1), address(2)]


def test_chain_origin_learns_first_leecher(chain):
    chain.announce(origin_request())
    chain.announce(request(1))
    chain.announce(request(2))

    assert chain.announce(origin_request()) == [address(1)]


def test_chain_stalled_leecher_gets_origin(chain):
    chain.announce(origin_request())
    chain.announce(request(1))
    chain.announce(request(2))
    chain.announce(request(3, left=50))

    assert chain.announce(request(3, left=50)) == [address(ORIGIN), address(1), address(2)]


def test_chain_early_leecher_gets_origin_later(chain):
    # The first leecher announced before the sidecar's seeder did, so its
    # next announce brings the origin.
    chain.announce(request(1))
    chain.announce(origin_request())

    assert chain.announce(request(1)) == [address(ORIGIN)]


def test_chain_respects_numwant(chain):
    chain.announce(origin_request())
    chain.announce(request(1))
    chain.announce(request(2))
    chain.announce(request(3, left=50))

    assert chain.announce(request(3, left=50, numwant=1)) == [address(ORIGIN)]
