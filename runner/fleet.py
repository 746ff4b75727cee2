"""Fleets: one command over many databases and schemas, named by TARGETS_FILE or TARGETS_QUERY.

Each target runs the command as a run on one database would, with its own settings (its
connection, its tracking table and so its lock, its placeholder values), on a bounded pool of
threads. Every target's result is a `target.finished` event; the run ends with one
`fleet.finished` and exits with the most severe target's code (exit_codes.SEVERITY)."""

from __future__ import annotations

import argparse
import concurrent.futures
import io
import json
import logging
import re
import signal
import threading
import time
from collections import Counter, deque
from collections.abc import Collection, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import IO, TYPE_CHECKING

import psycopg

if TYPE_CHECKING:
    from concurrent.futures import Future, ThreadPoolExecutor
from psycopg import sql

from runner import commands, db, durability, logs, migrations, placeholders, stopping, wait
from runner.apply import QUERY_CANCELED
from runner.config import (
    ConnectionSettings,
    FleetSettings,
    Settings,
    TableName,
    table_name,
    url_connection,
)
from runner.errors import (
    ConfigError,
    FleetFailed,
    Interrupted,
    MigrationFailed,
    MigrationSetError,
    PermissionDenied,
    RunnerError,
    exit_code_for,
)
from runner.exit_codes import SEVERITY, ExitCode, most_severe
from runner.planner import APPLIED, AppliedMigration, MigrationFile, find_problems, parse_files

# What runs on a fleet. These change one database in ways a person picks per database.
FLEET_COMMANDS = frozenset({"up", "status", "plan", "validate", "await"})
ONE_AT_A_TIME = frozenset({"down", "goto", "baseline", "repair", "adopt"})
KINDS = ("url", "url_file", "database", "schema")
FILE_FIELDS = frozenset({"name", "migrations_table", *KINDS})
QUERY_FIELDS = frozenset({"name", "migrations_table", "url", "database", "schema"})
DEFAULT_TABLE = "schema_migrations"
MAX_NAME = 200
LOGGED_NAMES = 1000  # failed targets named in fleet.finished; each has its target.finished
NAMED_IN_ERROR = 5
OFFLINE_SCHEMA = "tenant"  # what ${schema} stands for in `validate --offline`
OUTCOMES = ("succeeded", "up_to_date", "failed", "interrupted", "not_started")

# ${schema} is written into the SQL as it is: a name that reads the same quoted or not.
_PLAIN = re.compile(r"[a-z_][a-z0-9_]{0,62}")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
# The tracking table's rows, and the schema the name found them in (an unqualified name must
# resolve where `tracking.resolve` puts it: the current schema).
_APPLIED = (
    "SELECT t.version, t.name, t.checksum, t.status, n.nspname, current_schema() "
    "FROM {table} t JOIN pg_class c ON c.oid = t.tableoid "
    "JOIN pg_namespace n ON n.oid = c.relnamespace"
)
_READ_ONLY = sql.SQL("SET TRANSACTION READ ONLY")


@dataclass(frozen=True)
class Target:
    name: str
    kind: str  # schema, database or url
    settings: Settings  # the run's, with this target's connection, table and placeholders


@dataclass(frozen=True)
class Result:
    code: ExitCode
    outcome: str
    applied: tuple[int, ...] = ()
    duration_ms: int = 0
    output: str = ""


def run(
    arguments: argparse.Namespace,
    settings: Settings,
    report: commands.RunReport,
    out: IO[str],
) -> None:
    """The command, on every target of the fleet; on the one database when there is none."""
    fleet = settings.fleet
    command: str = arguments.command
    if fleet is not None and command in ONE_AT_A_TIME:
        raise ConfigError(
            fleet.source,
            f"`{command}` works on one database at a time, not on a fleet: unset {fleet.source} "
            "and point DATABASE_URL at the database",
        )
    if fleet is None or command not in FLEET_COMMANDS:
        arguments.run(arguments, settings, report, out)
    elif command == "validate" and arguments.offline:
        schema = {placeholders.SCHEMA: OFFLINE_SCHEMA}
        files_only = replace(settings, placeholders={**(settings.placeholders or {}), **schema})
        arguments.run(arguments, files_only, report, out)
    else:
        _Fleet(arguments, settings, fleet, report).run(out)


# -- the targets ------------------------------------------------------------------------------


