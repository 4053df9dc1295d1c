"""The request loop between gunicorn workers and the seeder, over real Unix sockets and pipes."""

import os
import socket
import threading
from multiprocessing import Pipe
from multiprocessing.connection import Listener

import pytest

from registry_p2p.errors import P2PError
from registry_p2p.sidecar import ipc


class FakeSeeder:
    """A seeder stand-in: listens on the cache directory's socket and serves each connection in a thread."""

    def __init__(self, cache_dir, handlers):
        self.cache_dir = str(cache_dir)
        self.handlers = handlers
        self.accepted = 0
        self.connections = []
        path = ipc.socket_path(self.cache_dir)
        if os.path.exists(path):
            os.unlink(path)
        self.listener = Listener(path, family="AF_UNIX", authkey=ipc.create_key(self.cache_dir))
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                conn = self.listener.accept()
            except OSError:
                return
            self.accepted += 1
            self.connections.append(conn)
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn):
        with conn:
            ipc.serve_requests(conn, self.handlers)

    def exit(self):
        """Close the listener and end every connection, as the seeder's exit does."""
        self.listener.close()
        for conn in self.connections:
            # A shutdown, unlike close(), is safe while the serving thread
            # reads. Connections that the client closed are closed already.
            try:
                with socket.socket(fileno=os.dup(conn.fileno())) as sock:
                    sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                continue


HANDLERS = {"ping": lambda: "pong", "add": lambda a, b: a + b}


def test_serve_requests_answers_until_end_of_file():
    client, server = Pipe()
    thread = threading.Thread(target=ipc.serve_requests, args=(server, HANDLERS))
    thread.start()

    client.send({"op": "ping"})
    first = client.recv()
    client.send({"op": "add", "a": 2, "b": 3})
    second = client.recv()
    client.close()
    thread.join(timeout=5)

    assert first == {"result": "pong"}
    assert second == {"result": 5}
    assert not thread.is_alive()


def test_serve_requests_keeps_connection_after_error():
    client, server = Pipe()
    thread = threading.Thread(target=ipc.serve_requests, args=(server, HANDLERS), daemon=True)
    thread.start()

    client.send({"op": "unknown"})
    failed = client.recv()
    client.send({"op": "ping"})
    answered = client.recv()
    client.close()

    assert failed["error"].startswith("KeyError")
    assert answered == {"result": "pong"}


def test_client_reuses_one_connection(tmp_path):
    seeder = FakeSeeder(tmp_path, HANDLERS)
    client = ipc.SeederClient(tmp_path)

    replies = [client.call("add", a=1, b=number) for number in range(5)]

    assert replies == [1, 2, 3, 4, 5]
    assert seeder.accepted == 1
    seeder.exit()


def test_client_connection_per_thread(tmp_path):
    seeder = FakeSeeder(tmp_path, HANDLERS)
    client = ipc.SeederClient(tmp_path)
    threads = [threading.Thread(target=lambda: [client.call("ping") for _ in range(3)])
               for _ in range(4)]

    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=5)

    assert seeder.accepted == 4
    seeder.exit()


def test_client_reconnects_to_new_seeder(tmp_path):
    old = FakeSeeder(tmp_path, HANDLERS)
    client = ipc.SeederClient(tmp_path)
    assert client.call("ping") == "pong"

    old.exit()
    new = FakeSeeder(tmp_path, {"ping": lambda: "pong from the new seeder"})

    assert client.call("ping") == "pong from the new seeder"
    assert new.accepted == 1
    new.exit()


def test_client_without_seeder_raises(tmp_path):
    seeder = FakeSeeder(tmp_path, HANDLERS)
    client = ipc.SeederClient(tmp_path)
    client.call("ping")
    seeder.exit()

    with pytest.raises(P2PError, match="unreachable"):
        client.call("ping")


def test_client_reports_handler_error(tmp_path):
    seeder = FakeSeeder(tmp_path, HANDLERS)
    client = ipc.SeederClient(tmp_path)

    with pytest.raises(P2PError, match="seeder request 'add' failed: TypeError"):
        client.call("add", a=1)
    assert client.call("ping") == "pong"
    assert seeder.accepted == 1
    seeder.exit()


def test_close_drops_thread_connection(tmp_path):
    seeder = FakeSeeder(tmp_path, HANDLERS)
    client = ipc.SeederClient(tmp_path)
    client.call("ping")

    client.close()
    client.call("ping")

    assert seeder.accepted == 2
    seeder.exit()


def test_client_times_out_on_hung_seeder(tmp_path):
    release = threading.Event()
    seeder = FakeSeeder(tmp_path, {**HANDLERS, "hang": lambda: release.wait(10) and "late"})
    client = ipc.SeederClient(tmp_path)

    with pytest.raises(P2PError, match="did not reply to 'hang' within 0.2 s"):
        client.call("hang", reply_timeout=0.2)
    release.set()

    # The late reply went with the closed connection, not to the next request.
    assert client.call("add", a=2, b=3) == 5
    seeder.exit()
