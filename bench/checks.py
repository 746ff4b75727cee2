"""Checks of a database after a run (every migration exactly once, and its rows), and the
excerpts of a failing tool's log that explain why."""

from __future__ import annotations

import contextlib
import re
from pathlib import Path

import psycopg
from psycopg import sql

from bench.context import TOOL, Context
from bench.databases import MigrationSet
from bench.procs import Sample


def tables_named(ctx: Context, database: str, prefix: str) -> int:
    rows = ctx.server.query(
        database,
        sql.SQL(
            "SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE c.relkind = 'r' AND n.nspname = 'public' AND c.relname LIKE {}"
        ).format(sql.Literal(prefix.replace("_", r"\_") + "%")),
    )
    return int(rows[0][0])


def runner_versions(ctx: Context, database: str) -> tuple[int, int]:
    """(rows, distinct applied versions) of the runner's tracking table; (-1, -1) when there is
    none (a runner that failed before it created it)."""
    try:
        rows = ctx.server.query(
            database,
            sql.SQL(
                "SELECT count(*), count(DISTINCT version) FILTER (WHERE status = 'applied') "
                "FROM schema_migrations"
            ),
        )
    except psycopg.errors.UndefinedTable:
        return -1, -1
    return int(rows[0][0]), int(rows[0][1])


def dbmate_versions(ctx: Context, database: str) -> int:
    try:
        rows = ctx.server.query(database, sql.SQL("SELECT count(*) FROM schema_migrations"))
    except psycopg.Error:
        return -1
    return int(rows[0][0])


def check_result(
    ctx: Context,
    tool: str,
    database: str,
    mset: MigrationSet,
    prefix: str,
    sample: Sample,
    *,
    strict: bool,
    log: Path | None = None,
) -> str:
    """Verify the database holds every migration exactly once. A failure of this project or of
    the psql floor is a correctness error (exit 1); dbmate's is only noted."""
    want = mset.count
    problems = []
    if sample.failures:
        codes = sorted({code for code in sample.exit_codes if code})
        problems.append(
            f"{sample.failures}/{len(sample.exit_codes)} process(es) exited non-zero "
            f"(exit codes {', '.join(map(str, codes))})"
        )
        if strict and log is not None:
            problems.append(f"first errors in {log.name}: {failure_excerpt(log)}")
    tables = tables_named(ctx, database, prefix)
    if tables != want:
        problems.append(f"{tables} {prefix}* tables instead of {want}")
    for table, rows in mset.expected_rows.items() if tables == want else ():
        count = ctx.server.query(
            database, sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(table))
        )[0][0]
        if count != rows:
            problems.append(f"{count:,} rows in {table} instead of {rows:,}")
    if tool.startswith(TOOL):
        recorded, distinct = runner_versions(ctx, database)
        if (recorded, distinct) != (want, want):
            problems.append(f"{recorded} tracking rows ({distinct} applied) instead of {want}")
    elif tool.startswith("dbmate"):
        recorded = dbmate_versions(ctx, database)
        if recorded != want:
            problems.append(f"{recorded} dbmate schema_migrations rows instead of {want}")
    text = "; ".join(problems)
    if text and strict:
        ctx.expect(False, f"{tool} on {database}: {text} (logs in {ctx.logs})")
    return text


def failure_excerpt(log: Path, limit: int = 2) -> str:
    """The first error lines of a log (the runner's JSON ERROR lines, or any non-JSON text
    such as a traceback), so that a failure can be understood without --keep-logs."""
    found: list[str] = []
    with contextlib.suppress(OSError):
        for line in log.read_text(encoding="utf-8", errors="replace").splitlines():
            if '"log.level": "ERROR"' in line or (line.strip() and not line.startswith("{")):
                found.append(line.strip()[:400])
                if len(found) >= limit:
                    break
    return " | ".join(found) or "(none)"


def error_summary(log: Path) -> str:
    """The distinct `Error:` lines of a dbmate log, table names folded, with counts."""
    counts: dict[str, int] = {}
    with contextlib.suppress(OSError):
        for line in log.read_text(encoding="utf-8", errors="replace").splitlines():
            if line.startswith("Error:"):
                text = re.sub(r"r_\d+", "r_N", line.removeprefix("Error:").strip())
                counts[text] = counts.get(text, 0) + 1
    return ", ".join(f"{n}x {text}" for text, n in sorted(counts.items(), key=lambda i: -i[1]))