def targets_from_file(path: Path, settings: Settings) -> list[Target]:
    """TARGETS_FILE: a YAML (or, named *.json, JSON) list of targets."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as error:
        raise ConfigError("TARGETS_FILE", f"cannot read {path}: {error.strerror}") from None
    except UnicodeDecodeError:
        raise ConfigError("TARGETS_FILE", f"{path} is not UTF-8 text") from None
    if path.suffix.lower() == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as error:
            raise ConfigError(
                "TARGETS_FILE", f"{path}: line {error.lineno}: not valid JSON: {error.msg}"
            ) from None
    else:
        import yaml  # only a fleet pays for the import: every run's start-up is measured

        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as error:
            mark = getattr(error, "problem_mark", None)
            at = f"line {mark.line + 1}: " if mark else ""
            why = getattr(error, "problem", None) or error
            raise ConfigError("TARGETS_FILE", f"{path}: {at}not valid YAML: {why}") from None
    if not isinstance(data, list):
        raise ConfigError(
            "TARGETS_FILE",
            f"{path}: expected a list of targets, each with a name and one of url, url_file, "
            f"database or schema; got {type(data).__name__}",
        )
    entries = [(f"{path}: entry {number}", entry) for number, entry in enumerate(data, 1)]
    return _targets("TARGETS_FILE", entries, settings, FILE_FIELDS, path.parent)


def targets_from_query(conn: db.Connection, query: str, settings: Settings) -> list[Target]:
    """TARGETS_QUERY: its rows, read in a read-only transaction on the main database."""
    try:
        with conn.transaction():
            db.execute(conn, _READ_ONLY)
            cursor = db.execute(conn, query.encode())
            columns = [column.name for column in cursor.description or ()]
            rows = cursor.fetchall() if columns else []
    except psycopg.OperationalError:
        raise  # the connection is lost: 69, not the query's fault
    except psycopg.Error as error:
        message = " ".join((error.diag.message_primary or str(error)).split())
        raise ConfigError(
            "TARGETS_QUERY", f"the query failed: {error.sqlstate or 'no SQLSTATE'}: {message}"
        ) from None
    if "name" not in columns:
        raise ConfigError(
            "TARGETS_QUERY",
            "expected rows with a name column and one of schema, database or url; got "
            + (f"columns {', '.join(columns)}" if columns else "no rows (not a SELECT?)"),
        )
    entries = [
        (f"TARGETS_QUERY row {number}", dict(zip(columns, row, strict=True)))
        for number, row in enumerate(rows, 1)
    ]
    return _targets("TARGETS_QUERY", entries, settings, QUERY_FIELDS, Path())


def shard(targets: Sequence[Target], index: int, shards: int) -> list[Target]:
    """The index-th of `shards` contiguous runs of the targets (in name order), whose sizes
    differ by one at most: every target in exactly one shard."""
    count = len(targets)
    return list(targets[index * count // shards : (index + 1) * count // shards])


def _targets(
    source: str,
    entries: Sequence[tuple[str, object]],
    settings: Settings,
    fields: Collection[str],
    base: Path,
) -> list[Target]:
    """The targets, sorted by name; each entry checked, a duplicate refused."""
    targets: list[Target] = []
    taken: dict[tuple[str, str], str] = {}
    for where, entry in entries:
        target = _target(source, where, entry, settings, fields, base)
        found = [("name", target.name)]
        if target.kind == "schema":
            found.append(("schema", (target.settings.placeholders or {})[placeholders.SCHEMA]))
            found.append(("tracking table", str(target.settings.migrations_table)))
        elif target.kind == "database":
            found.append(("database", target.settings.database.params["dbname"]))
        for key in found:
            if key in taken:
                raise ConfigError(
                    source,
                    f"{where} ({target.name}): the {key[0]} {key[1]!r} is also {taken[key]}'s",
                )
            taken[key] = f"{where} ({target.name})"
        targets.append(target)
    return sorted(targets, key=lambda target: target.name)


def _target(
    source: str,
    where: str,
    entry: object,
    settings: Settings,
    fields: Collection[str],
    base: Path,
) -> Target:
    kinds = [kind for kind in KINDS if kind in fields]
    if not isinstance(entry, Mapping):
        raise ConfigError(
            source,
            f"{where}: expected a name and one of {', '.join(kinds)}; got {type(entry).__name__}",
        )
    name = entry.get("name")
    if not isinstance(name, str) or not name.strip() or _CONTROL.search(name):
        raise ConfigError(
            source, f"{where}: name: expected text without control characters; got {name!r}"
        )
    where = f"{where} ({name[:MAX_NAME]})"
    if len(name) > MAX_NAME:
        raise ConfigError(source, f"{where}: name: longer than {MAX_NAME} characters")
    unknown = sorted(str(key) for key in entry if key not in fields)
    if unknown:
        raise ConfigError(
            source,
            f"{where}: unknown field(s) {', '.join(unknown)}; the fields are "
            f"{', '.join(sorted(fields))}",
        )
    given = [kind for kind in kinds if entry.get(kind) is not None]
    if len(given) != 1:
        raise ConfigError(
            source,
            f"{where}: expected exactly one of {', '.join(kinds)}; got "
            + (", ".join(given) if given else "none"),
        )
    kind = given[0]
    value, table = entry[kind], entry.get("migrations_table")
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(source, f"{where}: {kind}: expected text; got {type(value).__name__}")
    if table is not None and not isinstance(table, str):
        raise ConfigError(
            source, f"{where}: migrations_table: expected text; got {type(table).__name__}"
        )
    try:
        own = _settings(kind, value.strip(), table, settings, base)
    except ConfigError as error:
        raise ConfigError(source, f"{where}: {error.variable}: {error.problem}") from None
    return Target(name=name, kind="url" if kind == "url_file" else kind, settings=own)


def _settings(kind: str, value: str, table: str | None, settings: Settings, base: Path) -> Settings:
    """The run's settings, made this target's: connection, tracking table, placeholders."""
    declared = dict(settings.placeholders or {})
    tracking = table_name(table, "migrations_table") if table else None
    if kind == "schema":
        _refuse_unplain(value)
        tracking = tracking or TableName(value, DEFAULT_TABLE)
        if tracking.schema is None:  # a table named without a schema goes in the target's
            tracking = TableName(value, tracking.name)
        return replace(
            settings,
            connection=_main(settings, kind),
            migrations_table=tracking,
            placeholders={**declared, placeholders.SCHEMA: value},
            fleet=None,
        )
    if kind == "database":
        main = _main(settings, kind)
        connection = replace(main, params={**main.params, "dbname": value})
    else:
        assert settings.fleet is not None
        url = _read_url(base / value) if kind == "url_file" else value
        connection = url_connection(
            url,
            connect_timeout=settings.fleet.connect_timeout,
            tcp_timeout=settings.fleet.tcp_timeout,
        )
        if connection.password:
            logs.add_secret(connection.password)
    return replace(
        settings,
        connection=connection,
        migrations_table=tracking or settings.migrations_table,
        placeholders=declared,
        fleet=None,
    )


def _main(settings: Settings, kind: str) -> ConnectionSettings:
    if settings.connection is None:
        raise ConfigError(
            "DATABASE_URL",
            f"a {kind} target is on the main server: set DATABASE_URL (or DB_HOST)",
        )
    return settings.connection


def _read_url(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8").removesuffix("\n").removesuffix("\r")
    except OSError as error:
        raise ConfigError("url_file", f"cannot read {path}: {error.strerror}") from None
    except UnicodeDecodeError:
        raise ConfigError("url_file", f"{path} is not UTF-8 text") from None


def _refuse_unplain(schema: str) -> None:
    from pglast import keywords  # only a fleet of schemas pays for pglast's import

    reserved = keywords.RESERVED_KEYWORDS | keywords.TYPE_FUNC_NAME_KEYWORDS
    if _PLAIN.fullmatch(schema) and schema not in reserved and not schema.startswith("pg_"):
        return
    raise ConfigError(
        "schema",
        f"{schema!r} is not a plain identifier: ${{schema}} is written into the SQL as it "
        "is, so a schema target's schema must be lowercase letters, digits and _, not "
        "starting with a digit or pg_, at most 63 characters, and not a reserved word",
    )


# -- the shortcut of a re-run -----------------------------------------------------------------


def applied_rows(conn: db.Connection, table: TableName) -> list[AppliedMigration] | None:
    """The tracking table's rows, in one query, without the lock; None when this cannot tell
    (no table yet, another shape, a name that resolves elsewhere): `up` then finds out."""
    name = sql.Identifier(table.schema, table.name) if table.schema else sql.Identifier(table.name)
    try:
        rows = db.execute(conn, sql.SQL(_APPLIED).format(table=name)).fetchall()
    except (
        psycopg.errors.UndefinedTable,
        psycopg.errors.UndefinedColumn,
        psycopg.errors.InvalidSchemaName,
        PermissionDenied,
    ):
        return None
    if any(found != (table.schema or current) for *_, found, current in rows):
        return None
    return [
        AppliedMigration(version=version, name=name, checksum=checksum, status=status)
        for version, name, checksum, status, _, _ in rows
    ]


def up_to_date(
    files: Sequence[MigrationFile], rows: Sequence[AppliedMigration], settings: Settings
) -> bool:
    """Every file applied, unchanged, and nothing else in the way: what `up` would skip."""
    if commands.set_problems(files, rows, settings):
        return False
    done = {row.version for row in rows if row.status == APPLIED}
    return all(migration.version in done for migration in parse_files(files, strict=False))


def _cancelled(failure: Exception) -> bool:
    """A statement cancelled (57014): a migration's, or one of the runner's own."""
    if isinstance(failure, MigrationFailed):
        return failure.sqlstate == QUERY_CANCELED
    return isinstance(failure, psycopg.errors.QueryCanceled)


# -- the termination message ------------------------------------------------------------------


def trim(summary: dict[str, object], excess: int) -> bool:
    """Drop failed targets' names from the end of a summary's fleet part until about `excess`
    bytes are gone; the counts stay. False when no name is left to drop."""
    fleet = summary.get("fleet")
    if not isinstance(fleet, dict):
        return False
    names = fleet.get("failed_targets")
    if not isinstance(names, list) or not names:
        return False
    kept = list(names)
    dropped = 0
    while kept and dropped < excess:
        dropped += len(json.dumps(kept.pop()).encode()) + 2
    omitted = fleet.get("failed_targets_omitted")
    summary["fleet"] = {
        **fleet,
        "failed_targets": kept,
        "failed_targets_omitted": (omitted if isinstance(omitted, int) else 0)
        + len(names)
        - len(kept),
    }
    return True


# -- running ----------------------------------------------------------------------------------


class _Fleet:
    """One fleet run: its targets, the pool that runs them, and what each one gave."""

    def __init__(
        self,
        arguments: argparse.Namespace,
        settings: Settings,
        fleet: FleetSettings,
        report: commands.RunReport,
    ) -> None:
        self.arguments = arguments
        self.command: str = arguments.command
        self.settings = settings
        self.fleet = fleet
        self.report = report
        self.stop = stopping.Stop()
        self.lock = threading.Lock()
        self.queue: deque[Target] = deque()
        self.results: dict[str, Result] = {}
        self.failures = 0
        self.halted: str | None = None  # canary or max_failures: no new target starts
        self.pools: list[ThreadPoolExecutor] = []
        self.files: list[MigrationFile] = []

    def run(self, out: IO[str]) -> None:
        with logs.target(""):
            self._run(out)

    def _run(self, out: IO[str]) -> None:
        started = time.perf_counter()
        self.files = self._files()
        targets = self._targets()
        with stopping.active(self.stop):
            try:
                if self.command == "up":
                    self._skip_up_to_date(targets)
                self._run_all(targets)
            except KeyboardInterrupt:
                self._stopping()
                for pool in self.pools:
                    pool.shutdown(wait=True)
        self._write(out, targets)
        self._finish(targets, started)

    # -- before any target runs ---------------------------------------------------------------

    def _files(self) -> list[MigrationFile]:
        """The files as written, refused before any target runs if no target could run them:
        a placeholder no target has, and for the commands that refuse it, a bad set."""
        files = migrations.load(self.settings.migrations_dir)
        migrations.require_some(
            files, self.settings.migrations_dir, allow_empty=self.settings.allow_empty
        )
        placeholders.check(files, {*(self.settings.placeholders or {}), placeholders.SCHEMA})
        if self.command in ("up", "plan", "await"):
            problems = [p for p in find_problems(files, []) if isinstance(p, MigrationSetError)]
            if problems:
                raise problems[0]
        return files

    def _targets(self) -> list[Target]:
        if self.fleet.targets_file is not None:
            targets = targets_from_file(self.fleet.targets_file, self.settings)
        else:
            assert self.fleet.targets_query is not None
            with self._connect() as conn:
                targets = targets_from_query(conn, self.fleet.targets_query, self.settings)
        other = next((target for target in targets if target.kind != "schema"), None)
        if other is not None:
            placeholders.check(
                self.files,
                set(self.settings.placeholders or {}),
                why=f"${{schema}} has a value for schema targets only, and {other.name} is a "
                f"{other.kind} target",
            )
        if self.fleet.shard is not None:
            targets = shard(targets, *self.fleet.shard)
        return targets

    @contextmanager
    def _connect(self) -> Iterator[db.Connection]:
        """The main database (DATABASE_URL), for the targets query and the re-run shortcut."""
        with (
            wait.wait_for_database(
                self.settings.database, deadline=self.settings.wait_timeout
            ) as conn,
            db.lost_connection_reported(),
        ):
            yield conn

    def _skip_up_to_date(self, targets: Sequence[Target]) -> None:
        """The schema targets whose every file is applied are done: one query each on one
        connection, and no lock. The others' threads look for themselves (`_done_already`)."""
        schemas = [target for target in targets if target.kind == "schema"]
        if not schemas:
            return
        done: list[Target] = []
        with self._connect() as conn:
            for target in schemas:
                with logs.target(target.name):
                    rows = applied_rows(conn, target.settings.migrations_table)
                if rows is not None and up_to_date(self.files, rows, target.settings):
                    done.append(target)
            if done:
                durability.make_durable(conn)  # reported applied: on disk first
        for target in done:
            with logs.target(target.name):
                self._record(target, Result(ExitCode.OK, "up_to_date"), None)

    # -- the pool -----------------------------------------------------------------------------

    def _run_all(self, targets: Sequence[Target]) -> None:
        canary = list(targets[: self.fleet.canary])
        for group in (canary, list(targets[len(canary) :])):
            self._run_group(group)
            if group is canary and any(
                self.results[target.name].code != ExitCode.OK
                for target in canary
                if target.name in self.results
            ):
                self.halted = self.halted or "canary"
            if self.halted or self.stop.is_set():
                return

    def _run_group(self, targets: Sequence[Target]) -> None:
        todo = [target for target in targets if target.name not in self.results]
        if not todo:
            return
        with self.lock:
            self.queue.extend(todo)
        workers = min(self.fleet.concurrency, len(todo))
        from concurrent.futures import ThreadPoolExecutor  # only a fleet runs threads

        pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="target")
        self.pools.append(pool)
        futures = [pool.submit(self._work) for _ in range(workers)]
        self._wait(futures)
        pool.shutdown(wait=True)

    def _wait(self, futures: Sequence[Future[None]]) -> None:
        while True:
            try:
                concurrent.futures.wait(futures)
            except KeyboardInterrupt:
                self._stopping()
                continue
            for future in futures:
                future.result()  # a bug in the pool itself: exit 70
            return

    def _stopping(self) -> None:
        """A signal: no new target starts, and the running ones' statements are cancelled."""
        if not self.stop.is_set():
            self.stop.request(signal.SIGINT)  # no handler installed: Python's own Ctrl-C
        self.stop.cancel()

    def _work(self) -> None:
        while (target := self._next()) is not None:
            with logs.target(target.name):
                self._run_target(target)

    def _next(self) -> Target | None:
        with self.lock:
            if self.stop.is_set() or self.halted or not self.queue:
                return None
            return self.queue.popleft()

    def _run_target(self, target: Target) -> None:
        started = time.perf_counter()
        report = commands.RunReport(command=self.command)
        out = io.StringIO()
        error: BaseException | None = None
        with self.stop.scope():
            try:
                stopping.check()
                if not (
                    self.command == "up" and target.kind != "schema" and self._done_already(target)
                ):
                    self.arguments.run(self.arguments, target.settings, report, out)
            except KeyboardInterrupt:
                error = Interrupted(self.stop.signal or signal.SIGINT, report.in_flight)
            except Exception as failure:
                error = failure
                if self.stop.is_set() and _cancelled(failure):  # the stop cancelled it
                    error = Interrupted(self.stop.signal or signal.SIGINT, str(failure))
                elif not isinstance(failure, RunnerError):
                    logs.logger.exception(
                        "internal error",
                        extra={"event": "run.crashed", "fields": {"target": target.name}},
                    )
        code = exit_code_for(error) if error else ExitCode.OK
        if code in (ExitCode.INTERRUPTED, ExitCode.TERMINATED):
            outcome = "interrupted"
        elif code != ExitCode.OK:
            outcome = "failed"
        elif self.command == "up" and not report.applied:
            outcome = "up_to_date"
        else:
            outcome = "succeeded"
        duration_ms = round((time.perf_counter() - started) * 1000)
        result = Result(code, outcome, tuple(report.applied), duration_ms, out.getvalue())
        self._record(target, result, error)

    def _done_already(self, target: Target) -> bool:
        """A database or URL target's own look at its tracking table: one query, no lock."""
        with (
            wait.wait_for_database(
                target.settings.database, deadline=self.settings.wait_timeout
            ) as conn,
            db.lost_connection_reported(),
        ):
            rows = applied_rows(conn, target.settings.migrations_table)
            if rows is None or not up_to_date(self.files, rows, target.settings):
                return False
            durability.make_durable(conn)
            return True

    def _record(self, target: Target, result: Result, error: BaseException | None) -> None:
        """Log the target's end (in its log context) and count it."""
        if isinstance(error, RunnerError):
            logs.event(
                logging.ERROR,
                error.event,
                str(error),
                error_type=type(error).__name__,
                **error.fields(),
            )
        logs.event(
            logging.INFO if result.code == ExitCode.OK else logging.ERROR,
            "target.finished",
            f"{target.name}: {result.outcome.replace('_', ' ')} (exit code {int(result.code)})",
            outcome=result.outcome,
            exit_code=int(result.code),
            applied=list(result.applied),
            duration_ms=result.duration_ms,
            error=str(error) if error else None,
        )
        with self.lock:
            self.results[target.name] = result
            if result.outcome == "failed":
                self.failures += 1
                if self.fleet.max_failures and self.failures >= self.fleet.max_failures:
                    self.halted = self.halted or "max_failures"

    # -- the end ------------------------------------------------------------------------------

    def _write(self, out: IO[str], targets: Sequence[Target]) -> None:
        """What each target printed (status, plan), in name order."""
        done = [
            (target.name, self.results[target.name])
            for target in targets
            if target.name in self.results
        ]
        if not any(result.output for _, result in done):
            return
        if getattr(self.arguments, "json", False):
            document = [
                {
                    "name": name,
                    "exit_code": int(result.code),
                    "result": json.loads(result.output) if result.output else None,
                }
                for name, result in done
            ]
            out.write(json.dumps({"targets": document}, default=str) + "\n")
            return
        for name, result in done:
            if result.output:
                out.write(f"== {name} ==\n{result.output}")

    def _finish(self, targets: Sequence[Target], started: float) -> None:
        results = dict(self.results)
        outcomes = Counter(result.outcome for result in results.values())
        outcomes["not_started"] = sum(1 for target in targets if target.name not in results)
        codes = [result.code for result in results.values()]
        stopped_by = self.halted
        if self.stop.signal is not None and (outcomes["not_started"] or outcomes["interrupted"]):
            stopped_by = f"signal {self.stop.signal}"
            codes.append(exit_code_for(Interrupted(self.stop.signal)))
        code = most_severe(codes)
        failed = sorted(
            (name for name, result in results.items() if result.code != ExitCode.OK),
            key=lambda name: (SEVERITY.index(results[name].code), name),
        )
        counts = {outcome: outcomes[outcome] for outcome in OUTCOMES if outcomes[outcome]}
        summary: dict[str, object] = {
            "targets": len(targets),
            "outcomes": counts,
            "exit_codes": dict(
                Counter(str(int(results[name].code)) for name in failed).most_common()
            ),
            "migrations_applied": sum(len(result.applied) for result in results.values()),
            "stopped_by": stopped_by,
            "shard": f"{self.fleet.shard[0]}/{self.fleet.shard[1]}" if self.fleet.shard else None,
            "failed_targets": failed[:LOGGED_NAMES],
        }
        if len(failed) > LOGGED_NAMES:
            summary["failed_targets_omitted"] = len(failed) - LOGGED_NAMES
        self.report.fleet = summary
        said = ", ".join(f"{n} {outcome.replace('_', ' ')}" for outcome, n in counts.items())
        logs.event(
            logging.INFO if code == ExitCode.OK else logging.ERROR,
            "fleet.finished",
            f"{self.command} on {len(targets)} target(s): {said or 'none'}; exit code {int(code)}",
            command=self.command,
            exit_code=int(code),
            duration_ms=round((time.perf_counter() - started) * 1000),
            **summary,
        )
        if code == ExitCode.OK:
            return
        bad = ", ".join(
            f"{counts[outcome]} {outcome.replace('_', ' ')}"
            for outcome in ("failed", "interrupted", "not_started")
            if outcome in counts
        )
        named = ", ".join(failed[:NAMED_IN_ERROR]) + ("…" if len(failed) > NAMED_IN_ERROR else "")
        raise FleetFailed(
            f"{bad} of {len(targets)} target(s)"
            + (f": {named}" if named else "")
            + (f" (stopped by {stopped_by.replace('_', ' ')})" if stopped_by else ""),
            code=code,
        )
