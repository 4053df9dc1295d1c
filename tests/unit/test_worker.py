"""Detection of TLS handshakes on the plain HTTP port."""

import socket

from registry_p2p import worker


def test_client_hello_detected():
    server, client = socket.socketpair()
    with server, client:
        client.sendall(bytes([0x16, 0x03, 0x01, 0x02, 0x00]))

        assert worker._starts_tls_handshake(server)
        assert server.recv(5, socket.MSG_PEEK) == bytes([0x16, 0x03, 0x01, 0x02, 0x00])


def test_http_request_not_tls():
    server, client = socket.socketpair()
    with server, client:
        client.sendall(b"GET /v2/ HTTP/1.1\r\n")

        assert not worker._starts_tls_handshake(server)


def test_closed_connection_not_tls():
    server, client = socket.socketpair()
    with server:
        client.close()

        assert not worker._starts_tls_handshake(server)


def test_close_input_reaches_end_of_file():
    server, client = socket.socketpair()
    with server, client:
        client.sendall(bytes([0x16, 0x03, 0x01]) + b"x" * 10000)

        worker._close_input(server)

        assert server.recv(100) == b""
        assert client.recv(100) == b""
