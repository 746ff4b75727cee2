"""An index that a failed `CREATE INDEX CONCURRENTLY` left invalid: found, and dropped before
the statement runs again."""

from __future__ import annotations

from psycopg import sql

from runner import db

# An index named `name` in the schema of `table`, and whether it is valid.
_VALIDITY = sql.SQL(
    """SELECT n.nspname, i.indisvalid
FROM pg_class c
JOIN pg_index i ON i.indexrelid = c.oid
JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.relname = %(name)s
  AND c.relnamespace = (SELECT relnamespace FROM pg_class WHERE oid = to_regclass(%(table)s))"""
)


def _validity(conn: db.Connection, name: str, table: str) -> tuple[str, bool] | None:
    row = db.execute(conn, _VALIDITY, {"name": name, "table": table}).fetchone()
    return (str(row[0]), bool(row[1])) if row else None


def drop_if_invalid(conn: db.Connection, name: str, table: str) -> str | None:
    """Drop index `name` (in the schema of `table`) when it exists and is invalid; returns its
    qualified name when it did."""
    found = _validity(conn, name, table)
    if found is None or found[1]:
        return None
    schema = found[0]
    db.execute(
        conn,
        sql.SQL("DROP INDEX CONCURRENTLY IF EXISTS {}").format(sql.Identifier(schema, name)),
    )
    return f"{schema}.{name}"


def is_valid(conn: db.Connection, name: str, table: str) -> bool:
    found = _validity(conn, name, table)
    return found is not None and found[1]
