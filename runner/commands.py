"""What each command does: connect, lock, read, plan, act. The planner decides; this acts."""

from __future__ import annotations

import json
import logging
import socket
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import IO, TYPE_CHECKING, Any

from psycopg import sql

from runner import (
    db,
    durability,
    lock,
    logs,
    migrations,
    placeholders,
    present,
    tracking,
    wait,
)
from runner.config import Settings
from runner.errors import (
    AwaitTimeout,
    DatabaseUnreachable,
    ForeignTrackingTable,
    HalfApplied,
    MigrationSetError,
    MissingMigration,
    NeedsAttention,
    RunnerError,
    UnknownVersion,
    UnsupportedStatement,
)
from runner.planner import (
    APPLIED,
    AppliedMigration,
    Migration,
    MigrationFile,
    Plan,
    content_problems,
    find_problems,
    future_versions,
    parse_files,
    plan,
    plan_down,
    plan_goto,
)

if TYPE_CHECKING:
    from runner.apply import Applier

Sleep = Callable[[float], Any]
_CURRENT_USER = sql.SQL("SELECT current_user")


@dataclass
class RunReport:
    """What a run did, for the run.finished line and the termination message."""

    command: str
    applied: list[int] = field(default_factory=list)
    reverted: list[int] = field(default_factory=list)
    pending: int | None = None
    in_flight: str | None = None  # what a signal left of the migration it stopped
    fleet: dict[str, object] | None = None  # a run over many targets: fleet.summary()


# -- changing the schema ----------------------------------------------------------------------


def up(
    settings: Settings,
    report: RunReport,
    *,
    single_transaction: bool = False,
    sleep: Sleep = time.sleep,
) -> None:
    """Apply every pending migration, each in its own transaction with its tracking row."""
    files = checked_files(settings)
    with _connect(settings, sleep, writable=True) as conn:
        table = tracking.resolve(conn, settings.migrations_table)
        # Most runs find nothing to do: say so without the lock. So does a runner that waited
        # while another applied everything: it stops waiting instead of queueing for the lock.
        if _up_to_date(files, table, settings, note=True):
            return
        lock.require_stable_session(conn, settings.database)
        key = lock.acquire(
            conn,
            table.name,
            timeout=settings.lock_timeout,
            sleep=sleep,
            unneeded=lambda: _up_to_date(files, table, settings),
        )
        if key is None:
            return
        table.ensure()
        applied = table.rows()  # read again, under the lock
        todo = _plan(files, applied, settings).pending
        _log_plan(report, todo, applied)
        with _applier(table, settings, sleep, report) as applier:
            if single_transaction and todo:
                applier.up_all_in_one(todo)
            elif todo:
                applier.up_each(todo)
        lock.release(conn, key)


def _up_to_date(
    files: Sequence[MigrationFile],
    table: tracking.TrackingTable,
    settings: Settings,
    *,
    note: bool = False,
) -> bool:
    """True when every file is applied, unchanged, and durably so: read without the lock,
    which only committed rows can satisfy. Anything else is left to the locked path."""
    applied = table.rows()
    if note:  # once, not at every look while waiting for the lock
        _note_future(files, applied, settings)
    try:
        pending = _plan(files, applied, settings).pending
    except UnsupportedStatement:
        raise  # a pending file that cannot run as written: refused before anything changes
    except (MigrationSetError, NeedsAttention):
        return False
    if pending:
        return False
    durability.make_durable(table.conn)
    logs.event(
        logging.INFO,
        "plan.ready",
        f"0 migration(s) pending, {len(applied)} applied",
        pending=[],
        applied_count=len(applied),
    )
    return True


def down(
    settings: Settings, report: RunReport, count: int | None, *, sleep: Sleep = time.sleep
) -> None:
    """Roll back the newest `count` applied migrations (all when None), newest first."""
    files = checked_files(settings)
    with _locked(settings, sleep) as table:
        applied = table.rows()
        todo = plan_down(files, applied, count)
        logs.event(
            logging.INFO,
            "plan.ready",
            f"{len(todo)} migration(s) to roll back",
            reverting=[m.version for m in todo],
            applied_count=len(applied),
        )
        with _applier(table, settings, sleep, report) as applier:
            for migration in todo:
                applier.down(migration)


