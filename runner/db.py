"""Database utilities: connecting, a pool for application code, logged queries, transactions,
and running a multi-statement script as written."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, LiteralString

import psycopg
from psycopg import errors, generators, pq
from psycopg.rows import TupleRow
from psycopg.sql import SQL, Composable, Composed

from runner import logs
from runner.config import ConnectionSettings

if TYPE_CHECKING:
    from psycopg_pool import ConnectionPool

Connection = psycopg.Connection[TupleRow]
Query = LiteralString | bytes | SQL | Composed


def connect(settings: ConnectionSettings, *, connect_timeout: int | None = None) -> Connection:
    """One dedicated autocommit connection; transactions are opened explicitly. Nothing is
    prepared on the server: the runner's session reset deallocates whatever a migration left."""
    conn = psycopg.connect(autocommit=True, **settings.kwargs(connect_timeout))
    conn.prepare_threshold = None
    return conn


def create_pool(
    settings: ConnectionSettings, *, min_size: int = 1, max_size: int = 10
) -> ConnectionPool:
    """An open connection pool for application code (the runner uses one connection)."""
    from psycopg_pool import ConnectionPool  # only application code pays for the import

    return ConnectionPool(kwargs=settings.kwargs(), min_size=min_size, max_size=max_size, open=True)


def execute(
    conn: Connection, query: Query, params: dict[str, Any] | None = None
) -> psycopg.Cursor[TupleRow]:
    """Run one statement, logging it and its duration at debug level, never its parameters."""
    started = time.perf_counter()
    cursor = conn.execute(query, params)
    if logs.logger.isEnabledFor(logging.DEBUG):
        text = query.as_string(conn) if isinstance(query, Composable) else str(query)
        logs.event(
            logging.DEBUG,
            "db.query",
            "query executed",
            statement=" ".join(text.split()),
            duration_ms=round((time.perf_counter() - started) * 1000, 3),
        )
    return cursor


@contextmanager
def transaction(conn: Connection) -> Iterator[Connection]:
    """Commit when the block ends normally, roll back when it raises (signals included)."""
    with conn.transaction():
        yield conn


@dataclass
class ScriptError(Exception):
    """A statement of a script failed: `statement_index` is its 0-based place among the
    script's non-empty statements, `error` the server's error."""

    statement_index: int
    error: psycopg.Error


def run_script(conn: Connection, script: str) -> int:
    """Send `script` as written, in one simple-protocol query, and return how many statements
    the server ran. On failure raise ScriptError naming the failing statement's index."""
    encoding = conn.info.encoding
    with conn.lock:
        conn.pgconn.send_query(script.encode(encoding))
        results = conn.wait(generators.execute(conn.pgconn))
    done = 0
    for result in results:
        if result.status == pq.ExecStatus.FATAL_ERROR:
            raise ScriptError(done, errors.error_from_result(result, encoding=encoding))
        if result.status != pq.ExecStatus.EMPTY_QUERY:
            done += 1
    return done
