"""How the piece deadlines and reads of several readers of one torrent merge."""

import concurrent.futures

from registry_p2p.piece_deadlines import DEADLINE_STEP_MS, PieceDeadlines


def test_window_deadlines_in_piece_order():
    table = PieceDeadlines()

    table.set_window("a", 3, 6)

    assert table.changes() == [(3, (0, False)), (4, (DEADLINE_STEP_MS, False)),
                               (5, (2 * DEADLINE_STEP_MS, False))]
    assert table.changes() == []


def test_moved_window_changes_edges_only():
    table = PieceDeadlines()
    table.set_window("a", 0, 4)
    table.changes()

    table.set_window("a", 1, 5)

    assert table.changes() == [(0, None), (4, (3 * DEADLINE_STEP_MS, False))]


def test_overlapping_readers_take_earliest():
    table = PieceDeadlines()
    table.set_window("a", 0, 4)
    table.set_window("b", 2, 6)

    assert table.state(2) == (0, False)
    assert table.state(3) == (DEADLINE_STEP_MS, False)
    assert table.state(5) == (3 * DEADLINE_STEP_MS, False)


def test_release_keeps_other_reader_pieces():
    table = PieceDeadlines()
    table.set_window("a", 0, 4)
    table.set_window("b", 2, 6)
    table.changes()

    table.release("a")

    changes = dict(table.changes())
    assert changes[0] is None
    assert changes[1] is None
    # Pieces 2 and 3 keep b's deadlines, which were already applied.
    assert 2 not in changes
    assert table.state(3) == (DEADLINE_STEP_MS, False)
    assert table.reader_count() == 1


def test_read_sets_alert_flag():
    table = PieceDeadlines()
    table.set_window("a", 0, 2)
    table.changes()

    table.add_read("a", 0, concurrent.futures.Future())

    assert table.changes() == [(0, (0, True))]


def test_read_reapplied_when_unchanged():
    table = PieceDeadlines()
    table.set_window("a", 0, 2)
    table.add_read("a", 0, concurrent.futures.Future())
    table.changes()

    # libtorrent drops a deadline once the piece passes its hash check,
    # so a second read must reach libtorrent although the state is the same.
    table.add_read("b", 0, concurrent.futures.Future())

    assert table.changes() == [(0, (0, True))]


def test_take_reads_returns_every_waiter():
    table = PieceDeadlines()
    first, second = concurrent.futures.Future(), concurrent.futures.Future()
    table.set_window("a", 0, 2)
    table.add_read("a", 1, first)
    table.add_read("b", 1, second)
    table.changes()

    taken = table.take_reads(1)

    assert taken == [first, second]
    assert table.take_reads(1) == []
    assert table.changes() == [(1, (DEADLINE_STEP_MS, False))]


def test_read_outside_window_has_no_deadline():
    table = PieceDeadlines()

    table.add_read("a", 7, concurrent.futures.Future())

    assert table.changes() == [(7, (None, True))]


def test_release_returns_own_reads():
    table = PieceDeadlines()
    mine, theirs = concurrent.futures.Future(), concurrent.futures.Future()
    table.set_window("a", 0, 2)
    table.set_window("b", 0, 2)
    table.add_read("a", 0, mine)
    table.add_read("b", 0, theirs)
    table.changes()

    dropped = table.release("a")

    assert dropped == [mine]
    assert table.state(0) == (0, True)
    assert table.take_reads(0) == [theirs]


def test_last_release_empties_table():
    table = PieceDeadlines()
    table.set_window("a", 0, 2)
    table.add_read("a", 0, concurrent.futures.Future())

    table.release("a")

    assert table.is_empty()
    assert table.reader_count() == 0
    assert table.changes() == [(0, None)]


def test_take_all_reads():
    table = PieceDeadlines()
    futures = [concurrent.futures.Future() for _ in range(3)]
    table.add_read("a", 0, futures[0])
    table.add_read("a", 1, futures[1])
    table.add_read("b", 1, futures[2])

    assert sorted(map(id, table.take_all_reads())) == sorted(map(id, futures))
    assert table.take_reads(1) == []
