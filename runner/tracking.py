"""The tracking table: create it, read it, recognise a table that is not ours."""

from __future__ import annotations

import logging

from runner import db, logs, sql
from runner.config import TableName
from runner.errors import ConfigError, ForeignTrackingTable
from runner.planner import AppliedMigration

GOLANG_MIGRATE = "golang-migrate"
DBMATE = "dbmate"


def resolve(conn: db.Connection, table: TableName) -> TableName:
    """The tracking table with its schema, settled once at connect: a migration's own
    `SET search_path` must not move the rows of later ones. An unqualified name lives in the
    session's current schema, where CREATE TABLE would put it."""
    if table.schema:
        return table
    row = db.execute(conn, sql.SESSION_FACTS).fetchone()
    schema = row[0] if row else None
    if not schema:
        raise ConfigError(
            "MIGRATIONS_TABLE",
            f"{table.name} has no schema and the connection's search_path names no schema that "
            "exists; set MIGRATIONS_TABLE to schema.table",
        )
    return TableName(str(schema), table.name)


def foreign_tool(columns: dict[str, str]) -> str | None:
    """Which tool made a table with these columns, if one we know."""
    if set(columns) == {"version", "dirty"}:
        return GOLANG_MIGRATE
    if set(columns) == {"version"}:
        return DBMATE
    return None


def columns(conn: db.Connection, table: TableName) -> dict[str, str]:
    """The table's columns and types; empty when it does not exist."""
    rows = db.execute(conn, sql.TABLE_COLUMNS, {"table": sql.qualified_name(table)}).fetchall()
    return {name: kind for name, kind in rows}


def check_shape(table: TableName, found: dict[str, str]) -> None:
    """Refuse a table that is not this tool's tracking table; it is never rewritten."""
    wrong = {name for name, kind in sql.TRACKING_COLUMNS.items() if found.get(name) != kind}
    if not found or not wrong:
        return
    shape = ", ".join(f"{name} {kind}" for name, kind in found.items())
    tool = foreign_tool(found)
    hint = f" (this looks like {tool}'s table: the adopt command takes it over)" if tool else ""
    raise ForeignTrackingTable(
        f"table {table} exists but is not this tool's tracking table{hint}: it has ({shape}); "
        "it will not be changed. Set MIGRATIONS_TABLE to another name, or move that table away"
    )


def ensure(conn: db.Connection, table: TableName) -> None:
    """Create the tracking table if it is missing; refuse one of another shape."""
    found = columns(conn, table)
    check_shape(table, found)
    if found:
        return
    if table.schema and not db.execute(conn, sql.SCHEMA_EXISTS, {"name": table.schema}).fetchone():
        db.execute(conn, sql.create_schema(table))
    db.execute(conn, sql.create_tracking_table(table))
    logs.event(logging.INFO, "tracking_table.created", f"created {table}", table=str(table))


def read(conn: db.Connection, table: TableName) -> list[AppliedMigration]:
    """The rows, oldest version first; none when the table does not exist yet."""
    found = columns(conn, table)
    check_shape(table, found)
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
            conn, sql.select_applied(table)
        )
    ]
