"""Two quality gates that compare schemas (runner/catalog.py), both on a scratch database.

`verify` applies every migration there and checks each down file: after up then down the
schema must be the one from before the up, and after up again the one the first up made.
`drift` replays on it what the live database says it applied, and compares the two schemas.

Files run through the runner's own Applier and TrackingTable, as `up` and `down` run them.
"""

from __future__ import annotations

import logging
import secrets
import socket
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

import psycopg
from psycopg import sql

from runner import catalog, db, logs, tracking, wait
from runner.apply import Applier
from runner.catalog import Catalog, Difference
from runner.config import ConnectionSettings, Settings, default, url_connection
from runner.errors import ConfigError, MigrationFailed, PermissionDenied
from runner.exit_codes import ExitCode
from runner.planner import (
    AppliedMigration,
    Migration,
    MigrationFile,
    content_problems,
    find_problems,
    parse_files,
)

Sleep = Callable[[float], Any]
SCRATCH_URL = "VERIFY_DATABASE_URL"  # the setting that names a scratch database to use

# The steps of one migration's check, as verify.step names them.
UP = "up"
DOWN = "down"
UP_AGAIN = "up_again"
NO_DOWN = "no_down"
# What a mismatch found.
DOWN_DID_NOT_RESTORE = "down_did_not_restore"
UP_AGAIN_DIFFERS = "up_again_differs"

_STEP_WORDS = {UP: "its up file", DOWN: "its down file", UP_AGAIN: "its up file run again"}

_LOCALE = sql.SQL(
    "SELECT pg_encoding_to_char(encoding), datcollate, datctype "
    "FROM pg_database WHERE datname = current_database()"
)
_BACKEND = sql.SQL("SELECT pg_backend_pid()")
_SEES_BACKEND = sql.SQL(
    "SELECT 1 FROM pg_stat_activity WHERE pid = %(pid)s AND datname = current_database()"
)


# -- results ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Mismatch:
    """The first migration whose down file, or whose up file run again, gave another schema."""

    version: int
    name: str
    file: str  # the down file, or the up file that ran again
    step: str  # DOWN_DID_NOT_RESTORE or UP_AGAIN_DIFFERS
    differences: tuple[Difference, ...]

    @property
    def message(self) -> str:
        if self.step == DOWN_DID_NOT_RESTORE:
            return (
                f"migration {self.version} ({self.name}): {self.file} did not restore the schema "
                "from before its up file (added: left behind by the down file; missing: not "
                "restored; changed: before the up file -> after the down file)"
            )
        return (
            f"migration {self.version} ({self.name}): {self.file}, run again after its down "
            "file, made another schema than its first run (added: only after the second run; "
            "missing: only after the first; changed: first run -> second run)"
        )

    def as_dict(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "name": self.name,
            "file": self.file,
            "step": self.step,
            "message": self.message,
            "differences": catalog.diff_as_json(self.differences),
        }


@dataclass
class VerifyReport:
    database: str  # the scratch database
    kept: bool  # it still exists: kept on request, or given by VERIFY_DATABASE_URL
    verified: list[int] = field(default_factory=list)
    unverifiable: list[int] = field(default_factory=list)  # no down file: up ran, not checked
    mismatch: Mismatch | None = None

    @property
    def exit_code(self) -> ExitCode:
        return ExitCode.CHECK_FAILED if self.mismatch else ExitCode.OK

    def render(self) -> str:
        """For people: the verdict, then one line per difference."""
        lines = []
        if self.mismatch:
            lines.append(self.mismatch.message + ":")
            lines.append(catalog.render_diff(self.mismatch.differences).rstrip("\n"))
        else:
            lines.append(f"verified {len(self.verified)} migration(s): every down file restores")
        if self.unverifiable:
            lines.append(
                "not verified, no down file: " + ", ".join(str(v) for v in self.unverifiable)
            )
        where = "kept" if self.kept else "dropped"
        lines.append(f"scratch database {self.database} ({where})")
        return "\n".join(lines) + "\n"

    def as_dict(self) -> dict[str, Any]:
        return {
            "exit_code": int(self.exit_code),
            "database": self.database,
            "kept": self.kept,
            "verified": self.verified,
            "unverifiable": self.unverifiable,
            "mismatch": self.mismatch.as_dict() if self.mismatch else None,
        }


