"""Database utilities: connecting, a pool for application code, logged queries, transactions,
and running a multi-statement script as written."""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, LiteralString

import psycopg
from psycopg import errors, generators, pq
from psycopg.abc import PQGen
from psycopg.pq.abc import PGconn, PGresult
from psycopg.rows import TupleRow
from psycopg.sql import SQL, Composable, Composed

from runner import credentials, logs, stopping
from runner.config import ConnectionSettings, Settings
from runner.errors import DatabaseUnreachable, PermissionDenied

if TYPE_CHECKING:
    from psycopg_pool import ConnectionPool

Connection = psycopg.Connection[TupleRow]
CANCEL_TIMEOUT = 5.0  # seconds for a cancelled statement to end, as psycopg waits itself
Query = LiteralString | bytes | SQL | Composed


def connect(
    settings: ConnectionSettings | Settings, *, connect_timeout: int | None = None
) -> Connection:
    """One dedicated autocommit connection; transactions are opened explicitly. Nothing is
    prepared on the server: the runner's session reset deallocates whatever a migration left."""
    connection = _connection(settings)
    kwargs = connection.kwargs(connect_timeout)
    password = credentials.password(connection)
    if password is not None:
        kwargs["password"] = password
    conn = psycopg.connect(autocommit=True, **kwargs)
    conn.prepare_threshold = None
    stopping.opened(conn)
    return conn


def create_pool(
    settings: ConnectionSettings | Settings,
    *,
    min_size: int = 1,
    max_size: int = 10,
    application_name: str | None = None,
) -> ConnectionPool:
    """An open connection pool for application code (the runner uses one connection). Its
    connections carry the application's own name (libpq's default: PGAPPNAME), never the
    runner's, so that lock diagnostics never confuse the two."""
    from psycopg_pool import ConnectionPool  # only application code pays for the import

    kwargs = _connection(settings).kwargs()
    del kwargs["application_name"]
    if application_name is not None:
        kwargs["application_name"] = application_name
    return ConnectionPool(kwargs=kwargs, min_size=min_size, max_size=max_size, open=True)


def _connection(settings: ConnectionSettings | Settings) -> ConnectionSettings:
    return settings if isinstance(settings, ConnectionSettings) else settings.database


def execute(
    conn: Connection, query: Query, params: Sequence[Any] | Mapping[str, Any] | None = None
) -> psycopg.Cursor[TupleRow]:
    """Run one statement, logging it and its duration at debug level, never its parameters.
    A privilege the role lacks is the runner's PermissionDenied (77), naming what is missing."""
    started = time.perf_counter()
    try:
        cursor = conn.execute(query, params)
    except errors.InsufficientPrivilege as denied:
        raise PermissionDenied(_what_is_missing(denied, conn)) from None
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


_DENIED_FOR = re.compile(r"permission denied for (\w+) (.+)")


def _what_is_missing(denied: psycopg.Error, conn: Connection) -> str:
    """The server's words, and the privilege they mean for the runner's own statements."""
    message = (denied.diag.message_primary or str(denied)).strip()
    who = f"role {conn.info.user}"
    found = _DENIED_FOR.match(message)
    kind, name = found.groups() if found else ("", "")
    if kind == "schema":
        advice = (
            f"{who} needs CREATE on schema {name} to create the tracking table there (since "
            "PostgreSQL 15 only the database owner has CREATE on public): GRANT CREATE ON "
            f"SCHEMA {name} TO the role, or set MIGRATIONS_TABLE to a schema it owns"
        )
    elif kind == "database":
        advice = f"{who} needs CREATE on database {name} to create the tracking table's schema"
    elif kind in ("table", "relation"):
        advice = (
            f"{who} needs SELECT, INSERT, UPDATE and DELETE on the tracking table {name} "
            "(status, plan and await need SELECT only)"
        )
    else:
        advice = f"{who} lacks a privilege the runner needs"
    return f"permission denied: {message}: {advice}"


@contextmanager
def lost_connection_reported() -> Iterator[None]:
    """The server or the network went away between two statements: a DatabaseUnreachable
    (69) that says how to find out what committed, instead of a driver error."""
    try:
        yield
    except psycopg.OperationalError as lost:
        raise DatabaseUnreachable(
            f"connection to the database lost: {' '.join(str(lost).split())}; run again: the "
            "tracking table tells what committed"
        ) from None


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


def _cancel_in_flight(conn: Connection, fetch: PQGen[list[PGresult]]) -> None:
    """A signal that arrived after the query left but before psycopg waited on it (a loaded
    machine deschedules the runner right there, or it came while `meanwhile` ran) finds the
    query running and unread, where psycopg's own cancel-on-interrupt does not reach: cancel
    it and read its end, so that the connection can say what committed. A server that does not
    answer loses the connection."""
    if conn.pgconn.transaction_status != pq.TransactionStatus.ACTIVE:
        return  # psycopg's wait cancelled and drained it, or it never left
    try:
        conn.cancel_safe(timeout=CANCEL_TIMEOUT)
        conn.wait(fetch, timeout=CANCEL_TIMEOUT)
    except psycopg.Error:
        conn.pgconn.finish()


def run_script(
    conn: Connection,
    script: str,
    *,
    meanwhile: Callable[[], object] | None = None,
    into: list[PGresult] | None = None,
) -> int:
    """Send `script` as written, in one simple-protocol query, and return how many statements
    the server ran. On failure raise ScriptError naming the failing statement's index.
    `meanwhile` runs once the query has left, while the server works on it: the caller's own
    bookkeeping costs no time of the run's. `into` receives each result as it arrives (a
    notice handler can tell from it how far the script has got; after a lost connection it
    tells what ended before)."""
    encoding = conn.info.encoding
    pgconn = conn.pgconn
    with conn.lock:
        fetch = _execute(pgconn, into)
        try:
            pgconn.send_query(script.encode(encoding))
            if meanwhile is not None:
                conn.wait(generators.send(pgconn))
                fetch = _fetch(pgconn, into)
                meanwhile()
            results = conn.wait(fetch)
        except BaseException:
            _cancel_in_flight(conn, fetch)
            raise
    done = 0
    for result in results:
        if result.status == pq.ExecStatus.FATAL_ERROR:
            raise ScriptError(done, errors.error_from_result(result, encoding=encoding))
        if result.status != pq.ExecStatus.EMPTY_QUERY:
            done += 1
    return done


def _execute(pgconn: PGconn, into: list[PGresult] | None) -> PQGen[list[PGresult]]:
    yield from generators.send(pgconn)
    return (yield from _fetch(pgconn, into))


def _fetch(pgconn: PGconn, into: list[PGresult] | None) -> PQGen[list[PGresult]]:
    """psycopg's fetch_many, or one result at a time into `into`."""
    if into is None:
        results: list[PGresult] = yield from generators.fetch_many(pgconn)
        return results
    while True:
        try:
            result = yield from generators.fetch(pgconn)
        except psycopg.DatabaseError:
            # The server closed the session after an error it sent (fetch_many does the same).
            if any(done.status == pq.ExecStatus.FATAL_ERROR for done in into):
                return into
            raise
        if result is None:
            return into
        into.append(result)
        if result.status in _COPYING:
            return into


_COPYING = (pq.ExecStatus.COPY_IN, pq.ExecStatus.COPY_OUT, pq.ExecStatus.COPY_BOTH)
