"""The tracking table: every statement about it, and nothing else, lives here.

One `TrackingTable` is the table's schema-qualified name on one connection. A migration's own
`SET search_path` cannot move it: the name is settled once, at connect (`resolve`)."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from psycopg import sql

from runner import db, logs
from runner.config import TableName
from runner.errors import ConfigError, ForeignTrackingTable
from runner.planner import APPLIED, AppliedMigration, Migration

GOLANG_MIGRATE = "golang-migrate"
DBMATE = "dbmate"

# The tracking table this tool owns: name, type as format_type() reports it.
COLUMNS: dict[str, str] = {
    "version": "bigint",
    "name": "text",
    "checksum": "text",
    "status": "text",
    "applied_at": "timestamp with time zone",
    "execution_ms": "bigint",
    "applied_by": "text",
}

_CREATE = """CREATE TABLE IF NOT EXISTS {table} (
    version      bigint      PRIMARY KEY,
    name         text        NOT NULL,
    checksum     text        NOT NULL,
    status       text        NOT NULL DEFAULT 'applied'
                             CHECK (status IN ('running', 'applied', 'failed')),
    applied_at   timestamptz NOT NULL DEFAULT now(),
    execution_ms bigint      NOT NULL DEFAULT 0,
    applied_by   text        NOT NULL DEFAULT current_user
)"""
# The columns of the named table, or no rows when it does not exist.
_COLUMNS = sql.SQL(
    """SELECT a.attname, format_type(a.atttypid, NULL)
