"""Detection of TLS handshakes on the plain HTTP port."""

import socket

from registry_p2p import server


def test_client_hello_detected():
    listener, client = socket.socketpair()
    with listener, client:
        client.sendall(bytes([0x16, 0x03, 0x01, 0x02, 0x00]))

        assert server._starts_with_tls_handshake(listener)
        assert listener.recv(5, socket.MSG_PEEK) == bytes([0x16, 0x03, 0x01, 0x02, 0x00])


def test_http_request_not_tls():
    listener, client = socket.socketpair()
    with listener, client:
        client.sendall(b"GET /v2/ HTTP/1.1\r\n")

        assert not server._starts_with_tls_handshake(listener)


def test_closed_connection_not_tls():
    listener, client = socket.socketpair()
    with listener:
        client.close()

        assert not server._starts_with_tls_handshake(listener)
