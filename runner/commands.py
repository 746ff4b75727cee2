"""What each command does: connect, lock, read, plan, apply. The planner decides; this acts."""

from __future__ import annotations

import json
import logging
import socket
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import IO, Any

import psycopg

from runner import db, lock, logs, migrations, sql, sqlscript, wait
from runner.config import Settings, TableName
from runner.errors import (
    DatabaseUnreachable,
    ForeignTrackingTable,
    MigrationFailed,
    MigrationSetError,
)
from runner.planner import (
    AppliedMigration,
    Migration,
    MigrationFile,
    find_problems,
    parse_files,
    plan,
)


@dataclass
class RunReport:
    """What a run did, for the run.finished line and the termination message."""

    command: str
    applied: list[int] = field(default_factory=list)
    pending: int | None = None


def up(
    settings: Settings, report: RunReport, *, sleep: Callable[[float], Any] = time.sleep
) -> None:
    """Apply every pending migration, each in its own transaction with its tracking row."""
    files = migrations.load(settings.migrations_dir)
    _check_files(files)
    table = settings.migrations_table
    with _connect(settings, sleep) as conn:
        key = lock.acquire(conn, table, timeout=settings.lock_timeout, sleep=sleep)
        ensure_tracking_table(conn, table)
        applied = read_applied(conn, table)
        todo = plan(files, applied, allow_out_of_order=settings.allow_out_of_order).pending
        report.pending = len(todo)
        logs.event(
            logging.INFO,
            "plan.ready",
            f"{len(todo)} migration(s) pending, {len(applied)} applied",
            pending=[m.version for m in todo],
            applied_count=len(applied),
        )
        applied_by = _applied_by(conn)
        for migration in todo:
            apply(conn, table, migration, applied_by=applied_by)
            report.applied.append(migration.version)
        lock.release(conn, key)


def apply(conn: db.Connection, table: TableName, migration: Migration, *, applied_by: str) -> None:
    """Run one up file and record it, in one transaction; roll both back if either fails."""
    file = migration.up
    text = migrations.decode(file)
    logs.event(
        logging.INFO,
        "migration.started",
        f"applying {file.filename}",
        version=migration.version,
        name=migration.name,
        file=file.filename,
    )
    started = time.perf_counter()
    try:
        with db.transaction(conn):
            statements = db.run_script(conn, text)
            execution_ms = round((time.perf_counter() - started) * 1000)
            db.execute(
                conn,
                sql.insert_applied(table),
                {
                    "version": migration.version,
                    "name": migration.name,
                    "checksum": file.checksum,
                    "execution_ms": execution_ms,
                    "applied_by": applied_by,
                },
            )
    except db.ScriptError as failure:
        raise _failed(migration, text, failure.error, failure.statement_index) from None
    except psycopg.OperationalError as error:
        if conn.broken or conn.closed:
            raise DatabaseUnreachable(
                f"connection lost while applying {file.filename}: {error}; run again: the "
                "tracking table tells whether it committed"
            ) from None
        raise _failed(migration, text, error, None) from None
    except psycopg.Error as error:  # e.g. a deferred constraint failing at COMMIT
        raise _failed(migration, text, error, None) from None
    logs.event(
        logging.INFO,
        "migration.applied",
        f"applied {file.filename}",
        version=migration.version,
        name=migration.name,
        file=file.filename,
        checksum=file.checksum,
        statements=statements,
        duration_ms=round((time.perf_counter() - started) * 1000),
    )


def _failed(
    migration: Migration, text: str, error: psycopg.Error, statement_index: int | None
) -> MigrationFailed:
    line = _error_line(text, error, statement_index)
    server_message = (error.diag.message_primary or str(error)).strip()
    where = f"{migration.up.filename}" + (f" line {line}" if line else "")
    return MigrationFailed(
        f"migration {migration.version} failed at {where}: {error.sqlstate or 'no SQLSTATE'}: "
        f"{server_message}; its transaction was rolled back and nothing of it remains",
        version=migration.version,
        file=migration.up.filename,
        sqlstate=error.sqlstate,
        line=line,
    )


def _error_line(text: str, error: psycopg.Error, statement_index: int | None) -> int | None:
    position = error.diag.statement_position
    if position and position.isdigit():  # 1-based, in characters of the whole script
        return sqlscript.line_of(text, int(position) - 1)
    if statement_index is None:
        return None
    statements = sqlscript.split(text)
    return statements[statement_index].line if statement_index < len(statements) else None


def status(settings: Settings, report: RunReport, out: IO[str], *, as_json: bool) -> None:
    """Every migration on disk or in the database, with its state and checksums."""
    files = migrations.load(settings.migrations_dir)
    _check_files(files)
    with _connect(settings, time.sleep) as conn:
        applied = read_applied(conn, settings.migrations_table)
    rows = status_rows(files, applied)
    report.pending = sum(1 for row in rows if row["state"] == "pending")
    if as_json:
        out.write(json.dumps({"migrations": rows}, default=str) + "\n")
        return
    out.write(f"{'VERSION':>8}  {'STATE':<8}  {'NAME':<32}  {'APPLIED AT':<25}  CHECKSUM\n")
    for row in rows:
        checksum = str(row["checksum"] or row["recorded_checksum"] or "")[:12]
        applied_at = str(row["applied_at"] or "")[:25]
        out.write(
            f"{row['version']:>8}  {row['state']:<8}  {row['name']:<32}  {applied_at:<25}  "
            f"{checksum}\n"
        )


