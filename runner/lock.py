"""The migration lock: a session-level advisory lock on the runner's own connection.

It is taken by polling pg_try_advisory_lock(): a blocked pg_advisory_lock() call can deadlock
with a CREATE INDEX CONCURRENTLY run by the lock's holder, which waits for every transaction
(ours included) to end. The lock dies with the connection, so a killed runner leaves none.
"""

from __future__ import annotations

import hashlib
import logging
import secrets
import time
from collections.abc import Callable
from typing import Any

import psycopg
from psycopg import sql

from runner import db, logs
from runner.config import ConnectionSettings, TableName
from runner.errors import LockTimeout, UnstableSession

_UNNEEDED = -1 << 64  # not a lock key: keys are signed 64-bit

_TRY_LOCK = sql.SQL("SELECT pg_try_advisory_lock(%(key)s)")
_UNLOCK = sql.SQL("SELECT pg_advisory_unlock(%(key)s)")
# Who holds the advisory lock with key (classid, objid) = the key's high and low 32 bits.
_HOLDER = sql.SQL(
    """SELECT l.pid, a.application_name, host(a.client_addr), a.backend_start, a.state
FROM pg_locks l
LEFT JOIN pg_stat_activity a ON a.pid = l.pid
WHERE l.locktype = 'advisory' AND l.granted
  AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
  AND l.classid = %(high)s::bigint::oid AND l.objid = %(low)s::bigint::oid AND l.objsubid = 1
LIMIT 1"""
)
# A pooler hands out a process id of its own (its cancel key) at connect, which then differs
# from the backend's own.
_BACKEND_PID = sql.SQL("SELECT pg_backend_pid()")
_MARKER = sql.SQL("SELECT current_setting('migration_runner.session', true)")
_MARKER_AND_PID = sql.SQL(
    "SELECT current_setting('migration_runner.session', true), pg_backend_pid()"
)


# How often a waiter logs lock.waiting (and asks who holds the lock), at most.
WAITING_LOG_INTERVAL = 5.0


def lock_key(table: TableName) -> int:
    """A stable signed 64-bit advisory lock key for this tracking table (not Python's hash())."""
    digest = hashlib.sha256(f"migration-runner:{table}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


def acquire(
    conn: db.Connection,
    table: TableName,
    *,
    timeout: float,
    sleep: Callable[[float], Any] = time.sleep,
    unneeded: Callable[[], bool] | None = None,
) -> int | None:
    """Take the lock for `table`, waiting up to `timeout` seconds; return its key.

    While waiting, `unneeded()` is asked after each try; when it says the lock is no longer
    needed (the holder did the work), give up waiting and return None."""
    import tenacity  # here: a run that finds nothing to do never needs it

    from runner import retry

    key = lock_key(table)
    started = time.monotonic()
    last_logged = [-WAITING_LOG_INTERVAL]

    def attempt() -> int | None:
        if _try_lock(conn, key):
            return key
        if unneeded is not None and unneeded():
            return _UNNEEDED
        return None

    def log_waiting(state: tenacity.RetryCallState) -> None:
        waited = time.monotonic() - started
        if waited - last_logged[0] < WAITING_LOG_INTERVAL:
            return
        last_logged[0] = waited
        holder = _holder(conn, key)
        logs.event(
            logging.INFO,
            "lock.waiting",
            "another runner holds the migration lock; waiting"
            + (f" (pid {holder['holder_pid']})" if holder else ""),
            lock_key=key,
            attempt=state.attempt_number,
            waited_s=round(waited, 3),
            retry_in_s=round(state.upcoming_sleep, 3),
            **holder,
        )

    policy = retry.backoff(
        deadline=timeout,
        retry=tenacity.retry_if_result(lambda outcome: outcome is None),
        sleep=sleep,
        initial=0.05,
        maximum=0.1,  # waiters notice a released lock, or finished work, within 0.1 s
        before_sleep=log_waiting,
    )
    try:
        outcome = policy(attempt)
    except tenacity.RetryError:
        holder = _holder(conn, key)
        raise LockTimeout(
            f"another runner held the migration lock for more than {timeout:g}s"
            + (f" (pid {holder['holder_pid']}, {holder['holder_application']})" if holder else "")
        ) from None
    if outcome == _UNNEEDED:
        logs.event(
            logging.INFO,
            "lock.unneeded",
            "another runner finished the work while this one waited for the lock",
            lock_key=key,
            waited_ms=round((time.monotonic() - started) * 1000),
        )
        return None
    logs.event(
        logging.INFO,
        "lock.acquired",
        "migration lock acquired",
        lock_key=key,
        waited_ms=round((time.monotonic() - started) * 1000),
    )
    return key


def require_stable_session(conn: db.Connection, settings: ConnectionSettings) -> None:
    """Refuse a connection whose server session can change between two transactions (a pooler
    in transaction or statement mode): the session lock would be taken on one server process and
    the migrations run on others, or left behind on an idle one. Checked before the lock.

    libpq's process id is the pooler's own key when there is a pooler. Then a second client
    looks: in transaction pooling it is handed the server process this one just left."""
    row = db.execute(conn, _BACKEND_PID).fetchone()
    server_pid = int(row[0]) if row else 0
    if server_pid == conn.info.backend_pid:
        return  # a direct connection
    token = secrets.token_hex(8)
    db.execute(
        conn,
        sql.SQL("SELECT set_config('migration_runner.session', {}, false)").format(
            sql.Literal(token)
        ),
    )
    try:
        with db.connect(settings) as probe:
            seen = db.execute(probe, _MARKER).fetchone()
            with probe.transaction():
                probe_pid = db.execute(probe, _BACKEND_PID).fetchone()
                ours = db.execute(conn, _MARKER_AND_PID).fetchone()
        shared = (
            (seen is not None and seen[0] == token)
            or (probe_pid is not None and probe_pid[0] == server_pid)
            or ours is None
            or ours[0] != token
            or ours[1] != server_pid
        )
    except psycopg.OperationalError as error:
        if "pooling mode" not in str(error):  # PgBouncer's statement mode refuses BEGIN
            raise
        shared = True
    if shared:
        raise UnstableSession(
            "the connection goes through a pooler that does not keep one server session per "
            "client (PgBouncer with pool_mode=transaction or statement, say): the migration "
            "lock and each migration's session settings cannot hold there. Set "
            "MIGRATION_DATABASE_URL to a direct URL of the server (or a session-pooled one); "
            "the application keeps DATABASE_URL"
        )
    logs.event(
        logging.INFO,
        "db.pooler_session",
        "the connection goes through a pooler that keeps this session on one server process",
        server_pid=server_pid,
    )


def release(conn: db.Connection, key: int) -> None:
    db.execute(conn, _UNLOCK, {"key": key})
    logs.event(logging.INFO, "lock.released", "migration lock released", lock_key=key)


def _try_lock(conn: db.Connection, key: int) -> bool:
    row = db.execute(conn, _TRY_LOCK, {"key": key}).fetchone()
    return bool(row and row[0])


def _holder(conn: db.Connection, key: int) -> dict[str, Any]:
    high, low = (key >> 32) & 0xFFFFFFFF, key & 0xFFFFFFFF
    row = db.execute(conn, _HOLDER, {"high": high, "low": low}).fetchone()
    if row is None:
        return {}
    pid, application, client, since, state = row
    return {
        "holder_pid": pid,
        "holder_application": application,
        "holder_client": client,
        "holder_since": since.isoformat() if since else None,
        "holder_state": state,
    }