@dataclass
class DriftReport:
    database: str  # the scratch database the applied migrations were replayed on
    replayed: list[int]  # in the order they were applied
    differences: list[Difference]  # from the replay (before) to the live database (after)

    @property
    def exit_code(self) -> ExitCode:
        return ExitCode.CHECK_FAILED if self.differences else ExitCode.OK

    def render(self) -> str:
        if not self.differences:
            return (
                f"no drift: the live schema is what its {len(self.replayed)} applied "
                "migration(s) make\n"
            )
        return (
            f"drift: {len(self.differences)} difference(s) between the live database and its "
            f"{len(self.replayed)} applied migration(s) replayed (added: only in the live "
            "database; missing: only in the replay; changed: replay -> live):\n"
            + catalog.render_diff(self.differences)
        )

    def as_dict(self) -> dict[str, Any]:
        return {
            "exit_code": int(self.exit_code),
            "database": self.database,
            "replayed": self.replayed,
            "differences": catalog.diff_as_json(self.differences),
        }


# -- verify -----------------------------------------------------------------------------------


def verify(
    settings: Settings,
    files: Sequence[MigrationFile],
    *,
    keep: bool,
    scratch_url: str | None,
    sleep: Sleep = time.sleep,
) -> VerifyReport:
    """Apply every migration on a scratch database, one at a time, checking each down file;
    stop at the first mismatch. A migration without a down file is applied and listed as
    unverifiable. A file that fails raises MigrationFailed naming the step."""
    migrations = _runnable(files)
    made = scratch_database(settings, scratch_url, purpose="verify", keep=keep, sleep=sleep)
    with made as scratch, _connected(scratch.connection, settings, sleep) as conn:
        report = VerifyReport(database=scratch.name, kept=keep or not scratch.created)
        table = tracking.resolve(conn, settings.migrations_table)
        table.ensure()
        applier = Applier(
            table,
            replace(settings, connection=scratch.connection),
            applied_by=f"verify by {conn.info.user}@{socket.gethostname()}",
            sleep=sleep,
        )
        try:
            _check_each(migrations, applier, [str(table.name)], report)
        finally:
            applier.close()
    if report.mismatch:
        logs.event(
            logging.ERROR,
            "verify.mismatch",
            report.mismatch.message,
            database=report.database,
            **{key: value for key, value in report.mismatch.as_dict().items() if key != "message"},
        )
    else:
        logs.event(
            logging.INFO,
            "verify.ok",
            f"verified {len(report.verified)} migration(s)"
            + (f", {len(report.unverifiable)} without a down file" if report.unverifiable else ""),
            database=report.database,
            kept=report.kept,
            verified=report.verified,
            unverifiable=report.unverifiable,
        )
    return report


def _check_each(
    migrations: Sequence[Migration], applier: Applier, exclude: list[str], report: VerifyReport
) -> None:
    conn = applier.conn

    def now() -> Catalog:
        return catalog.snapshot(conn, exclude_tables=exclude)

    before = now()
    for migration in migrations:
        _step(applier, migration, UP, report.database)
        after_up = now()
        if migration.down is None:
            report.unverifiable.append(migration.version)
            logs.event(
                logging.WARNING,
                "verify.step",
                f"{migration.up.filename} has no down file: applied, but not verified",
                database=report.database,
                version=migration.version,
                name=migration.name,
                file=migration.up.filename,
                step=NO_DOWN,
            )
            before = after_up
            continue
        _step(applier, migration, DOWN, report.database)
        differences = catalog.diff(before, now())
        if differences:
            report.mismatch = Mismatch(
                migration.version,
                migration.name,
                migration.down.filename,
                DOWN_DID_NOT_RESTORE,
                tuple(differences),
            )
            return
        _step(applier, migration, UP_AGAIN, report.database)
        again = now()
        differences = catalog.diff(after_up, again)
        if differences:
            report.mismatch = Mismatch(
                migration.version,
                migration.name,
                migration.up.filename,
                UP_AGAIN_DIFFERS,
                tuple(differences),
            )
            return
        report.verified.append(migration.version)
        before = again


def _step(applier: Applier, migration: Migration, step: str, database: str) -> None:
    file = migration.down if step == DOWN else migration.up
    assert file is not None
    logs.event(
        logging.INFO,
        "verify.step",
        f"verify: {file.filename}" + (" again" if step == UP_AGAIN else ""),
        database=database,
        version=migration.version,
        name=migration.name,
        file=file.filename,
        step=step,
    )
    try:
        if step == DOWN:
            applier.down(migration)
        else:
            applier.up(migration)
    except MigrationFailed as failed:
        raise MigrationFailed(
            f"verify, {_STEP_WORDS[step]}: {failed}",
            version=failed.version,
            file=failed.file,
            sqlstate=failed.sqlstate,
            line=failed.line,
            column=failed.column,
            detail=failed.detail,
            hint=failed.hint,
            context=failed.context,
        ) from None


