"""Who blocks the runner's session when a migration waits on a lock, for the log line that
says why a migration timed out."""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

import psycopg
from psycopg import sql

from runner import db, logs
from runner.config import ConnectionSettings

# The sessions that block `pid`, as pg_blocking_pids() sees them.
_BLOCKERS = sql.SQL(
    """SELECT a.pid, a.application_name, a.state,
       round(extract(epoch FROM now() - a.xact_start)::numeric, 3)::float8,
       left(a.query, 200)
FROM pg_stat_activity a
WHERE a.pid = ANY (pg_blocking_pids(%(pid)s))
ORDER BY a.pid"""
)


class BlockerProbe:
    """Notes who blocks the runner's session when a migration waits on a lock for long.

    A session blocked on a lock cannot ask pg_blocking_pids() itself, so a helper thread with
    its own connection looks shortly before lock_timeout fires. It connects as soon as it is
    first armed, not when it must look; each arming has a number, and a look that finishes
    after its arming was disarmed is dropped instead of being taken for the next one's."""

    def __init__(self, settings: ConnectionSettings | None) -> None:
        self._settings = settings
        self._condition = threading.Condition()
        self._armed: tuple[int, int, float] | None = None  # (arming, pid, when to look)
        self._arming = 0
        self._seen: list[dict[str, Any]] = []
        self._thread: threading.Thread | None = None
        self._conn: db.Connection | None = None
        self._closed = False

    def arm(self, pid: int, lock_timeout: float) -> None:
        with self._condition:
            self._arming += 1
            self._armed = (self._arming, pid, time.monotonic() + lock_timeout * 0.8)
            self._seen = []
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._watch, args=(lock_timeout,), daemon=True
                )
                self._thread.start()
            self._condition.notify()

    def disarm(self) -> list[dict[str, Any]]:
        with self._condition:
            self._arming += 1
            self._armed = None
            return list(self._seen)

    def close(self) -> None:
        with self._condition:
            self._closed = True
            self._armed = None
            self._condition.notify()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def _watch(self, lock_timeout: float) -> None:
        self._connect(lock_timeout)
        while True:
            with self._condition:
                while not self._closed and (
                    self._armed is None or time.monotonic() < self._armed[2]
                ):
                    wait = None if self._armed is None else self._armed[2] - time.monotonic()
                    self._condition.wait(wait)
                if self._closed:
                    break
                assert self._armed is not None
                arming, pid, _ = self._armed
                self._armed = None
            seen = self._look(pid)
            with self._condition:
                if arming == self._arming:
                    self._seen = seen
        if self._conn is not None:
            self._conn.close()

    def _connect(self, lock_timeout: float) -> None:
        if self._settings is None:
            return
        try:
            # libpq waits at least 2 s; the look comes at 80% of lock_timeout.
            self._conn = db.connect(self._settings, connect_timeout=max(2, round(lock_timeout)))
        except psycopg.Error as error:
            self._failed(error)

    def _look(self, pid: int) -> list[dict[str, Any]]:
        if self._conn is None:
            return []
        try:
            rows = db.execute(self._conn, _BLOCKERS, {"pid": pid}).fetchall()
        except psycopg.Error as error:
            self._failed(error)
            return []
        return [
            {
                "pid": pid,
                "application_name": app,
                "state": state,
                "transaction_age_s": age,
                "query": query,
            }
            for pid, app, state, age, query in rows
        ]

    @staticmethod
    def _failed(error: psycopg.Error) -> None:
        logs.event(
            logging.WARNING,
            "lock.probe_failed",
            "could not look up who blocks the migration; lock timeouts will name no blocker: "
            + " ".join(str(error).split()),
            error=" ".join(str(error).split()),
        )
