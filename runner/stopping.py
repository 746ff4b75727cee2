"""Stopping work that runs in other threads: a signal reaches the main thread only.

The signal handler asks the running fleet's `Stop` to stop (`request`). A target's thread
learns of it where it would otherwise go on: before each migration (`check`) and in every
backoff sleep (`stoppable`); and the statements its connections are running are cancelled
(`Stop.cancel`), which rolls their transaction back. In that thread the stop then raises the
KeyboardInterrupt that a signal raises in the main thread, and takes the same way out."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any, Protocol

CANCEL_TIMEOUT = 5.0  # seconds for one cancel request, as psycopg's own cancel waits


class Cancellable(Protocol):
    """A connection whose running statement can be cancelled from another thread."""

    @property
    def closed(self) -> bool: ...

    def cancel_safe(self, *, timeout: float = ...) -> None: ...


class Stop:
    """One run's stop: whether it was asked for, by which signal, and the connections of the
    targets running now."""

    def __init__(self) -> None:
        self.event = threading.Event()
        self.signal: int | None = None
        self._lock = threading.Lock()
        self._open: list[list[Cancellable]] = []

    def is_set(self) -> bool:
        return self.event.is_set()

    def request(self, signum: int) -> None:
        self.signal = signum
        self.event.set()

    def cancel(self) -> None:
        """Cancel whatever the running targets' connections are running."""
        with self._lock:
            connections = [conn for opened in self._open for conn in opened]
        for conn in connections:
            if conn.closed:
                continue
            # Best effort: a connection that just closed, or a server that does not answer,
            # ends that target by itself.
            with contextlib.suppress(Exception):
                conn.cancel_safe(timeout=CANCEL_TIMEOUT)

    @contextmanager
    def scope(self) -> Iterator[None]:
        """Run a target's work, in this thread, under this stop."""
        opened: list[Cancellable] = []
        with self._lock:
            self._open.append(opened)
        token = _current.set((self, opened))
        try:
            yield
        finally:
            _current.reset(token)
            with self._lock:
                self._open.remove(opened)


_current: ContextVar[tuple[Stop, list[Cancellable]] | None] = ContextVar(
    "runner_stop", default=None
)
_active: list[Stop] = []  # the stop of the fleet running in this process, for the handler


@contextmanager
def active(stop: Stop) -> Iterator[Stop]:
    """Make `stop` the one that a signal requests while the block runs."""
    _active.append(stop)
    try:
        yield stop
    finally:
        _active.remove(stop)


def request(signum: int) -> None:
    """From the signal handler: stop the running fleet, if there is one."""
    for stop in _active:
        stop.request(signum)


def check() -> None:
    """In a target's thread: stop here, as a signal would, if the run was asked to stop."""
    scope = _current.get()
    if scope is not None and scope[0].is_set():
        raise KeyboardInterrupt


def opened(conn: Cancellable) -> None:
    """A connection a target's thread opened: cancelled if the run is stopped."""
    scope = _current.get()
    if scope is None:
        return
    stop, connections = scope
    with stop._lock:
        connections.append(conn)


def stoppable(sleep: Callable[[float], Any]) -> Callable[[float], Any]:
    """`sleep`, except in a target's thread, which waits on its stop instead, so that a
    target waiting for a server or a lock stops as soon as the run is asked to."""

    def wait(seconds: float) -> None:
        scope = _current.get()
        if scope is None:
            sleep(seconds)
            return
        if scope[0].event.wait(seconds):
            raise KeyboardInterrupt

    return wait
