"""Piece deadlines and piece reads that the readers of one torrent request, merged per piece.

libtorrent keeps one deadline and one flag per piece
(``torrent_handle.set_piece_deadline``), but several readers can stream
the same blob at different positions. ``PieceDeadlines`` stores what each
reader requested and returns, piece by piece, the state to give
libtorrent, so that no reader loses a deadline or a read to another one.
It does no I/O, and the session's owner thread applies its changes.
"""

# Milliseconds between the deadlines of consecutive pieces of a window.
# libtorrent requests time-critical pieces in deadline order, so only the
# order matters. Small steps keep a whole window of 64 pieces due within
# a second.
DEADLINE_STEP_MS = 10


class PieceDeadlines:
    """The windows and pending piece reads of every reader of one torrent.

    A reader is any hashable token. Its window is a range of pieces with
    deadlines in index order. A read is a Future that receives a piece's
    bytes once libtorrent reads it: through the alert flag of the piece's
    deadline inside a window, or once the piece has passed its hash check
    outside every window. After each change, ``changes()`` returns the pieces
    whose merged state libtorrent must be given.
    """

    def __init__(self):
        self._windows = {}
        self._reads = {}
        self._applied = {}
        self._touched = set()
        self._forced = set()

    def set_window(self, reader, first, end):
        """Give ``reader`` deadlines on pieces ``first`` to ``end - 1`` and drop its others.

        A piece keeps the deadline it got when it entered the window, so a
        window that moves forward changes only the pieces that enter or
        leave it.
        """
        window = self._windows.setdefault(reader, {})
        for piece in [piece for piece in window if not first <= piece < end]:
            del window[piece]
            self._touched.add(piece)

        for piece in range(first, end):
            if piece not in window:
                window[piece] = (piece - first) * DEADLINE_STEP_MS
                self._touched.add(piece)

    def add_read(self, reader, piece, future):
        """Ask for the bytes of ``piece`` for ``reader``; ``future`` receives them.

        The piece is applied again even when its state is unchanged,
        because libtorrent drops a piece's deadline once the piece has
        passed its hash check, and only a new call reads a piece that it
        has.
        """
        self._reads.setdefault(piece, []).append((reader, future))
        self._forced.add(piece)

    def take_reads(self, piece):
        """Remove and return the Futures waiting for the bytes of ``piece``."""
        waiting = self._reads.pop(piece, [])
        if waiting:
            self._touched.add(piece)

        return [future for _, future in waiting]

    def release(self, reader):
        """Drop every deadline and read of ``reader``, and return its Futures still waiting."""
        window = self._windows.pop(reader, {})
        self._touched.update(window)

        dropped = []
        for piece in list(self._reads):
            kept = [(owner, future) for owner, future in self._reads[piece] if owner != reader]
            dropped += [future for owner, future in self._reads[piece] if owner == reader]
            if len(kept) != len(self._reads[piece]):
                self._touched.add(piece)
            if kept:
                self._reads[piece] = kept
            else:
                del self._reads[piece]

        return dropped

    def take_all_reads(self):
        """Remove and return every waiting Future, for a torrent that is going away."""
        futures = [future for waiting in self._reads.values() for _, future in waiting]
        self._reads.clear()

        return futures

    def is_empty(self):
        """Return whether no reader has a window or a read left."""
        return not self._windows and not self._reads

    def reader_count(self):
        """Return the number of readers with a window or a read."""
        readers = set(self._windows)
        for waiting in self._reads.values():
            readers.update(reader for reader, _ in waiting)

        return len(readers)

    def state(self, piece):
        """Return ``(deadline_ms, read)`` for ``piece``, or None when no reader wants it.

        The deadline is the earliest that any reader requested, or None for
        a read outside every window: such a piece is read once it has
        arrived in the download's own order, without a deadline. ``read``
        is whether any reader waits for the piece's bytes.
        """
        deadlines = [window[piece] for window in self._windows.values() if piece in window]
        read = piece in self._reads
        if not deadlines and not read:
            return None

        return min(deadlines, default=None), read

    def changes(self):
        """Return ``[(piece, state)]`` to apply, in piece order.

        A state of None resets the piece's deadline. A piece is listed
        when its state differs from the one last returned, or when a read
        was added for it.
        """
        changed = []
        for piece in sorted(self._touched | self._forced):
            state = self.state(piece)
            if piece not in self._forced and self._applied.get(piece) == state:
                continue

            changed.append((piece, state))
            if state is None:
                self._applied.pop(piece, None)
            else:
                self._applied[piece] = state

        self._touched.clear()
        self._forced.clear()

        return changed