# -- drift ------------------------------------------------------------------------------------


def drift(
    settings: Settings,
    files: Sequence[MigrationFile],
    *,
    scratch_url: str | None,
    keep: bool = False,
    sleep: Sleep = time.sleep,
) -> DriftReport:
    """Replay the migrations the live database applied (their files from disk, in the order
    they were applied) on a scratch database, and compare its schema with the live one. The
    live database is only read, in a READ ONLY transaction."""
    on_disk = {migration.version: migration for migration in parse_files(files)}
    with _connected(settings.database, settings, sleep) as live:
        with catalog.read_only(live):
            table = tracking.resolve(live, settings.migrations_table)
            tracked = bool(table.columns())
            applied = table.rows()
            actual = catalog.snapshot(live, exclude_tables=[str(table.name)])
        problems = find_problems(files, applied, allow_out_of_order=True, retry=False)
        if problems:
            raise problems[0]  # no file for a version, an edited file, a half-applied one
        replay = [on_disk[row.version] for row in sorted(applied, key=_applied_order)]
        _refuse_contents([migration.up for migration in replay])
        made = scratch_database(settings, scratch_url, purpose="drift", keep=keep, sleep=sleep)
        with made as scratch, _connected(scratch.connection, settings, sleep) as conn:
            if not scratch.created:
                _refuse_same_database(live, conn)
            expected = _replay(conn, replay, settings, scratch.connection, sleep, tracked=tracked)
    report = DriftReport(
        database=scratch.name,
        replayed=[migration.version for migration in replay],
        differences=catalog.diff(expected, actual),
    )
    if report.differences:
        logs.event(
            logging.ERROR,
            "drift.found",
            f"{len(report.differences)} difference(s) between the live schema and its applied "
            "migrations replayed",
            database=report.database,
            replayed=report.replayed,
            differences=catalog.diff_as_json(report.differences),
        )
    else:
        logs.event(
            logging.INFO,
            "drift.none",
            f"no drift: the live schema is what its {len(replay)} applied migration(s) make",
            database=report.database,
            replayed=report.replayed,
        )
    return report


def _applied_order(row: AppliedMigration) -> tuple[datetime, int]:
    return row.applied_at or datetime.min.replace(tzinfo=UTC), row.version


def _replay(
    conn: db.Connection,
    replay: Sequence[Migration],
    settings: Settings,
    scratch: ConnectionSettings,
    sleep: Sleep,
    *,
    tracked: bool,
) -> Catalog:
    """Apply `replay` in order; the tracking table (and a schema of its own) only if the live
    database has one, so that the two compare."""
    table = tracking.resolve(conn, settings.migrations_table)
    if tracked:
        table.ensure()
    if replay:
        applier = Applier(
            table,
            replace(settings, connection=scratch),
            applied_by=f"drift by {conn.info.user}@{socket.gethostname()}",
            sleep=sleep,
        )
        try:
            for migration in replay:
                applier.up(migration)
        finally:
            applier.close()
    return catalog.snapshot(conn, exclude_tables=[str(table.name)])


def _refuse_same_database(live: db.Connection, scratch: db.Connection) -> None:
    """VERIFY_DATABASE_URL must not name the live database itself: the replay writes there."""
    row = db.execute(scratch, _BACKEND).fetchone()
    if row and db.execute(live, _SEES_BACKEND, {"pid": row[0]}).fetchone():
        raise ConfigError(
            SCRATCH_URL,
            "names the configured database itself: drift replays migrations there; give it an "
            "empty database of its own",
        )


# -- the scratch database ---------------------------------------------------------------------


@dataclass(frozen=True)
class Scratch:
    name: str
    connection: ConnectionSettings
    created: bool  # made here, so dropped here unless kept; never one given by URL


