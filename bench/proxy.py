"""A TCP proxy that forwards every chunk it reads `delay` seconds late, in both directions: the
network between a primary and a standby in another zone, in the benchmark's own process."""

from __future__ import annotations

import contextlib
import queue
import socket
import threading
import time

_END = b""  # queued after a side's last chunk: half-close the other side once it is sent


class DelayProxy:
    """Listens on 127.0.0.1:`port` and connects each client to `upstream`. Each direction of
    each connection has a reader thread, which stamps every chunk with its due time (arrival +
    delay) and queues it, and a writer thread, which sends it no earlier than that: latency,
    not a bandwidth limit, and the order of the bytes kept."""

    def __init__(self, upstream: tuple[str, int], delay: float) -> None:
        self.upstream = upstream
        self.delay = delay
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(0.2)  # so that the accept loop sees close()
        self.port: int = self._listener.getsockname()[1]
        self.connections = 0
        self._closed = threading.Event()
        self._lock = threading.Lock()
        self._sockets: set[socket.socket] = set()
        self._thread = threading.Thread(
            target=self._accept, name=f"delay-proxy-{self.port}", daemon=True
        )
        self._thread.start()

    def close(self) -> None:
        """Stop accepting and cut every connection."""
        self._closed.set()
        self._listener.close()
        with self._lock:
            sockets, self._sockets = list(self._sockets), set()
        for sock in sockets:
            _cut(sock)
        self._thread.join(timeout=2)

    def _accept(self) -> None:
        while not self._closed.is_set():
            try:
                client, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            client.settimeout(None)
            try:
                server = socket.create_connection(self.upstream, timeout=10)
            except OSError:
                _cut(client)
                continue
            server.settimeout(None)
            for sock in (client, server):  # each chunk as it comes, not held back by Nagle
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            with self._lock:
                if self._closed.is_set():
                    _cut(client)
                    _cut(server)
                    return
                self._sockets.update((client, server))
                self.connections += 1
            link = _Link(self, client, server)
            self._pipe(client, server, link)
            self._pipe(server, client, link)

    def _pipe(self, source: socket.socket, sink: socket.socket, link: _Link) -> None:
        chunks: queue.SimpleQueue[tuple[float, bytes]] = queue.SimpleQueue()
        for target, arguments in (
            (self._read, (source, chunks)),
            (self._write, (sink, chunks, link)),
        ):
            threading.Thread(target=target, args=arguments, daemon=True).start()

    def _read(self, source: socket.socket, chunks: queue.SimpleQueue[tuple[float, bytes]]) -> None:
        try:
            while data := source.recv(1 << 16):
                chunks.put((time.monotonic() + self.delay, data))
        except OSError:
            pass
        chunks.put((0.0, _END))

    def _write(
        self, sink: socket.socket, chunks: queue.SimpleQueue[tuple[float, bytes]], link: _Link
    ) -> None:
        clean = True
        try:
            while (chunk := chunks.get())[1] != _END:
                due, data = chunk
                wait = due - time.monotonic()
                if wait > 0:
                    time.sleep(wait)
                sink.sendall(data)
            sink.shutdown(socket.SHUT_WR)
        except OSError:
            clean = False
        link.finished(clean)

    def release(self, *sockets: socket.socket) -> None:
        """Close the sockets of a connection that has ended."""
        with self._lock:
            for sock in sockets:
                self._sockets.discard(sock)
        for sock in sockets:
            _cut(sock)


class _Link:
    """One proxied connection: both sockets are closed when both directions have ended, or as
    soon as one of them fails."""

    def __init__(self, proxy: DelayProxy, client: socket.socket, server: socket.socket) -> None:
        self.proxy, self.client, self.server = proxy, client, server
        self._open = 2
        self._lock = threading.Lock()

    def finished(self, clean: bool) -> None:
        with self._lock:
            self._open -= 1
            last = self._open == 0
        if last or not clean:
            self.proxy.release(self.client, self.server)


def _cut(sock: socket.socket) -> None:
    """Shut down (which wakes a thread blocked in recv on it) and close."""
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)
    sock.close()