def goto(settings: Settings, report: RunReport, target: int, *, sleep: Sleep = time.sleep) -> None:
    """Up or down to exactly `target` (0: before the first migration)."""
    files = checked_files(settings)
    with _locked(settings, sleep) as table:
        table.ensure()
        applied = table.rows()
        steps = plan_goto(files, applied, target, allow_out_of_order=settings.allow_out_of_order)
        logs.event(
            logging.INFO,
            "plan.ready",
            f"going to version {target}",
            target=target,
            pending=[m.version for m in steps.up],
            reverting=[m.version for m in steps.down],
            applied_count=len(applied),
        )
        with _applier(table, settings, sleep, report) as applier:
            for migration in steps.up:
                applier.up(migration)
            for migration in steps.down:
                applier.down(migration)


def baseline(
    settings: Settings, report: RunReport, version: int, *, sleep: Sleep = time.sleep
) -> None:
    """Record every migration up to `version` as applied without running it, in one
    transaction: for a database whose schema was made by other means."""
    files = checked_files(settings)
    migrations_on_disk = parse_files(files)
    if version not in {m.version for m in migrations_on_disk}:
        raise UnknownVersion(f"no migration with version {version} on disk", version=version)
    with _locked(settings, sleep) as table:
        table.ensure()
        applied = table.rows()
        _refuse(find_problems(files, applied, allow_out_of_order=True))
        recorded = {row.version for row in applied}
        chosen = [
            m for m in migrations_on_disk if m.version <= version and m.version not in recorded
        ]
        applied_by = f"baseline by {_applied_by(table.conn)}"
        with db.transaction(table.conn):
            for migration in chosen:
                table.record_without_running(migration, applied_by)
        report.applied.extend(m.version for m in chosen)
        logs.event(
            logging.INFO,
            "baseline.recorded",
            f"recorded {len(chosen)} migration(s) up to {version} as applied without running them",
            versions=[m.version for m in chosen],
            target=version,
        )


def repair(
    settings: Settings,
    report: RunReport,
    *,
    update_checksums: bool,
    only_version: int | None = None,
    sleep: Sleep = time.sleep,
) -> None:
    """Clear failed or running rows (after a person fixed the schema, so that the migration
    runs again); with `update_checksums`, accept edited files of applied migrations. With
    `only_version`, touch that version's row only."""
    files = checked_files(settings)
    on_disk = {m.version: m for m in parse_files(files)}
    changed = 0
    with _locked(settings, sleep) as table:
        applied = table.rows()
        if only_version is not None:
            applied = [row for row in applied if row.version == only_version]
            if not applied:
                raise UnknownVersion(
                    f"version {only_version} has no row in {table}: nothing to repair",
                    version=only_version,
                )
        with db.transaction(table.conn):
            for row in applied:
                if row.status != APPLIED:
                    table.delete(row.version)
                    changed += 1
                    logs.event(
                        logging.WARNING,
                        "repair.cleared",
                        f"removed the {row.status} row of migration {row.version} "
                        f"({row.name}): it will run again",
                        version=row.version,
                        name=row.name,
                        status=row.status,
                    )
                    continue
                migration = on_disk.get(row.version)
                if update_checksums and migration and migration.up.checksum != row.checksum:
                    table.update_checksum(row.version, migration.up.checksum)
                    changed += 1
                    logs.event(
                        logging.WARNING,
                        "repair.checksum_updated",
                        f"accepted the edited {migration.up.filename}",
                        version=row.version,
                        file=migration.up.filename,
                        old_checksum=row.checksum,
                        new_checksum=migration.up.checksum,
                    )
    if not changed:
        logs.event(logging.INFO, "repair.nothing", "nothing to repair")


