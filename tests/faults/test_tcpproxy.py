"""The proxy the fault tests rely on: it forwards, refuses, and drops when told to."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator

import pytest

from tests.tcpproxy import TcpProxy, simple_query

pytestmark = pytest.mark.faults


class EchoServer:
    """Echoes every byte back; remembers what it received."""

    def __init__(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.received = bytearray()
        self._threads: list[threading.Thread] = []
        self._conns: list[socket.socket] = []
        self._acceptor = threading.Thread(target=self._accept, daemon=True)
        self._acceptor.start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            self._conns.append(conn)
            thread = threading.Thread(target=self._echo, args=(conn,), daemon=True)
            self._threads.append(thread)
            thread.start()

    def _echo(self, conn: socket.socket) -> None:
        try:
            while data := conn.recv(4096):
                self.received += data
                conn.sendall(data)
        except OSError:
            pass

    def close(self) -> None:
        self.listener.shutdown(socket.SHUT_RDWR)
        self.listener.close()
        self._acceptor.join(timeout=5)
        for conn in self._conns:
            conn.close()
        for thread in self._threads:
            thread.join(timeout=5)


@pytest.fixture
def echo() -> Iterator[EchoServer]:
    server = EchoServer()
    yield server
    server.close()


def connect(port: int) -> socket.socket:
    client = socket.create_connection(("127.0.0.1", port), timeout=5)
    return client


def test_it_forwards_both_ways(echo: EchoServer) -> None:
    with TcpProxy(echo.port) as proxy, connect(proxy.port) as client:
        client.sendall(b"hello")
        assert client.recv(5) == b"hello"
        assert proxy.open_connections == 1


def test_it_refuses_then_accepts_on_the_same_port(echo: EchoServer) -> None:
    with TcpProxy(echo.port) as proxy:
        port = proxy.port
        proxy.refuse()
        with pytest.raises(ConnectionRefusedError):
            connect(port)
        proxy.accept()
        assert proxy.port == port
        with connect(port) as client:
            client.sendall(b"x")
            assert client.recv(1) == b"x"


def test_drop_all_closes_open_connections(echo: EchoServer) -> None:
    with TcpProxy(echo.port) as proxy, connect(proxy.port) as client:
        client.sendall(b"a")
        assert client.recv(1) == b"a"
        assert proxy.drop_all() == 1
        assert client.recv(1) == b""


def test_drop_when_keeps_the_pattern_from_the_server(echo: EchoServer) -> None:
    message = simple_query(b"COMMIT")
    assert message == b"Q\x00\x00\x00\x0bCOMMIT\x00"
    with TcpProxy(echo.port) as proxy, connect(proxy.port) as client:
        fired = proxy.drop_when(b"COMMIT")
        client.sendall(b"before")
        assert client.recv(6) == b"before"
        client.sendall(message)
        assert client.recv(1) == b""
        assert fired.is_set()
    assert bytes(echo.received) == b"before"


def test_drop_when_forwarding_swallows_the_reply(echo: EchoServer) -> None:
    with TcpProxy(echo.port) as proxy, connect(proxy.port) as client:
        fired = proxy.drop_when(b"COMMIT", forward=True, delay=0.2)
        client.sendall(b"COMMIT")
        assert client.recv(16) == b""  # the echo never came back
        assert fired.is_set()
    assert bytes(echo.received) == b"COMMIT"
