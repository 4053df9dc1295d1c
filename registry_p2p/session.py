"""The libtorrent boundary: the only module that imports libtorrent.

One ``TorrentSession`` per process owns one ``libtorrent.session``. A single
owner thread creates the session, runs every call on it and handles its
alerts. Other threads submit work with ``submit`` and get a Future back.
Alerts are dispatched through a table keyed by alert type.

Runs on libtorrent 2.0.8 (Debian bookworm) and 2.1.x (PyPI).
"""

import concurrent.futures
import errno
import logging
import os
import queue
import select
import threading
import time
from dataclasses import dataclass, field

import libtorrent as lt

from registry_p2p import __version__
from registry_p2p.errors import ConfigError, P2PError
from registry_p2p.piece_deadlines import PieceDeadlines

log = logging.getLogger(__name__)

MIN_LIBTORRENT = (2, 0, 8)
LIBTORRENT_VERSION = tuple(int(part) for part in lt.__version__.split(".")[:3])
if LIBTORRENT_VERSION < MIN_LIBTORRENT:
    raise ImportError(f"libtorrent {lt.__version__} is too old; registry-p2p needs 2.0.8 or newer")

# libtorrent disk threads of an agent (aio_threads; libtorrent's default is 10).
AGENT_DISK_THREADS = 4
# How often the owner thread refreshes download progress and byte counters.
POLL_INTERVAL = 0.5
# The libtorrent session metrics (lt.session_stats_metrics()) that the
# owner thread keeps: payload and wire bytes, connected peers, torrents by
# state, piece hash results and disk jobs. registry_p2p.metrics exports them.
SESSION_STATS = (
    "net.sent_payload_bytes", "net.recv_payload_bytes", "net.sent_bytes", "net.recv_bytes",
    "net.recv_failed_bytes", "net.recv_redundant_bytes",
    "peer.num_peers_connected", "peer.num_peers_half_open", "peer.connect_timeouts",
    "peer.error_peers",
    "ses.num_seeding_torrents", "ses.num_downloading_torrents", "ses.num_checking_torrents",
    "ses.num_piece_passed", "ses.num_piece_failed",
    "disk.queued_disk_jobs",
)


@dataclass
class Download:
    """Progress of one torrent being downloaded, updated by the owner thread."""

    info_hash: str
    length: int
    total_done: int = 0
    last_progress: float = field(default_factory=time.monotonic)
    finished: threading.Event = field(default_factory=threading.Event)
    error: str = ""
    # True when a write failed because the file system is full (ENOSPC, EDQUOT).
    disk_full: bool = False
    piece_length: int = 0
    # Verified block bytes received per peer id prefix (the client's
    # fingerprint), which separates bytes from sidecars' seeders from bytes
    # from other agents.
    bytes_by_client: dict = field(default_factory=dict)


BLOCK_SIZE = 16 * 1024
# Error numbers of a torrent_error_alert or file_error_alert that mean the
# file system is full. Both libtorrent 2.0.8 and 2.1.1 report a write to a
# full tmpfs as a file_error_alert with ENOSPC.
DISK_FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT)


def block_size(length, piece_length, piece_index, block_index):
    """Return the size of one 16 KiB request block; the torrent's last block may be shorter."""
    piece_start = piece_index * piece_length
    this_piece = min(piece_length, length - piece_start)

    return min(BLOCK_SIZE, this_piece - block_index * BLOCK_SIZE)


def peer_fingerprint(role):
    """Return the 8-byte peer id prefix (Azureus style) of a registry-p2p process.

    ``role`` is one letter: "S" for a sidecar's seeder, "A" for an agent.
    """
    major, minor, patch = (__version__.split(".") + ["0", "0"])[:3]

    return f"-R{role}{major}{minor}{patch}0-"[:8]


def check_settings(settings):
    """Raise ConfigError unless every [torrent.settings] entry is a libtorrent setting of its type.

    The session would otherwise stop at start with libtorrent's own error,
    which does not always name the setting.
    """
    defaults = lt.default_settings()
    for name, value in settings.items():
        key = f"torrent.settings.{name}"
        if name not in defaults:
            raise ConfigError(f"{key}: libtorrent {lt.__version__} has no setting {name!r}; "
                              f"see libtorrent's settings_pack reference for the names")

        expected = type(defaults[name])
        if type(value) is not expected:
            kind = {bool: "true or false", int: "an integer", str: "a string"}[expected]
            raise ConfigError(f"{key}: expected {kind}, not {value!r}")