def adopt(settings: Settings, report: RunReport, *, sleep: Sleep = time.sleep) -> None:
    """Take over a database managed by golang-migrate or dbmate: record its applied versions
    in this tool's table and keep the old table, untouched, under a new name."""
    files = checked_files(settings)
    on_disk = {m.version: m for m in parse_files(files)}
    with _locked(settings, sleep) as table:
        found = table.columns()
        tool = tracking.foreign_tool(found)
        if not found or tool is None:
            table.check_shape(found)  # refuses an unknown shape
            logs.event(
                logging.INFO,
                "adopt.nothing",
                f"{table} is already this tool's table" if found else f"no {table} to adopt",
            )
            return
        rows = table.foreign_versions(tool)
        versions = _adopted_versions(tool, rows, sorted(on_disk), table=str(table))
        backup = f"{table.name.name}_{tool.replace('-', '_')}"
        if table.named(backup).columns():
            raise ForeignTrackingTable(
                f"cannot keep {table} as {backup}: that table exists already"
            )
        applied_by = f"adopted from {tool} by {_applied_by(table.conn)}"
        with db.transaction(table.conn):
            table.rename(backup)
            table.create()
            for version in versions:
                table.record_without_running(on_disk[version], applied_by)
        report.applied.extend(versions)
        logs.event(
            logging.INFO,
            "adopt.done",
            f"adopted {len(versions)} version(s) from {tool}; its table is kept as {backup}",
            tool=tool,
            versions=versions,
            kept_as=backup,
        )


def _adopted_versions(
    tool: str, rows: Sequence[tuple[Any, ...]], on_disk: Sequence[int], *, table: str
) -> list[int]:
    if tool == tracking.GOLANG_MIGRATE:
        if not rows:
            return []
        version, dirty = int(rows[0][0]), bool(rows[0][1])
        if dirty:
            raise HalfApplied(
                f"golang-migrate's {table} says version {version} is dirty (it failed half-way): "
                f"fix the schema, then `migrate force {version}` or `migrate force "
                f"{version - 1}`, and adopt again",
                version=version,
            )
        if version not in on_disk:
            raise MissingMigration(
                f"golang-migrate's {table} is at version {version}, which has no file here",
                version=version,
            )
        return [v for v in on_disk if v <= version]
    versions = []
    for raw, _ in rows:
        if not str(raw).isdigit() or int(raw) not in on_disk:
            raise MissingMigration(f"dbmate's {table} has version {raw}, which has no file here")
        versions.append(int(raw))
    return sorted(versions)


# -- reading ----------------------------------------------------------------------------------


def await_schema(settings: Settings, report: RunReport, *, sleep: Sleep = time.sleep) -> None:
    """Read-only, no lock: wait until every version in MIGRATIONS_DIR is applied (exit 0), or
    AWAIT_TIMEOUT passes (75); a database newer than the image is an error (66) unless
    IGNORE_FUTURE_VERSIONS."""
    import tenacity  # only `await` waits for others here

    from runner import retry

    files = checked_files(settings)
    wanted = [m.version for m in parse_files(files)]
    unreachable: DatabaseUnreachable | None = None  # why the last look could not read
    noted = False

    def missing_versions() -> list[int]:
        nonlocal unreachable, noted
        try:
            with (
                wait.wait_for_database(settings.database, deadline=0, sleep=sleep) as conn,
                db.lost_connection_reported(),
            ):
                applied = _applied(conn, settings)
                durable = durability.wait_until_flushed(conn, sleep)
        except DatabaseUnreachable as failure:
            unreachable = failure
            return wanted
        unreachable = None
        if not noted:
            _note_future(files, applied, settings)
            noted = True
        running = [row for row in applied if row.status == "running"]
        problems = [
            p
            for p in find_problems(
                files,
                [r for r in applied if r not in running],
                allow_out_of_order=True,
                ignore_future=settings.ignore_future,
            )
        ]
        _refuse(problems)
        done = {row.version for row in applied if row.status == APPLIED}
        missing = [version for version in wanted if version not in done]
        if not missing and not durable:
            return wanted[-1:]  # committed, but not yet on disk: look again
        return missing

    def log_waiting(retry_state: tenacity.RetryCallState) -> None:
        outstanding = retry_state.outcome.result() if retry_state.outcome else []
        logs.event(
            logging.INFO,
            "await.waiting",
            f"waiting for {len(outstanding)} migration(s) to be applied",
            missing=outstanding[:50],
            attempt=retry_state.attempt_number,
            retry_in_s=round(retry_state.upcoming_sleep, 3),
        )

    policy = retry.backoff(
        deadline=settings.await_timeout,
        retry=tenacity.retry_if_result(bool),
        sleep=sleep,
        initial=0.5,
        maximum=5.0,
        before_sleep=log_waiting,
    )
    try:
        policy(missing_versions)
    except tenacity.RetryError as gave_up:
        if unreachable is not None:
            raise DatabaseUnreachable(
                f"database not reachable within AWAIT_TIMEOUT: {unreachable}"
            ) from None
        outstanding = gave_up.last_attempt.result()
        report.pending = len(outstanding)
        raise AwaitTimeout(
            f"{len(outstanding)} migration(s) still not applied after {settings.await_timeout:g}s: "
            f"{', '.join(map(str, outstanding[:20]))}"
        ) from None
    report.pending = 0
    logs.event(
        logging.INFO,
        "await.ready",
        "every migration in this image is applied",
        versions=len(wanted),
    )