def status_rows(
    files: Sequence[MigrationFile], applied: Sequence[AppliedMigration]
) -> list[dict[str, Any]]:
    """One row per version: applied, pending, edited, missing (from disk), running or failed."""
    on_disk = {m.version: m for m in parse_files(files)}
    in_db = {row.version: row for row in applied}
    rows = []
    for version in sorted(on_disk.keys() | in_db.keys()):
        migration, row = on_disk.get(version), in_db.get(version)
        if row is None:
            state = "pending"
        elif row.status != "applied":
            state = row.status
        elif migration is None:
            state = "missing"
        elif migration.up.checksum != row.checksum:
            state = "edited"
        else:
            state = "applied"
        rows.append(
            {
                "version": version,
                "name": migration.name if migration else row.name if row else "",
                "state": state,
                "file": migration.up.filename if migration else None,
                "checksum": migration.up.checksum if migration else None,
                "recorded_checksum": row.checksum if row else None,
                "applied_at": row.applied_at.isoformat() if row and row.applied_at else None,
                "execution_ms": row.execution_ms if row else None,
                "applied_by": row.applied_by if row else None,
            }
        )
    return rows


def show_plan(settings: Settings, report: RunReport, out: IO[str], *, as_json: bool) -> None:
    """What `up` would run now, without running it or taking the lock."""
    files = migrations.load(settings.migrations_dir)
    _check_files(files)
    with _connect(settings, time.sleep) as conn:
        applied = read_applied(conn, settings.migrations_table)
    pending = plan(files, applied, allow_out_of_order=settings.allow_out_of_order).pending
    report.pending = len(pending)
    entries = [
        {"version": m.version, "name": m.name, "file": m.up.filename, "checksum": m.up.checksum}
        for m in pending
    ]
    if as_json:
        out.write(json.dumps({"pending": entries}) + "\n")
    elif not entries:
        out.write("nothing to apply: the database is up to date\n")
    else:
        for entry in entries:
            out.write(f"would apply {entry['file']}\n")


def validate(settings: Settings, report: RunReport, *, offline: bool) -> None:
    """Report every problem (exit 66) without changing anything; offline: the files only."""
    files = migrations.load(settings.migrations_dir)
    applied: list[AppliedMigration] = []
    if not offline:
        with _connect(settings, time.sleep) as conn:
            applied = read_applied(conn, settings.migrations_table)
    problems = find_problems(files, applied, allow_out_of_order=settings.allow_out_of_order)
    for problem in problems:
        logs.event(logging.ERROR, "validate.problem", str(problem), **problem.fields())
    if problems:
        raise problems[0]
    logs.event(
        logging.INFO,
        "validate.ok",
        f"{len(files)} migration file(s) valid" + ("" if offline else " against the database"),
        files=len(files),
        applied_count=len(applied),
    )


def wait_only(settings: Settings, *, sleep: Callable[[float], Any] = time.sleep) -> None:
    """Wait until the database accepts a connection, then close it."""
    assert settings.connection is not None
    wait.wait_for_database(settings.connection, deadline=settings.wait_timeout, sleep=sleep).close()


def ensure_tracking_table(conn: db.Connection, table: TableName) -> None:
    """Create the tracking table if missing; refuse one of another shape (never rewrite it)."""
    if _tracking_columns(conn, table):
        return
    if table.schema:
        db.execute(conn, sql.create_schema(table))
    db.execute(conn, sql.create_tracking_table(table))
    logs.event(logging.INFO, "tracking_table.created", f"created {table}", table=str(table))


def read_applied(conn: db.Connection, table: TableName) -> list[AppliedMigration]:
    """The tracking table's rows; none when it does not exist yet."""
    if not _tracking_columns(conn, table):
        return []
    return [
        AppliedMigration(
            version=version,
            name=name,
            checksum=checksum,
            status=state,
            applied_at=applied_at,
            execution_ms=execution_ms,
            applied_by=applied_by,
        )
        for version, name, checksum, state, applied_at, execution_ms, applied_by in db.execute(
            conn, sql.select_applied(table)
        )
    ]


def _tracking_columns(conn: db.Connection, table: TableName) -> dict[str, str]:
    """The existing table's columns; ForeignTrackingTable when they are not ours."""
    found: dict[str, str] = dict(
        db.execute(conn, sql.TABLE_COLUMNS, {"table": sql.qualified_name(table)}).fetchall()
    )
    if not found:
        return {}
    wrong = {name: kind for name, kind in sql.TRACKING_COLUMNS.items() if found.get(name) != kind}
    if wrong:
        shape = ", ".join(f"{name} {kind}" for name, kind in found.items())
        hint = ""
        if set(found) == {"version", "dirty"}:
            hint = " (this looks like golang-migrate's table)"
        elif set(found) == {"version"}:
            hint = " (this looks like dbmate's table)"
        raise ForeignTrackingTable(
            f"table {table} exists but is not this tool's tracking table{hint}: it has "
            f"({shape}); it will not be changed. Set MIGRATIONS_TABLE to another name, or "
            "move that table away"
        )
    return found


def _check_files(files: Sequence[MigrationFile]) -> None:
    """Refuse bad names, duplicates and orphan down files before connecting."""
    problems = [p for p in find_problems(files, []) if isinstance(p, MigrationSetError)]
    if problems:
        raise problems[0]


def _connect(settings: Settings, sleep: Callable[[float], Any]) -> db.Connection:
    assert settings.connection is not None
    return wait.wait_for_database(settings.connection, deadline=settings.wait_timeout, sleep=sleep)


def _applied_by(conn: db.Connection) -> str:
    row = db.execute(conn, sql.SESSION_INFO).fetchone()
    user = row[0] if row else "unknown"
    return f"{user}@{socket.gethostname()}"