FROM pg_attribute a
WHERE a.attrelid = to_regclass(%(table)s) AND a.attnum > 0 AND NOT a.attisdropped
ORDER BY a.attnum"""
)
_SCHEMA_EXISTS = sql.SQL("SELECT 1 FROM pg_namespace WHERE nspname = %(name)s")
_CURRENT_SCHEMA = sql.SQL("SELECT current_schema()")
_ROWS = "SELECT version, name, checksum, status, applied_at, execution_ms, applied_by FROM {table}"
# A row whose execution time is not measured: a no-transaction migration `running` before its
# first statement, or one recorded as `applied` without running it.
_INSERT = (
    "INSERT INTO {table} (version, name, checksum, status, execution_ms, applied_by) "
    "VALUES (%(version)s, %(name)s, %(checksum)s, %(status)s, 0, %(applied_by)s)"
)
# The row of a transactional migration, values inlined so that it travels in the same query as
# the migration; execution_ms is measured by the server from the migration's start, which the
# opening of its transaction records in a setting of the transaction (epoch seconds). Not now():
# the transactions of a batch, sent in one query, all start when the query arrives. (A file
# that resets every setting leaves now().)
STARTED_SETTING = "migration_runner.started_at"
_RECORD = (
    "INSERT INTO {table} (version, name, checksum, status, applied_at, execution_ms, applied_by) "
    "SELECT {version}, {name}, {checksum}, 'applied', pg_catalog.to_timestamp(started), "
    "((pg_catalog.date_part('epoch', pg_catalog.clock_timestamp()) - started) * 1000)::bigint, "
    "{applied_by} FROM (SELECT COALESCE(NULLIF(pg_catalog.current_setting("
    f"'{STARTED_SETTING}', true), '')::float8, pg_catalog.date_part('epoch', pg_catalog.now())) "
    "AS started) AS migration"
)


def resolve(conn: db.Connection, configured: TableName) -> TrackingTable:
    """The tracking table with its schema: an unqualified name lives in the session's current
    schema, where CREATE TABLE would put it."""
    if configured.schema:
        return TrackingTable(conn, configured)
    row = db.execute(conn, _CURRENT_SCHEMA).fetchone()
    schema = row[0] if row else None
    if not schema:
        raise ConfigError(
            "MIGRATIONS_TABLE",
            f"{configured.name} has no schema and the connection's search_path names no schema "
            "that exists; set MIGRATIONS_TABLE to schema.table",
        )
    return TrackingTable(conn, TableName(str(schema), configured.name))


def foreign_tool(columns: dict[str, str]) -> str | None:
    """Which tool made a table with these columns, if one we know."""
    if set(columns) == {"version", "dirty"}:
        return GOLANG_MIGRATE
    if set(columns) == {"version"}:
        return DBMATE
    return None


@dataclass(frozen=True)
class TrackingTable:
    conn: db.Connection
    name: TableName  # schema-qualified

    def __str__(self) -> str:
        return str(self.name)

    @property
    def schema(self) -> str:
        assert self.name.schema is not None  # resolve() settles it
        return self.name.schema

    @property
    def identifier(self) -> sql.Identifier:
        return sql.Identifier(self.schema, self.name.name)

    def _sql(self, template: str, **literals: Any) -> sql.Composed:
        values = {key: sql.Literal(value) for key, value in literals.items()}
        return sql.SQL(template).format(table=self.identifier, **values)

    # -- shape --------------------------------------------------------------------------------

    def columns(self) -> dict[str, str]:
        """The table's columns and types; empty when it does not exist."""
        text = self.identifier.as_string(None)
        rows = db.execute(self.conn, _COLUMNS, {"table": text}).fetchall()
        return {name: kind for name, kind in rows}

    def check_shape(self, found: dict[str, str]) -> None:
        """Refuse a table that is not this tool's tracking table; it is never rewritten."""
        wrong = {name for name, kind in COLUMNS.items() if found.get(name) != kind}
        if not found or not wrong:
            return
        shape = ", ".join(f"{name} {kind}" for name, kind in found.items())
        tool = foreign_tool(found)
        hint = f" (this looks like {tool}'s table: the adopt command takes it over)" if tool else ""
        raise ForeignTrackingTable(
            f"table {self} exists but is not this tool's tracking table{hint}: it has ({shape}); "
            "it will not be changed. Set MIGRATIONS_TABLE to another name, or move that table away"
        )

    def ensure(self) -> None:
        """Create the table (and its schema) if it is missing; refuse one of another shape."""
        found = self.columns()
        self.check_shape(found)
        if found:
            return
        if not db.execute(self.conn, _SCHEMA_EXISTS, {"name": self.schema}).fetchone():
            create = sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(self.schema))
            db.execute(self.conn, create)
        self.create()
        logs.event(logging.INFO, "tracking_table.created", f"created {self}", table=str(self))

    def create(self) -> None:
        db.execute(self.conn, self._sql(_CREATE))

    # -- rows ---------------------------------------------------------------------------------

    def rows(self) -> list[AppliedMigration]:
        """The rows, oldest version first; none when the table does not exist yet."""
        found = self.columns()
        self.check_shape(found)
        if not found:
            return []
        return [
            AppliedMigration(
                version=version,
                name=name,
                checksum=checksum,
                status=status,
                applied_at=applied_at,
                execution_ms=execution_ms,
                applied_by=applied_by,
            )
            for version, name, checksum, status, applied_at, execution_ms, applied_by in db.execute(
                self.conn, self._sql(_ROWS + " ORDER BY version")
            )
        ]

    def status_of(self, version: int) -> str | None:
        """The row's status, None when the version has no row."""
        query = self._sql("SELECT status FROM {table} WHERE version = {version}", version=version)
        row = db.execute(self.conn, query).fetchone()
        return str(row[0]) if row else None

    def insert(self, migration: Migration, *, status: str, applied_by: str) -> None:
        db.execute(
            self.conn,
            self._sql(_INSERT),
            {
                "status": status,
                "version": migration.version,
                "name": migration.name,
                "checksum": migration.up.checksum,
                "applied_by": applied_by,
            },
        )

    def record_without_running(self, migration: Migration, applied_by: str) -> None:
        """`applied`, for baseline and adopt: the schema was made by other means."""
        self.insert(migration, status=APPLIED, applied_by=applied_by)

    def mark(self, version: int, status: str, execution_ms: int) -> None:
        db.execute(
            self.conn,
            self._sql(
                "UPDATE {table} SET status = %(status)s, execution_ms = %(execution_ms)s, "
                "applied_at = now() WHERE version = %(version)s"
            ),
            {"status": status, "execution_ms": execution_ms, "version": version},
        )

    def delete(self, version: int) -> None:
        db.execute(self.conn, self.delete_statement(version))

    def update_checksum(self, version: int, checksum: str) -> None:
        db.execute(
            self.conn,
            self._sql(
                "UPDATE {table} SET checksum = {checksum} WHERE version = {version}",
                checksum=checksum,
                version=version,
            ),
        )

    # -- statements that travel inside a migration's own query ---------------------------------

    def record_statement(self, migration: Migration, applied_by: str) -> sql.Composed:
        """The `applied` row of a transactional migration, to send with its file."""
        return self._sql(
            _RECORD,
            version=migration.version,
            name=migration.name,
            checksum=migration.up.checksum,
            applied_by=applied_by,
        )

    def delete_statement(self, version: int) -> sql.Composed:
        return self._sql("DELETE FROM {table} WHERE version = {version}", version=version)

    # -- another tool's table -----------------------------------------------------------------

    def foreign_versions(self, tool: str) -> list[tuple[Any, ...]]:
        """golang-migrate's (version, dirty) or dbmate's (version, false) rows."""
        columns = "version::text, dirty" if tool == GOLANG_MIGRATE else "version::text, false"
        return db.execute(self.conn, self._sql(f"SELECT {columns} FROM {{table}}")).fetchall()

    def named(self, name: str) -> TrackingTable:
        """Another table in the same schema."""
        return TrackingTable(self.conn, TableName(self.name.schema, name))

    def rename(self, new_name: str) -> None:
        db.execute(
            self.conn,
            sql.SQL("ALTER TABLE {table} RENAME TO {new}").format(
                table=self.identifier, new=sql.Identifier(new_name)
            ),
        )