def _peer(alert):
    """Return the address of a peer alert's peer as host:port."""
    host, port = alert.endpoint
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _pipe():
    read_end, write_end = os.pipe()
    os.set_blocking(read_end, False)
    os.set_blocking(write_end, False)
    return read_end, write_end


def _drain(fd):
    try:
        while os.read(fd, 4096):
            pass
    except BlockingIOError:
        pass


def _fail(future, exc):
    """Set ``exc`` on a Future unless it is already resolved or cancelled."""
    if not future.done():
        future.set_exception(exc)


def _limit_every_peer(session):
    """Put every peer in the global peer class, whose rate limits are the session's.

    By default libtorrent exempts peers on loopback and local networks from
    rate limits, and those are exactly the peers of a registry host.
    """
    everyone = 1 << lt.session.global_peer_class_id
    peer_filter = lt.ip_filter()
    peer_filter.add_rule("0.0.0.0", "255.255.255.255", everyone)
    peer_filter.add_rule("::", "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", everyone)
    session.set_peer_class_filter(peer_filter)


class TorrentSession:
    """A libtorrent session driven by one owner thread."""

    def __init__(self, listen_host, listen_port, role, upload_rate_limit=0, overrides=None):
        """``role`` is "S" (sidecar seeder) or "A" (agent); ``upload_rate_limit`` is in bytes/s.

        ``overrides`` maps libtorrent setting names to values that replace
        the ones of _settings() (the config's [torrent.settings]).
        """
        self.listen_host = listen_host
        self.overrides = dict(overrides or {})
        self.requested_port = listen_port
        self.role = role
        self.fingerprint = peer_fingerprint(role)
        self.upload_rate_limit = upload_rate_limit

        self._commands = queue.Queue()
        self._wakeup_read, self._wakeup_write = _pipe()
        self._downloads = {}
        self._pending_removals = {}
        # Per hex infohash: the piece deadlines and reads of its streaming
        # readers (owner thread only).
        self._piece_deadlines = {}
        self._stream_readers = 0
        self._counters = dict.fromkeys(SESSION_STATS, 0)
        self._metric_index = {}
        self._stopping = threading.Event()
        self._ready = threading.Event()
        self._start_error = None
        self._thread = threading.Thread(target=self._run, name="libtorrent-owner", daemon=True)

        self._alert_handlers = {
            lt.torrent_finished_alert: self._on_torrent_finished,
            lt.cache_flushed_alert: self._on_cache_flushed,
            lt.torrent_error_alert: self._on_torrent_error,
            lt.file_error_alert: self._on_torrent_error,
            lt.torrent_removed_alert: self._on_torrent_removed,
            lt.torrent_deleted_alert: self._on_torrent_deleted,
            lt.torrent_delete_failed_alert: self._on_torrent_delete_failed,
            lt.hash_failed_alert: self._on_hash_failed,
            lt.peer_ban_alert: self._on_peer_ban,
            lt.peer_error_alert: self._on_peer_error,
            lt.tracker_error_alert: self._on_tracker_error,
            lt.listen_failed_alert: self._on_listen_failed,
            lt.listen_succeeded_alert: self._on_listen_succeeded,
            lt.session_stats_alert: self._on_session_stats,
            lt.block_finished_alert: self._on_block_finished,
            lt.alerts_dropped_alert: self._on_alerts_dropped,
            lt.read_piece_alert: self._on_read_piece,
            lt.piece_finished_alert: self._on_piece_finished,
        }

    # Lifecycle

    def start(self, timeout=10.0):
        self._thread.start()
        if not self._ready.wait(timeout):
            raise P2PError("libtorrent session did not start in time")
        if self._start_error is not None:
            raise self._start_error

    def stop(self):
        """Pause the session, stop the owner thread and release the listen port."""
        self._stopping.set()
        self._thread.join(timeout=15)

    def submit(self, function):
        """Run ``function(session)`` on the owner thread; return a Future of its result."""
        future = concurrent.futures.Future()
        if self._stopping.is_set():
            future.set_exception(P2PError("libtorrent session is stopped"))
            return future

        self._commands.put((function, future))
        try:
            os.write(self._wakeup_write, b"\0")
        except BlockingIOError:
            pass  # The pipe is full, so the owner thread is awake anyway.

        return future

    def _run(self):
        try:
            session = lt.session({**self._settings(), **self.overrides})
            if self.upload_rate_limit:
                _limit_every_peer(session)
            self._metric_index = {metric.name: metric.value_index
                                  for metric in lt.session_stats_metrics()}
        except Exception as exc:
            log.exception("cannot start libtorrent session on %s:%d",
                          self.listen_host, self.requested_port)
            self._start_error = P2PError(f"cannot start libtorrent session: {exc}")
            self._ready.set()
            return

        # wait_for_alert() is not used: its binding converts a pointer into
        # the alert queue while libtorrent's threads may grow that queue,
        # which crashed 2.0.8. libtorrent writes to the alert pipe when
        # alerts arrive instead, and submit() writes to the wakeup pipe.
        alert_read, alert_write = _pipe()
        session.set_alert_fd(alert_write)
        self._ready.set()
        last_poll = 0.0
        while not self._stopping.is_set():
            ready, _, _ = select.select([alert_read, self._wakeup_read], [], [], POLL_INTERVAL)
            for fd in ready:
                _drain(fd)

            self._run_commands(session)
            for alert in session.pop_alerts():
                handler = self._alert_handlers.get(type(alert))
                if handler is None:
                    continue
                # A failing handler loses one alert, not the thread that owns the session.
                try:
                    handler(alert)
                except Exception:
                    log.exception("handling libtorrent %s failed: %s", type(alert).__name__,
                                  alert.message())

            if time.monotonic() - last_poll >= POLL_INTERVAL:
                self._poll(session)
                session.post_session_stats()
                last_poll = time.monotonic()

        self._shutdown(session)
        for fd in (alert_read, alert_write):
            os.close(fd)

    def _run_commands(self, session):
        while True:
            try:
                function, future = self._commands.get_nowait()
            except queue.Empty:
                return

            if not future.set_running_or_notify_cancel():
                continue
            try:
                future.set_result(function(session))
            except Exception as exc:
                future.set_exception(exc)

    def _shutdown(self, session):
        # Pausing first lets the "stopped" announces go out under
        # stop_tracker_timeout instead of blocking the session's destructor.
        session.pause()
        for download in self._downloads.values():
            download.error = "session stopped"
            download.finished.set()
        for info_hash in list(self._piece_deadlines):
            self._fail_reads(info_hash, "session stopped")
        while True:
            try:
                _, future = self._commands.get_nowait()
            except queue.Empty:
                break
            future.set_exception(P2PError("libtorrent session stopped"))
        del session
        log.info("libtorrent session stopped")

    def _settings(self):
        host = f"[{self.listen_host}]" if ":" in self.listen_host else self.listen_host

        return {
            "listen_interfaces": f"{host}:{self.requested_port}",
            "peer_fingerprint": self.fingerprint,
            "user_agent": f"registry-p2p/{__version__}",
            # uTP reaches a few MB/s on a LAN; TCP reaches line rate.
            "enable_outgoing_utp": False,
            "enable_incoming_utp": False,
            # Peers come from the sidecars' trackers only.
            "enable_dht": False,
            "enable_lsd": False,
            "enable_upnp": False,
            "enable_natpmp": False,
            # Every agent of a test machine, or behind one NAT, shares an IP.
            "allow_multiple_connections_per_ip": True,
            "announce_to_all_trackers": True,
            "announce_to_all_tiers": True,
            "stop_tracker_timeout": 1,
            # Peers are on a LAN, so a block request unanswered for 10 s goes
            # to another peer. The defaults wait 60 s (request) and 20 s
            # (piece), as long as an agent waits before its fallback.
            "request_timeout": 10,
            "piece_timeout": 10,
            "strict_end_game_mode": False,
            # The default send buffer caps one peer connection far below
            # LAN speed.
            "send_buffer_watermark": 8 * 1024 * 1024,
            "send_buffer_low_watermark": 1024 * 1024,
            "send_buffer_watermark_factor": 150,
            # One alert per 16 KiB block received: a 1 GiB blob is 65536
            # alerts, which the owner thread drains every 100 ms.
            "alert_queue_size": 1 << 18,
            # 0 means unlimited.
            "upload_rate_limit": self.upload_rate_limit,
            # glibc keeps an arena per allocating thread, so each disk thread
            # keeps freed piece buffers. Agents with 4 instead of 10 hold less
            # anonymous memory at the same speed (the fanout-large block of
            # docs/benchmarks.md). The seeder keeps libtorrent's default.
            **({"aio_threads": AGENT_DISK_THREADS} if self.role == "A" else {}),
            # libtorrent otherwise drops a peer that has the whole blob while
            # the last pieces are requested elsewhere, and reconnects only after
            # min_reconnect_time (60 s), so one failed request can stall a download.
            # NOTE: two agents that both have the blob stay connected until
            # libtorrent's inactivity_timeout, within connections_limit.
            **({"close_redundant_connections": False} if self.role == "A" else {}),
            "alert_mask": (lt.alert.category_t.error_notification
                           | lt.alert.category_t.status_notification
                           | lt.alert.category_t.storage_notification
                           | lt.alert.category_t.tracker_notification
                           | lt.alert.category_t.stats_notification
                           | lt.alert.category_t.block_progress_notification
                           | lt.alert.category_t.piece_progress_notification
                           | lt.alert.category_t.peer_notification),
        }

    # Work submitted by other threads

    def add_seed(self, metainfo, save_path, super_seeding=False):
        """Seed a verified blob; return a Future of its hex infohash.

        ``metainfo`` is the .torrent bytes; the file ``save_path/<name>``
        must already hold the verified blob. libtorrent still checks each
        piece's hash the first time it sends that piece (seed mode). With
        ``super_seeding``, the seed offers each peer pieces that no other
        peer has yet (BEP 16), so each piece tends to leave it once.
        """
        def add(session):
            params = self._params(metainfo, save_path)
            params.flags |= lt.torrent_flags.seed_mode
            if super_seeding:
                params.flags |= lt.torrent_flags.super_seeding
            handle = session.add_torrent(params)
            return str(handle.info_hash())

        return self.submit(add)

    def add_download(self, metainfo, save_path, length, first_piece_first=False):
        """Start downloading a torrent into ``save_path``; return a Future of a Download.

        With ``first_piece_first``, the first piece gets a deadline before
        any request goes out, so that a client streaming the blob does not
        wait for pieces that were requested before it.
        """
        def add(session):
            params = self._params(metainfo, save_path)
            handle = session.add_torrent(params)
            if first_piece_first:
                handle.set_piece_deadline(0, 0)
            info_hash = str(handle.info_hash())
            download = Download(info_hash=info_hash, length=length,
                                piece_length=params.ti.piece_length())
            self._downloads[info_hash] = download
            if handle.status().is_seeding:
                download.total_done = length
                download.finished.set()
            return download

        return self.submit(add)

    def remove(self, info_hash, delete_files=False):
        """Remove a torrent; the Future resolves once libtorrent has released it.

        With ``delete_files``, it resolves only after the file is deleted (or
        deleting it failed), so a new download of the same blob cannot have
        its file removed by a late deletion.
        """
        done = concurrent.futures.Future()

        def remove(session):
            handle = session.find_torrent(lt.sha1_hash(bytes.fromhex(info_hash)))
            if not handle.is_valid():
                done.set_result(False)
                return
            self._downloads.pop(info_hash, None)
            self._fail_reads(info_hash, "removed")
            self._pending_removals[info_hash] = (done, delete_files)
            flags = lt.session.delete_files if delete_files else 0
            session.remove_torrent(handle, flags)

        self._chain(self.submit(remove), done)

        return done

    def read_pieces(self, info_hash, reader, first, end, reads):
        """Give ``reader``'s window of pieces deadlines and request the bytes of ``reads``.

        Pieces ``first`` to ``end - 1`` get deadlines in index order, so
        libtorrent requests them before other pieces. Each piece in
        ``reads`` is read through libtorrent's storage once it has passed
        its hash check, at once if it already has. The file itself may not
        hold such a piece yet, because libtorrent 2.0 can keep written
        blocks in its store buffer. ``reader`` is any hashable token; other
        readers' deadlines and reads stay as they are.

        Returns ``{piece: Future}`` for the pieces in ``reads``. Each
        Future receives the piece's bytes, or P2PError when the read fails
        or the torrent is removed.
        """
        futures = {piece: concurrent.futures.Future() for piece in reads}

        def request(session):
            handle = self._handle(session, info_hash)
            table = self._piece_deadlines.setdefault(info_hash, PieceDeadlines())
            table.set_window(reader, first, end)
            for piece, future in futures.items():
                table.add_read(reader, piece, future)
            self._apply_deadlines(handle, table)
            self._count_stream_readers()

        def fail_reads(submitted):
            exc = submitted.exception()
            if exc is None:
                return
            if not isinstance(exc, P2PError):
                log.error("setting piece deadlines on torrent %s failed: %r", info_hash, exc)
                exc = P2PError(f"setting piece deadlines failed: {type(exc).__name__}: {exc}",
                               reason="piece_read")
            for future in futures.values():
                _fail(future, exc)

        self.submit(request).add_done_callback(fail_reads)

        return futures

    def release_reader(self, info_hash, reader):
        """Drop the deadlines and pending reads of ``reader``, and return a Future of None.

        The last reader of a torrent clears all of its piece deadlines, so
        libtorrent returns to its usual piece order.
        """
        def release(session):
            table = self._piece_deadlines.get(info_hash)
            if table is None:
                return
            for future in table.release(reader):
                future.cancel()

            handle = session.find_torrent(lt.sha1_hash(bytes.fromhex(info_hash)))
            if table.is_empty():
                del self._piece_deadlines[info_hash]
                if handle.is_valid():
                    handle.clear_piece_deadlines()
            elif handle.is_valid():
                self._apply_deadlines(handle, table)
            self._count_stream_readers()

        return self.submit(release)

    def reannounce(self, info_hash):
        """Announce a torrent to its trackers now, ignoring the announce interval."""
        def announce(session):
            handle = self._handle(session, info_hash)
            handle.force_reannounce(0, -1, lt.reannounce_flags_t.ignore_min_interval)

        return self.submit(announce)

    def stall_report(self, info_hash):
        """Return a Future of a one-line description of what a download still waits for.

        It names up to 8 missing pieces and counts the blocks of each piece
        in progress by state. For each connected peer, it gives the choke
        and interest flags and how many of the missing pieces the peer has.
        """
        def report(session):
            handle = self._handle(session, info_hash)
            return describe_stall(handle.status(lt.status_flags_t.query_pieces).pieces,
                                  handle.get_download_queue(), handle.get_peer_info())

        return self.submit(report)

    def torrents(self):
        """Return a Future of {hex infohash: torrent name} of every torrent in the session.

        A blob's torrent is named after the hex part of its digest.
        """
        def list_torrents(session):
            return {str(handle.info_hash()): handle.status().name
                    for handle in session.get_torrents()}

        return self.submit(list_torrents)

    def listen_port(self):
        """Return a Future of the TCP port that the session accepts peers on."""
        return self.submit(lambda session: session.listen_port())

    def stream_readers(self):
        """Return the number of readers that have piece deadlines or reads, across all torrents."""
        return self._stream_readers

    def counters(self):
        """Return the payload bytes sent and received, the connected peers and the torrents by state."""
        return {
            "uploaded_bytes": self._counters["net.sent_payload_bytes"],
            "downloaded_bytes": self._counters["net.recv_payload_bytes"],
            "peers_connected": self._counters["peer.num_peers_connected"],
            "seeding_torrents": self._counters["ses.num_seeding_torrents"],
            "downloading_torrents": self._counters["ses.num_downloading_torrents"],
        }

    def session_stats(self):
        """Return the latest values of the SESSION_STATS metrics, by libtorrent name (a copy)."""
        return dict(self._counters)

    # Owner-thread helpers

    def _params(self, metainfo, save_path):
        params = lt.add_torrent_params()
        params.ti = lt.torrent_info(lt.bdecode(metainfo))
        params.save_path = str(save_path)
        # A torrent that is not auto-managed must also be unpaused, or it
        # never starts.
        params.flags &= ~lt.torrent_flags.auto_managed
        params.flags &= ~lt.torrent_flags.paused
        return params

    def _handle(self, session, info_hash):
        handle = session.find_torrent(lt.sha1_hash(bytes.fromhex(info_hash)))
        if not handle.is_valid():
            raise P2PError(f"no torrent {info_hash} in the session")
        return handle

    def _apply_deadlines(self, handle, table):
        for piece, state in table.changes():
            if state is None:
                handle.reset_piece_deadline(piece)
                continue

            deadline_ms, read = state
            if deadline_ms is None:
                # A read outside every window: no deadline, because while
                # any piece has one libtorrent keeps at most one other
                # request per peer. The piece is read once it has passed
                # its hash check (_on_piece_finished).
                handle.reset_piece_deadline(piece)
                if handle.have_piece(piece):
                    handle.read_piece(piece)
            elif read:
                handle.set_piece_deadline(piece, deadline_ms,
                                          lt.deadline_flags_t.alert_when_available)
            else:
                handle.set_piece_deadline(piece, deadline_ms)

    def _fail_reads(self, info_hash, reason):
        table = self._piece_deadlines.pop(info_hash, None)
        if table is None:
            return

        error = P2PError(f"torrent {info_hash} {reason} before its pieces were read",
                         reason="piece_read")
        for future in table.take_all_reads():
            _fail(future, error)
        self._count_stream_readers()

    def _count_stream_readers(self):
        self._stream_readers = sum(table.reader_count()
                                   for table in self._piece_deadlines.values())

    @staticmethod
    def _chain(submitted, done):
        def forward(future):
            exc = future.exception()
            if exc is not None and not done.done():
                done.set_exception(exc)

        submitted.add_done_callback(forward)

    def _poll(self, session):
        for info_hash, download in list(self._downloads.items()):
            if download.finished.is_set():
                continue
            handle = session.find_torrent(lt.sha1_hash(bytes.fromhex(info_hash)))
            if not handle.is_valid():
                continue
            self._update_download(handle, download)

    def _update_download(self, handle, download):
        status = handle.status()
        if status.total_wanted_done > download.total_done:
            download.total_done = status.total_wanted_done
            download.last_progress = time.monotonic()


    # Alert handlers (owner thread)

    def _on_torrent_finished(self, alert):
        download = self._downloads.get(str(alert.handle.info_hash()))
        if download is None:
            return

        # Every piece has passed its hash check, but libtorrent 2.0 may
        # still hold some in its store buffer: the file is complete only
        # once the flush is reported.
        download.total_done = download.length
        alert.handle.flush_cache()

    def _on_cache_flushed(self, alert):
        download = self._downloads.get(str(alert.handle.info_hash()))
        if download is not None and download.total_done == download.length:
            download.finished.set()

    # NOTE: libtorrent 2.1.1 sometimes posts fewer block_finished alerts than
    # blocks received (seen in about one run of three), so per-peer counts
    # on 2.1 can be low; 2.0.8 posted every one in the tests.
    def _on_block_finished(self, alert):
        download = self._downloads.get(str(alert.handle.info_hash()))
        if download is None:
            return

        client = alert.pid.to_bytes()[:8].decode("latin-1")
        size = block_size(download.length, download.piece_length,
                          alert.piece_index, alert.block_index)
        download.bytes_by_client[client] = download.bytes_by_client.get(client, 0) + size

    def _on_piece_finished(self, alert):
        """Read a piece that passed its hash check if a reader waits for it without a deadline."""
        table = self._piece_deadlines.get(str(alert.handle.info_hash()))
        if table is None:
            return

        state = table.state(alert.piece_index)
        if state is not None and state[0] is None and state[1]:
            alert.handle.read_piece(alert.piece_index)

    def _on_read_piece(self, alert):
        info_hash = str(alert.handle.info_hash())
        table = self._piece_deadlines.get(info_hash)
        if table is None:
            return
        waiting = table.take_reads(alert.piece)
        if not waiting:
            return

        if alert.error.value() != 0:
            log.warning("reading piece %d of torrent %s failed: %s",
                        alert.piece, info_hash, alert.error.message())
            error = P2PError(f"reading piece {alert.piece} of torrent {info_hash} failed: "
                             f"{alert.error.message()}", reason="piece_read")
            for future in waiting:
                _fail(future, error)
            return

        data = alert.buffer
        for future in waiting:
            if not future.done():
                future.set_result(data)

    def _on_alerts_dropped(self, alert):
        log.warning("libtorrent dropped alerts (queue full); per-peer byte counts are low, "
                    "and a streamed blob whose piece read was dropped waits for the whole "
                    "download")

    def _on_torrent_error(self, alert):
        info_hash = str(alert.handle.info_hash())
        download = self._downloads.get(info_hash)
        if download is not None and download.error:
            # libtorrent posts one alert per failed write; the first one is logged.
            log.debug("torrent %s failed again: %s", info_hash, alert.message())
            return

        log.error("torrent %s failed: %s", info_hash, alert.message())
        if download is not None:
            download.error = alert.message()
            download.disk_full = alert.error.value() in DISK_FULL_ERRNOS
            download.finished.set()

    def _on_torrent_removed(self, alert):
        pending = self._pending_removals.get(str(alert.info_hash))
        if pending is not None and not pending[1]:
            del self._pending_removals[str(alert.info_hash)]
            pending[0].set_result(True)

    def _on_torrent_deleted(self, alert):
        pending = self._pending_removals.pop(str(alert.info_hash), None)
        if pending is not None:
            pending[0].set_result(True)

    def _on_torrent_delete_failed(self, alert):
        log.error("deleting the file of torrent %s failed: %s", alert.info_hash, alert.message())
        self._on_torrent_deleted(alert)

    def _on_hash_failed(self, alert):
        log.warning("piece %d of torrent %s failed its hash check; its peers sent bad data",
                    alert.piece_index, alert.handle.info_hash())

    def _on_peer_ban(self, alert):
        log.warning("banned peer %s of torrent %s: it sent corrupt pieces", _peer(alert),
                    alert.handle.info_hash())

    def _on_peer_error(self, alert):
        log.debug("connection to peer %s of torrent %s failed: %s", _peer(alert),
                  alert.handle.info_hash(), alert.message())

    def _on_tracker_error(self, alert):
        log.warning("tracker %s for torrent %s: %s",
                    alert.tracker_url(), alert.handle.info_hash(), alert.message())

    def _on_listen_failed(self, alert):
        log.error("libtorrent cannot listen: %s", alert.message())

    def _on_listen_succeeded(self, alert):
        log.info("libtorrent listening on %s:%d", alert.address, alert.port)

    def _on_session_stats(self, alert):
        values = alert.values
        for name in self._counters:
            index = self._metric_index.get(name)
            if index is not None:
                self._counters[name] = values[name] if isinstance(values, dict) else values[index]


