"""Every SQL statement the runner itself sends. Nothing else in the package writes SQL."""

from __future__ import annotations

import hashlib

from psycopg import sql

from runner.config import TableName

# The tracking table this tool owns: name, type as information_schema reports it.
TRACKING_COLUMNS: dict[str, str] = {
    "version": "bigint",
    "name": "text",
    "checksum": "text",
    "status": "text",
    "applied_at": "timestamp with time zone",
    "execution_ms": "bigint",
    "applied_by": "text",
}


def lock_key(table: TableName) -> int:
    """A stable signed 64-bit advisory lock key for this tracking table (not Python's hash())."""
    digest = hashlib.sha256(f"migration-runner:{table}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


def _table(table: TableName) -> sql.Composable:
    if table.schema:
        return sql.Identifier(table.schema, table.name)
    return sql.Identifier(table.name)


def create_schema(table: TableName) -> sql.Composed:
    assert table.schema is not None
    return sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(table.schema))


def create_tracking_table(table: TableName) -> sql.Composed:
    return sql.SQL(
        """CREATE TABLE IF NOT EXISTS {table} (
    version      bigint      PRIMARY KEY,
    name         text        NOT NULL,
    checksum     text        NOT NULL,
    status       text        NOT NULL DEFAULT 'applied'
                             CHECK (status IN ('running', 'applied', 'failed')),
    applied_at   timestamptz NOT NULL DEFAULT now(),
    execution_ms bigint      NOT NULL DEFAULT 0,
    applied_by   text        NOT NULL DEFAULT current_user
)"""
    ).format(table=_table(table))


# The columns of the named table, or no rows when it does not exist.
TABLE_COLUMNS = sql.SQL(
    """SELECT a.attname, format_type(a.atttypid, NULL)
FROM pg_attribute a
WHERE a.attrelid = to_regclass(%(table)s) AND a.attnum > 0 AND NOT a.attisdropped
ORDER BY a.attnum"""
)


def qualified_name(table: TableName) -> str:
    """The table's name as text for to_regclass(), quoted so that case is kept."""
    return _table(table).as_string(None)


def select_applied(table: TableName) -> sql.Composed:
    return sql.SQL(
        "SELECT version, name, checksum, status, applied_at, execution_ms, applied_by "
        "FROM {table} ORDER BY version"
    ).format(table=_table(table))


def insert_applied(table: TableName) -> sql.Composed:
    return sql.SQL(
        "INSERT INTO {table} (version, name, checksum, status, execution_ms, applied_by) "
        "VALUES (%(version)s, %(name)s, %(checksum)s, 'applied', %(execution_ms)s, "
        "%(applied_by)s)"
    ).format(table=_table(table))


TRY_LOCK = sql.SQL("SELECT pg_try_advisory_lock(%(key)s)")
UNLOCK = sql.SQL("SELECT pg_advisory_unlock(%(key)s)")

# Who holds the advisory lock with key (classid, objid) = the key's high and low 32 bits.
LOCK_HOLDER = sql.SQL(
    """SELECT l.pid, a.application_name, host(a.client_addr), a.backend_start, a.state
FROM pg_locks l
LEFT JOIN pg_stat_activity a ON a.pid = l.pid
WHERE l.locktype = 'advisory' AND l.granted
  AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
  AND l.classid = %(high)s::bigint::oid AND l.objid = %(low)s::bigint::oid AND l.objsubid = 1
LIMIT 1"""
)

SESSION_INFO = sql.SQL("SELECT current_user, current_database(), version()")
