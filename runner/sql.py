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


SCHEMA_EXISTS = sql.SQL("SELECT 1 FROM pg_namespace WHERE nspname = %(name)s")


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


def insert_row(table: TableName) -> sql.Composed:
    """A row whose execution time is not measured: a no-transaction migration `running`
    before its first statement, or one recorded as `applied` without running it."""
    return sql.SQL(
        "INSERT INTO {table} (version, name, checksum, status, execution_ms, applied_by) "
        "VALUES (%(version)s, %(name)s, %(checksum)s, %(status)s, 0, %(applied_by)s)"
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

# Whether this server can take writes at all.
READ_ONLY = sql.SQL(
    "SELECT pg_is_in_recovery(), current_setting('default_transaction_read_only')::bool"
)

SESSION_INFO = sql.SQL("SELECT current_user, current_database(), version()")

# Where an unqualified tracking table lives, and the backend's own pid: a pooler hands out a
# process id of its own (its cancel key) at connect, which then differs from this one.
SESSION_FACTS = sql.SQL("SELECT current_schema(), pg_backend_pid()")
BACKEND_PID = sql.SQL("SELECT pg_backend_pid()")
SESSION_MARKER = sql.SQL("SELECT current_setting('migration_runner.session', true)")
SESSION_MARKER_AND_PID = sql.SQL(
    "SELECT current_setting('migration_runner.session', true), pg_backend_pid()"
)


def set_session_marker(token: str) -> sql.Composed:
    return sql.SQL("SELECT set_config('migration_runner.session', {token}, false)").format(
        token=sql.Literal(token)
    )


# Back to the session the runner connected with, before each migration and before each write of
# its row, whatever the last file did to it: role, settings, temporary tables, prepared
# statements, cursors, listeners, cached plans and sequence values. Not DISCARD ALL, which would
# also release the migration lock. Every statement here may run inside a transaction block.
SESSION_RESET = (
    "SET SESSION AUTHORIZATION DEFAULT; RESET ALL; DEALLOCATE ALL; CLOSE ALL; UNLISTEN *; "
    "DISCARD PLANS; DISCARD TEMP; DISCARD SEQUENCES; SET synchronous_commit TO off"
)
SESSION_RESET_STATEMENTS = SESSION_RESET.count(";") + 1


def set_status(table: TableName) -> sql.Composed:
    return sql.SQL(
        "UPDATE {table} SET status = %(status)s, execution_ms = %(execution_ms)s, "
        "applied_at = now() WHERE version = %(version)s"
    ).format(table=_table(table))


def select_status(table: TableName) -> sql.Composed:
    return sql.SQL("SELECT status FROM {table} WHERE version = %(version)s").format(
        table=_table(table)
    )


def delete_row(table: TableName) -> sql.Composed:
    return sql.SQL("DELETE FROM {table} WHERE version = %(version)s").format(table=_table(table))


def update_checksum(table: TableName) -> sql.Composed:
    return sql.SQL("UPDATE {table} SET checksum = %(checksum)s WHERE version = %(version)s").format(
        table=_table(table)
    )


def rename_table(table: TableName, new_name: str) -> sql.Composed:
    return sql.SQL("ALTER TABLE {table} RENAME TO {new}").format(
        table=_table(table), new=sql.Identifier(new_name)
    )


def select_foreign_versions(table: TableName, with_dirty: bool) -> sql.Composed:
    """golang-migrate's (version, dirty) or dbmate's (version) rows."""
    columns = sql.SQL("version::text, dirty" if with_dirty else "version::text, false")
    return sql.SQL("SELECT {columns} FROM {table}").format(columns=columns, table=_table(table))


def set_statement_timeout(milliseconds: int) -> sql.Composed:
    """The session's statement_timeout, set explicitly (0: off) so that a role's own default
    cannot cut a long index build short."""
    return sql.SQL("SELECT set_config('statement_timeout', {value}, false)").format(
        value=sql.Literal(f"{milliseconds}ms")
    )


def set_local_timeouts(lock_timeout_ms: int, statement_timeout_ms: int) -> sql.Composed:
    """Per-transaction timeouts for a migration (0 turns one off)."""
    return sql.SQL(
        "SELECT set_config('lock_timeout', {lock}, true), "
        "set_config('statement_timeout', {statement}, true)"
    ).format(
        lock=sql.Literal(f"{lock_timeout_ms}ms"), statement=sql.Literal(f"{statement_timeout_ms}ms")
    )


# The sessions that block `pid`, as pg_blocking_pids() sees them.
BLOCKERS = sql.SQL(
    """SELECT a.pid, a.application_name, a.state,
       round(extract(epoch FROM now() - a.xact_start)::numeric, 3)::float8,
       left(a.query, 200)
FROM pg_stat_activity a
WHERE a.pid = ANY (pg_blocking_pids(%(pid)s))
ORDER BY a.pid"""
)

# An index named `name` in the schema of `table`, and whether it is valid.
INDEX_VALIDITY = sql.SQL(
    """SELECT n.nspname, i.indisvalid
FROM pg_class c
JOIN pg_index i ON i.indexrelid = c.oid
JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.relname = %(name)s
  AND c.relnamespace = (SELECT relnamespace FROM pg_class WHERE oid = to_regclass(%(table)s))"""
)


def drop_index_concurrently(schema: str, name: str) -> sql.Composed:
    return sql.SQL("DROP INDEX CONCURRENTLY IF EXISTS {index}").format(
        index=sql.Identifier(schema, name)
    )


def insert_applied_literal(
    table: TableName, *, version: int, name: str, checksum: str, applied_by: str
) -> sql.Composed:
    """The tracking row with its values inlined, to travel in the same query as the migration;
    execution_ms is measured by the server from the start of the transaction."""
    return sql.SQL(
        "INSERT INTO {table} (version, name, checksum, status, execution_ms, applied_by) "
        "VALUES ({version}, {name}, {checksum}, 'applied', "
        "(extract(epoch FROM clock_timestamp() - now()) * 1000)::bigint, {applied_by})"
    ).format(
        table=_table(table),
        version=sql.Literal(version),
        name=sql.Literal(name),
        checksum=sql.Literal(checksum),
        applied_by=sql.Literal(applied_by),
    )


def delete_row_literal(table: TableName, version: int) -> sql.Composed:
    return sql.SQL("DELETE FROM {table} WHERE version = {version}").format(
        table=_table(table), version=sql.Literal(version)
    )


BEGIN = sql.SQL("BEGIN")
COMMIT = sql.SQL("COMMIT")
ROLLBACK = sql.SQL("ROLLBACK")
# A migration and its row commit together, so a commit lost in a crash loses both and the next
# run applies it again: the run may commit asynchronously as long as it ends durably.
SET_ASYNCHRONOUS_COMMIT = sql.SQL("SET synchronous_commit TO off")
RESET_SYNCHRONOUS_COMMIT = sql.SQL("RESET synchronous_commit")
# A transaction with an id writes a commit record; committing it synchronously flushes the WAL
# up to there, and so every earlier asynchronous commit.
ASSIGN_TRANSACTION_ID = sql.SQL("SELECT txid_current()")

# Where the WAL ends now (NULL on a standby), and whether it is flushed up to such a position.
WAL_INSERT_POSITION = sql.SQL(
    "SELECT CASE WHEN pg_is_in_recovery() THEN NULL ELSE pg_current_wal_insert_lsn()::text END"
)
WAL_FLUSHED_UP_TO = sql.SQL("SELECT pg_current_wal_flush_lsn() >= %(position)s::pg_lsn")

# Whether every commit so far is flushed to disk (always true on a standby, which has none).
WAL_FLUSHED = sql.SQL(
    "SELECT CASE WHEN pg_is_in_recovery() THEN true "
    "ELSE pg_current_wal_flush_lsn() >= pg_current_wal_insert_lsn() END"
)