@contextmanager
def scratch_database(
    settings: Settings,
    scratch_url: str | None,
    *,
    purpose: str,
    keep: bool,
    sleep: Sleep = time.sleep,
) -> Iterator[Scratch]:
    """An empty database: the one `scratch_url` names (refused unless empty; never dropped),
    or `migration_runner_{purpose}_{random hex}` made on the configured server and dropped
    at the end, whatever ends it (a signal too), unless `keep`."""
    if scratch_url:
        yield _given(settings, scratch_url, sleep)
        return
    name = f"migration_runner_{purpose}_{secrets.token_hex(8)}"
    target = replace(settings.database, params={**settings.database.params, "dbname": name})
    admin = _connect(settings.database, settings, sleep)
    made = False
    try:
        _create(admin, name)
        made = True
        yield Scratch(name, target, created=True)
    finally:
        if keep and made:
            logs.event(
                logging.INFO,
                "scratch.kept",
                f"kept the scratch database {name}; drop it with DROP DATABASE {name}",
                database=name,
                reason="asked to keep it",
            )
        elif not keep:  # even when not made: a signal may have cut CREATE DATABASE short
            _drop(admin, settings.database, name)
        admin.close()


def _given(settings: Settings, url: str, sleep: Sleep) -> Scratch:
    base = settings.connection
    target = url_connection(
        url,
        variable=SCRATCH_URL,
        connect_timeout=base.connect_timeout if base else int(default("DB_CONNECT_TIMEOUT")),
        tcp_timeout=base.tcp_timeout if base else int(default("DB_TCP_TIMEOUT")),
    )
    with _connected(target, settings, sleep) as conn:
        found = catalog.unexpected(catalog.snapshot(conn))
        name = str(conn.info.dbname)
    if found:
        shown = ", ".join(found[:5]) + (f" and {len(found) - 5} more" if len(found) > 5 else "")
        raise ConfigError(
            SCRATCH_URL,
            f"database {name} is not empty (it has {shown}): migrations are applied there, "
            "so it must be a new, empty database",
        )
    return Scratch(name, target, created=False)


def _create(admin: db.Connection, name: str) -> None:
    """From template0, whatever was added to template1, with the configured database's
    encoding and locale."""
    row = db.execute(admin, _LOCALE).fetchone()
    encoding, collate, ctype = row if row else (None, None, None)
    options = [
        sql.SQL("{} {}").format(sql.SQL(keyword), sql.Literal(value))
        for keyword, value in (("ENCODING", encoding), ("LC_COLLATE", collate), ("LC_CTYPE", ctype))
        if value
    ]
    create = sql.SQL("CREATE DATABASE {} TEMPLATE template0 {}").format(
        sql.Identifier(name), sql.SQL(" ").join(options)
    )
    try:
        db.execute(admin, create)
    except PermissionDenied:
        role = admin.info.user
        raise PermissionDenied(
            f"permission denied to create the scratch database {name}: role {role} needs "
            f"CREATEDB (ALTER ROLE {role} CREATEDB), or set {SCRATCH_URL} to an empty database "
            "it may use"
        ) from None
    except psycopg.errors.ReadOnlySqlTransaction:
        raise ConfigError(
            SCRATCH_URL,
            f"cannot create the scratch database {name}: the server is read-only (a standby?); "
            "set it to an empty database on a writable server",
        ) from None


def _drop(admin: db.Connection, settings: ConnectionSettings, name: str) -> None:
    """DROP DATABASE ... WITH (FORCE), on a new connection if the first one is gone; a drop
    that fails is logged, not raised: it must not hide why the run ended."""
    drop = sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
    try:
        if admin.closed or admin.broken:
            with db.connect(settings) as again:
                db.execute(again, drop)
        else:
            db.execute(admin, drop)
    except (psycopg.Error, PermissionDenied) as failure:
        logs.event(
            logging.WARNING,
            "scratch.kept",
            f"could not drop the scratch database {name}: {' '.join(str(failure).split())}; "
            f"drop it with DROP DATABASE {name}",
            database=name,
            reason="drop failed",
        )


# -- shared -----------------------------------------------------------------------------------


def _runnable(files: Sequence[MigrationFile]) -> list[Migration]:
    """The migrations, refused before anything is made if a file cannot run as written."""
    migrations = parse_files(files)
    _refuse_contents(
        [file for m in migrations for file in (m.up, m.down) if file is not None],
    )
    return migrations


def _refuse_contents(files: Sequence[MigrationFile]) -> None:
    problems = content_problems(files)
    if problems:
        raise problems[0]


def _connect(target: ConnectionSettings, settings: Settings, sleep: Sleep) -> db.Connection:
    return wait.wait_for_database(target, deadline=settings.wait_timeout, sleep=sleep)


@contextmanager
def _connected(
    target: ConnectionSettings, settings: Settings, sleep: Sleep
) -> Iterator[db.Connection]:
    """A connection, waited for; losing it later ends the command as DatabaseUnreachable."""
    with _connect(target, settings, sleep) as conn, db.lost_connection_reported():
        yield conn
