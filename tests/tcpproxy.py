"""A small threaded TCP proxy for fault tests: 127.0.0.1:port -> the server's port.

The test that owns it can make the "network" misbehave while a run is in progress:

- `refuse()` / `accept()`: stop listening (clients get "connection refused") and start again
  on the same port;
- `drop_all()`: close every connection that passes through it, now;
- `drop_when(pattern, ...)`: close a connection when `pattern` passes client -> server, either
  before the bytes reach the server, or after they do (with the server's replies swallowed, so
  the client never learns the outcome), optionally after a delay.

PostgreSQL messages worth matching: a simple query is `Q`, an int32 length (itself included),
the text and a NUL; `simple_query(b"COMMIT")` builds exactly the bytes psycopg sends to commit.
Statements of the extended protocol travel in a Parse (`P`) message: match their text.
"""

from __future__ import annotations

import contextlib
import selectors
import socket
import struct
import threading
import time
from dataclasses import dataclass, field

_CHUNK = 65536


def simple_query(sql: bytes) -> bytes:
    """The bytes of a simple-protocol Query message carrying `sql`."""
    return b"Q" + struct.pack("!i", len(sql) + 5) + sql + b"\x00"


@dataclass
class _Trigger:
    pattern: bytes
    forward: bool
    delay: float
    fired: threading.Event = field(default_factory=threading.Event)


class _Pair:
    """One client connection and its connection to the server."""

    def __init__(self, client: socket.socket, server: socket.socket) -> None:
        self.client = client
        self.server = server
        self.muted = False  # server -> client bytes are discarded
        self._lock = threading.Lock()
        self._closed = False

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
        for sock in (self.client, self.server):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()

    @property
    def closed(self) -> bool:
        return self._closed


class TcpProxy:
    """Forward 127.0.0.1:`port` to `target_host`:`target_port`, one thread per direction."""

    def __init__(self, target_port: int, target_host: str = "127.0.0.1", port: int = 0) -> None:
        self.target = (target_host, target_port)
        self.port = port
        self.connections_seen = 0
        self._listener: socket.socket | None = None
        self._acceptor: threading.Thread | None = None
        self._stop_accepting = threading.Event()
        self._pairs: list[_Pair] = []
        self._threads: list[threading.Thread] = []
        self._triggers: list[_Trigger] = []
        self._lock = threading.Lock()

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> TcpProxy:
        self.accept()
        return self

    def close(self) -> None:
        self.refuse()
        self.drop_all()
        with self._lock:
            threads = list(self._threads)
        for thread in threads:
            thread.join(timeout=10)

    def __enter__(self) -> TcpProxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- faults ------------------------------------------------------------------------------

    def refuse(self) -> None:
        """Stop listening: new connections are refused; open ones stay."""
        self._stop_accepting.set()
        if self._acceptor is not None:
            self._acceptor.join(timeout=10)
            self._acceptor = None
        if self._listener is not None:
            self._listener.close()
            self._listener = None

    def accept(self) -> None:
        """Listen (again, on the same port)."""
        if self._listener is not None:
            return
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(128)
        self.port = listener.getsockname()[1]
        self._listener = listener
        self._stop_accepting = threading.Event()
        self._acceptor = threading.Thread(
            target=self._accept_loop, args=(listener, self._stop_accepting), daemon=True
        )
        self._acceptor.start()

    def drop_all(self) -> int:
        """Close every open connection now; return how many there were."""
        with self._lock:
            pairs = [pair for pair in self._pairs if not pair.closed]
        for pair in pairs:
            pair.close()
        return len(pairs)

    def drop_when(
        self, pattern: bytes, *, forward: bool = False, delay: float = 0.0
    ) -> threading.Event:
        """Once: close the connection whose client sends `pattern`.

        forward=False: the bytes carrying the pattern never reach the server.
        forward=True: they do, the server's replies are swallowed from then on, and the
        connection is closed `delay` seconds later. Returns an event set when it fired."""
        trigger = _Trigger(pattern, forward, delay)
        with self._lock:
            self._triggers.append(trigger)
        return trigger.fired

    @property
    def open_connections(self) -> int:
        with self._lock:
            return sum(1 for pair in self._pairs if not pair.closed)

    # -- plumbing ----------------------------------------------------------------------------

    def _accept_loop(self, listener: socket.socket, stop: threading.Event) -> None:
        with selectors.DefaultSelector() as selector:
            selector.register(listener, selectors.EVENT_READ)
            while not stop.is_set():
                if not selector.select(timeout=0.05):
                    continue
                try:
                    client, _ = listener.accept()
                except OSError:
                    continue
                self._connect(client)

    def _connect(self, client: socket.socket) -> None:
        try:
            server = socket.create_connection(self.target, timeout=5)
        except OSError:
            client.close()  # the server is down: the client sees the connection close
            return
        server.settimeout(None)
        for sock in (client, server):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        pair = _Pair(client, server)
        upstream = threading.Thread(target=self._pump_up, args=(pair,), daemon=True)
        downstream = threading.Thread(target=self._pump_down, args=(pair,), daemon=True)
        with self._lock:
            self.connections_seen += 1
            self._pairs = [p for p in self._pairs if not p.closed] + [pair]
            self._threads = [t for t in self._threads if t.is_alive()]
            self._threads += [upstream, downstream]
        upstream.start()
        downstream.start()

    def _armed(self, window: bytes) -> _Trigger | None:
        with self._lock:
            for trigger in self._triggers:
                if trigger.pattern in window:
                    self._triggers.remove(trigger)
                    return trigger
        return None

    def _pump_up(self, pair: _Pair) -> None:
        tail = b""
        try:
            while True:
                data = pair.client.recv(_CHUNK)
                if not data:
                    break
                window = tail + data
                tail = window[-256:]
                trigger = self._armed(window) if self._triggers else None
                if trigger is None:
                    pair.server.sendall(data)
                    continue
                if trigger.forward:
                    pair.muted = True
                    pair.server.sendall(data)
                    if trigger.delay:
                        time.sleep(trigger.delay)
                trigger.fired.set()
                break
        except OSError:
            pass
        finally:
            pair.close()

    def _pump_down(self, pair: _Pair) -> None:
        try:
            while True:
                data = pair.server.recv(_CHUNK)
                if not data:
                    break
                if not pair.muted:
                    pair.client.sendall(data)
        except OSError:
            pass
        finally:
            pair.close()