def status(settings: Settings, report: RunReport, out: IO[str], *, as_json: bool) -> None:
    """Every migration on disk or in the database, with its state and checksums; then the
    problems of the set, if any, which end the run with the first one's exit code."""
    files = read_files(settings)
    with _connect(settings, time.sleep) as conn:
        applied = _applied(conn, settings)
    _note_future(files, applied, settings)
    rows = present.status_rows(files, applied)
    problems = set_problems(files, applied, settings)
    report.pending = sum(1 for row in rows if row["state"] == "pending")
    if as_json:
        document = {"migrations": rows, "problems": [str(problem) for problem in problems]}
        out.write(json.dumps(document, default=str) + "\n")
    else:
        out.write(present.status_table(rows))
        for problem in problems:
            out.write(f"problem: {problem}\n")
    _refuse(problems)


def show_plan(
    settings: Settings, report: RunReport, out: IO[str], *, as_json: bool, locks: bool = False
) -> None:
    """What `up` would run now, without running it or taking the lock; with `locks`, the
    table locks each pending statement takes and the tables' estimated sizes."""
    files = checked_files(settings)
    with _connect(settings, time.sleep) as conn:
        applied = _applied(conn, settings)
        pending = _plan(files, applied, settings).pending
        if locks:
            from runner import locks as lock_plans  # pglast: only for this

            plans = lock_plans.lock_plan([m.up for m in pending])
            sizes = lock_plans.estimate(conn, lock_plans.tables_of(plans))
    report.pending = len(pending)
    if locks:
        out.write(
            json.dumps(lock_plans.to_json(plans, sizes)) + "\n"
            if as_json
            else lock_plans.render_text(plans, sizes)
            or "nothing to apply: the database is up to date\n"
        )
        return
    entries = [
        {
            "version": m.version,
            "name": m.name,
            "file": m.up.filename,
            "checksum": m.up.checksum,
            "no_transaction": m.up.no_transaction,
        }
        for m in pending
    ]
    if as_json:
        out.write(json.dumps({"pending": entries}) + "\n")
    elif not entries:
        out.write("nothing to apply: the database is up to date\n")
    else:
        for entry in entries:
            out.write(f"would apply {entry['file']}\n")


def pending_migrations(
    settings: Settings, files: Sequence[MigrationFile], sleep: Sleep
) -> Sequence[Migration]:
    """What `up` would run now, read without the lock (for `lint --pending`)."""
    with _connect(settings, sleep) as conn:
        applied = _applied(conn, settings)
    return _plan(files, applied, settings).pending


def validate(settings: Settings, report: RunReport, *, offline: bool) -> None:
    """Report every problem (exit 66) without changing anything; offline: the files only."""
    files = read_files(settings)
    applied: list[AppliedMigration] = []
    if not offline:
        with _connect(settings, time.sleep) as conn:
            applied = _applied(conn, settings)
    problems: list[RunnerError] = [
        *set_problems(files, applied, settings),
        *content_problems(files),
    ]
    for problem in problems:
        logs.event(logging.ERROR, "validate.problem", str(problem), **problem.fields())
    _refuse(problems)
    logs.event(
        logging.INFO,
        "validate.ok",
        f"{len(files)} migration file(s) valid" + ("" if offline else " against the database"),
        files=len(files),
        applied_count=len(applied),
    )


def wait_only(settings: Settings, *, sleep: Sleep = time.sleep) -> None:
    """Wait until the database accepts a connection, then close it."""
    wait.wait_for_database(settings.database, deadline=settings.wait_timeout, sleep=sleep).close()


# -- shared -----------------------------------------------------------------------------------


def read_files(settings: Settings) -> list[MigrationFile]:
    """The files of MIGRATIONS_DIR, as this target reads them (placeholders put in); none at
    all is refused unless ALLOW_EMPTY."""
    files = migrations.load(settings.migrations_dir)
    migrations.require_some(files, settings.migrations_dir, allow_empty=settings.allow_empty)
    return placeholders.applied(files, settings.placeholders)


