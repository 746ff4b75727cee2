"""Asynchronous commit, ended durably: the whole protocol.

A migration and its row commit together, so a commit lost in a crash loses both and the next
run applies that migration again. The runner's session therefore commits asynchronously and
pays for one synchronous commit at its end (`flush`), which makes every earlier commit of the
server durable too. Whatever reports a migration as applied (the run's last words, the no-op
check, `await`) reports it from rows that `is_flushed` or `wait_until_flushed` found on disk."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from psycopg import sql

from runner import db

ASYNCHRONOUS = "SET synchronous_commit TO off"
_ASYNCHRONOUS = sql.SQL(ASYNCHRONOUS)
_SYNCHRONOUS = sql.SQL("RESET synchronous_commit")
# A transaction with an id writes a commit record; committing it synchronously flushes the WAL
# up to there, and so every earlier asynchronous commit.
_ASSIGN_TRANSACTION_ID = sql.SQL("SELECT txid_current()")
# Whether every commit so far is flushed to disk (always true on a standby, which has none).
_FLUSHED = sql.SQL(
    "SELECT CASE WHEN pg_is_in_recovery() THEN true "
    "ELSE pg_current_wal_flush_lsn() >= pg_current_wal_insert_lsn() END"
)
# Where the WAL ends now (NULL on a standby), and whether it is flushed up to such a position.
_INSERT_POSITION = sql.SQL(
    "SELECT CASE WHEN pg_is_in_recovery() THEN NULL ELSE pg_current_wal_insert_lsn()::text END"
)
_FLUSHED_UP_TO = sql.SQL("SELECT pg_current_wal_flush_lsn() >= %(position)s::pg_lsn")


def commit_asynchronously(conn: db.Connection) -> None:
    db.execute(conn, _ASYNCHRONOUS)


def flush(conn: db.Connection) -> None:
    """One synchronous commit: every commit before it is on disk when it returns."""
    db.execute(conn, _SYNCHRONOUS)
    with db.transaction(conn):
        db.execute(conn, _ASSIGN_TRANSACTION_ID)


def is_flushed(conn: db.Connection) -> bool:
    row = db.execute(conn, _FLUSHED).fetchone()
    return bool(row and row[0])


def make_durable(conn: db.Connection) -> None:
    """Rows another runner committed asynchronously a moment ago, made durable before this
    one reports them: a flush only when one is needed."""
    if not is_flushed(conn):
        flush(conn)


def wait_until_flushed(
    conn: db.Connection, sleep: Callable[[float], Any], patience: float = 5.0
) -> bool:
    """Whether every commit this session can see is on disk, waiting up to `patience` seconds
    for the WAL writer. Read-only (for `await`, whose role may not write); a standby has
    nothing of its own to flush."""
    row = db.execute(conn, _INSERT_POSITION).fetchone()
    position = row[0] if row else None
    if position is None:
        return True
    deadline = time.monotonic() + patience
    while True:
        flushed = db.execute(conn, _FLUSHED_UP_TO, {"position": position}).fetchone()
        if flushed and flushed[0]:
            return True
        if time.monotonic() >= deadline:
            return False
        sleep(0.05)