BLOCK_STATES = {0: "none", 1: "requested", 2: "writing", 3: "finished"}


def describe_stall(have, download_queue, peers):
    """Describe a download from its piece bitfield, download queue and peer list (see stall_report)."""
    missing = [index for index, done in enumerate(have) if not done]
    parts = [f"{len(missing)} of {len(have)} pieces missing"
             + (f" ({', '.join(map(str, missing[:8]))}{', ...' if len(missing) > 8 else ''})"
                if missing else "")]

    for piece in download_queue:
        states = {}
        for block in piece["blocks"]:
            name = BLOCK_STATES.get(block["state"], str(block["state"]))
            states[name] = states.get(name, 0) + 1
        parts.append(f"piece {piece['piece_index']} blocks "
                     + " ".join(f"{name}={count}" for name, count in sorted(states.items())))

    missing_set = set(missing)
    for peer in peers:
        flags = [name for name, bit in (("choked-us", lt.peer_info.remote_choked),
                                        ("interested", lt.peer_info.interesting),
                                        ("snubbed", lt.peer_info.snubbed))
                 if peer.flags & bit]
        has = sum(1 for index in missing_set if index < len(peer.pieces) and peer.pieces[index])
        parts.append(f"peer {peer.ip[0]}:{peer.ip[1]} has {has} missing, "
                     f"queue {peer.download_queue_length}, {','.join(flags) or 'unchoked'}")

    return "; ".join(parts)