def _applied(conn: db.Connection, settings: Settings) -> list[AppliedMigration]:
    """The tracking table's rows, read by a command that does not lock."""
    return tracking.resolve(conn, settings.migrations_table).rows()


def checked_files(settings: Settings) -> list[MigrationFile]:
    """The files, refused before connecting if their names or pairs are wrong."""
    files = read_files(settings)
    _refuse([p for p in find_problems(files, []) if isinstance(p, MigrationSetError)])
    return files


def _plan(
    files: Sequence[MigrationFile], applied: Sequence[AppliedMigration], settings: Settings
) -> Plan:
    return plan(
        files,
        applied,
        allow_out_of_order=settings.allow_out_of_order,
        ignore_future=settings.ignore_future,
    )


def set_problems(
    files: Sequence[MigrationFile], applied: Sequence[AppliedMigration], settings: Settings
) -> list[MigrationSetError | NeedsAttention]:
    """Every problem of the set against the tracking table, as the settings allow it."""
    return find_problems(
        files,
        applied,
        allow_out_of_order=settings.allow_out_of_order,
        ignore_future=settings.ignore_future,
    )


def _note_future(
    files: Sequence[MigrationFile], applied: Sequence[AppliedMigration], settings: Settings
) -> None:
    """Say which newer versions IGNORE_FUTURE_VERSIONS lets pass, when it does."""
    if not settings.ignore_future:
        return
    future = future_versions(parse_files(files, strict=False), applied)
    if future:
        logs.event(
            logging.WARNING,
            "plan.future_versions",
            f"{len(future)} version(s) applied in the database are newer than these migration "
            "files (IGNORE_FUTURE_VERSIONS): an older release is running against a newer schema",
            versions=future[:50],
        )


def _refuse(problems: Sequence[RunnerError]) -> None:
    if problems:
        raise problems[0]


@contextmanager
def _connect(
    settings: Settings, sleep: Sleep, *, writable: bool = False
) -> Iterator[db.Connection]:
    """A connection, waited for; losing it later ends the command as DatabaseUnreachable."""
    with (
        wait.wait_for_database(
            settings.database, deadline=settings.wait_timeout, sleep=sleep, writable=writable
        ) as conn,
        db.lost_connection_reported(),
    ):
        yield conn


@contextmanager
def _locked(settings: Settings, sleep: Sleep) -> Iterator[tracking.TrackingTable]:
    """The tracking table on a connection holding the migration lock; the lock goes with the
    connection."""
    with _connect(settings, sleep, writable=True) as conn:
        table = tracking.resolve(conn, settings.migrations_table)
        lock.require_stable_session(conn, settings.database)
        key = lock.acquire(conn, table.name, timeout=settings.lock_timeout, sleep=sleep)
        assert key is not None  # acquire() gives up early only when asked to
        yield table
        lock.release(conn, key)


@contextmanager
def _applier(
    table: tracking.TrackingTable, settings: Settings, sleep: Sleep, report: RunReport
) -> Iterator[Applier]:
    """An Applier whose committed versions end up in `report`, whatever happens."""
    from runner.apply import Applier  # a run with nothing to apply never needs it

    applier = Applier(table, settings, applied_by=_applied_by(table.conn), sleep=sleep)
    try:
        yield applier
        applier.finish()
    except BaseException:  # a signal too: what it reports as applied must be on disk
        applier.finish_quietly()  # what committed before the failure stays, durably
        raise
    finally:
        applier.close()
        report.applied.extend(applier.applied)
        report.reverted.extend(applier.reverted)
        report.in_flight = applier.in_flight


def _log_plan(
    report: RunReport, todo: Sequence[Migration], applied: Sequence[AppliedMigration]
) -> None:
    report.pending = len(todo)
    logs.event(
        logging.INFO,
        "plan.ready",
        f"{len(todo)} migration(s) pending, {len(applied)} applied",
        pending=[m.version for m in todo],
        applied_count=len(applied),
    )


def _applied_by(conn: db.Connection) -> str:
    row = db.execute(conn, _CURRENT_USER).fetchone()
    user = row[0] if row else "unknown"
    return f"{user}@{socket.gethostname()}"
