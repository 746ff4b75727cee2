"""runner.verify: verify (every down file undoes its up file) and drift (the live schema is
what its applied migrations make), each on a scratch database."""

from __future__ import annotations

import logging
import signal
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from types import FrameType
from typing import Any

import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from runner import commands, logs, migrations
from runner.config import Settings, from_env
from runner.errors import ConfigError, MigrationFailed, MissingMigration, PermissionDenied
from runner.exit_codes import ExitCode
from runner.verify import (
    DOWN_DID_NOT_RESTORE,
    NO_DOWN,
    UP_AGAIN_DIFFERS,
    DriftReport,
    VerifyReport,
    drift,
    verify,
)
from tests.conftest import SEED_MIGRATIONS, fresh_database, query, write_migration


class Events(logging.Handler):
    """The runner's log events, as they are emitted."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def named(self, name: str) -> list[dict[str, Any]]:
        return [
            {**getattr(record, "fields", {}), "message": record.getMessage()}
            for record in self.records
            if getattr(record, "event", None) == name
        ]


@pytest.fixture
def events() -> Iterator[Events]:
    handler = Events()
    level = logs.logger.level
    logs.logger.addHandler(handler)
    logs.logger.setLevel(logging.INFO)
    yield handler
    logs.logger.removeHandler(handler)
    logs.logger.setLevel(level)


def settings_for(database_url: str, directory: Path, **extra: str) -> Settings:
    return from_env({"DATABASE_URL": database_url, "MIGRATIONS_DIR": str(directory), **extra})


def run_verify(
    database_url: str, directory: Path, *, keep: bool = False, scratch_url: str | None = None
) -> VerifyReport:
    settings = settings_for(database_url, directory)
    return verify(settings, migrations.load(directory), keep=keep, scratch_url=scratch_url)


def database_exists(url: str, name: str) -> bool:
    return bool(query(url, "SELECT 1 FROM pg_database WHERE datname = %s", (name,)))


def drop_database(url: str, name: str) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'.encode())


@pytest.fixture
def empty_database(server_url: str) -> Iterator[str]:
    """Another fresh database on the server, for VERIFY_DATABASE_URL."""
    with fresh_database(server_url, template="template0") as url:
        yield url


def base_table(directory: Path) -> None:
    write_migration(
        directory,
        "1_base.up.sql",
        "CREATE TABLE t (id int PRIMARY KEY, a int, b int, status text DEFAULT 'new');\n"
        "CREATE INDEX t_a ON t (a);\n"
        "CREATE TYPE mood AS ENUM ('sad', 'ok', 'happy');\n",
    )
    write_migration(directory, "1_base.down.sql", "DROP TABLE t; DROP TYPE mood;")


def assert_mismatch(
    report: VerifyReport, version: int, file: str, step: str, lines: list[str]
) -> None:
    assert report.exit_code == ExitCode.CHECK_FAILED
    assert report.mismatch is not None
    assert (report.mismatch.version, report.mismatch.file, report.mismatch.step) == (
        version,
        file,
        step,
    )
    assert [str(difference) for difference in report.mismatch.differences] == lines
    rendered = report.render().splitlines()
    assert rendered[0].startswith(f"migration {version} (")
    assert rendered[1 : 1 + len(lines)] == lines


# -- verify: faulty down files, each found with its migration ----------------------------------


def test_a_down_that_forgets_to_drop_a_table(
    database_url: str, migrations_dir: Path, events: Events
) -> None:
    base_table(migrations_dir)
    write_migration(
        migrations_dir, "2_two.up.sql", "CREATE TABLE audit (id int); CREATE TABLE log (x text);"
    )
    write_migration(migrations_dir, "2_two.down.sql", "DROP TABLE audit;")
    write_migration(migrations_dir, "3_never.up.sql", "CREATE TABLE never (id int);")
    report = run_verify(database_url, migrations_dir)
    assert_mismatch(report, 2, "2_two.down.sql", DOWN_DID_NOT_RESTORE, ["added table public.log"])
    assert report.verified == [1]
    assert "did not restore the schema" in report.render()
    (mismatch,) = events.named("verify.mismatch")
    assert mismatch["version"] == 2
    assert mismatch["step"] == DOWN_DID_NOT_RESTORE
    assert mismatch["differences"] == [{"kind": "table", "name": "public.log", "what": "added"}]
    assert not events.named("verify.ok")
    assert {e["version"] for e in events.named("verify.step")} == {1, 2}  # 3 never ran
    assert not database_exists(database_url, report.database)


def test_a_down_that_restores_a_column_with_the_wrong_default(
    database_url: str, migrations_dir: Path
) -> None:
    base_table(migrations_dir)
    write_migration(migrations_dir, "2_drop_status.up.sql", "ALTER TABLE t DROP COLUMN status;")
    write_migration(
        migrations_dir,
        "2_drop_status.down.sql",
        "ALTER TABLE t ADD COLUMN status text DEFAULT 'old';",
    )
    report = run_verify(database_url, migrations_dir)
    assert_mismatch(
        report,
        2,
        "2_drop_status.down.sql",
        DOWN_DID_NOT_RESTORE,
        ["changed column public.t.status: default: \"'new'::text\" -> \"'old'::text\""],
    )
    assert report.as_dict()["mismatch"]["differences"] == [
        {
            "kind": "column",
            "name": "public.t.status",
            "what": "changed",
            "property": "default",
            "before": "'new'::text",
            "after": "'old'::text",
        }
    ]


def test_an_enum_whose_down_recreates_its_labels_in_another_order(
    database_url: str, migrations_dir: Path
) -> None:
    base_table(migrations_dir)
    write_migration(migrations_dir, "2_meh.up.sql", "ALTER TYPE mood ADD VALUE 'meh' AFTER 'ok';")
    write_migration(
        migrations_dir,
        "2_meh.down.sql",
        "ALTER TYPE mood RENAME TO mood_old;\n"
        "CREATE TYPE mood AS ENUM ('happy', 'ok', 'sad');\n"
        "DROP TYPE mood_old;\n",
    )
    report = run_verify(database_url, migrations_dir)
    assert_mismatch(
        report,
        2,
        "2_meh.down.sql",
        DOWN_DID_NOT_RESTORE,
        ['changed type public.mood: labels: ["sad", "ok", "happy"] -> ["happy", "ok", "sad"]'],
    )


def test_a_down_that_drops_an_index_its_up_did_not_create(
    database_url: str, migrations_dir: Path
) -> None:
    base_table(migrations_dir)
    write_migration(migrations_dir, "2_index_b.up.sql", "CREATE INDEX t_b ON t (b);")
    write_migration(migrations_dir, "2_index_b.down.sql", "DROP INDEX t_b; DROP INDEX t_a;")
    report = run_verify(database_url, migrations_dir)
    assert_mismatch(
        report, 2, "2_index_b.down.sql", DOWN_DID_NOT_RESTORE, ["missing index public.t_a"]
    )


def test_an_up_that_replaces_an_index_whose_down_does_not_restore_it(
    database_url: str, migrations_dir: Path
) -> None:
    base_table(migrations_dir)
    write_migration(
        migrations_dir, "2_index_ab.up.sql", "DROP INDEX t_a; CREATE INDEX t_ab ON t (a, b);"
    )
    write_migration(migrations_dir, "2_index_ab.down.sql", "DROP INDEX t_ab;")
    report = run_verify(database_url, migrations_dir)
    assert_mismatch(
        report, 2, "2_index_ab.down.sql", DOWN_DID_NOT_RESTORE, ["missing index public.t_a"]
    )


def test_an_up_that_makes_another_schema_the_second_time(
    database_url: str, migrations_dir: Path
) -> None:
    write_migration(migrations_dir, "1_counter.up.sql", "CREATE SEQUENCE n;")
    write_migration(
        migrations_dir,
        "2_numbered.up.sql",
        "DO $$ BEGIN EXECUTE format('CREATE TABLE t_%s (id int)', nextval('n')); END $$;",
    )
    write_migration(
        migrations_dir,
        "2_numbered.down.sql",
        "DO $$ BEGIN EXECUTE format('DROP TABLE t_%s', (SELECT last_value FROM n)); END $$;",
    )
    report = run_verify(database_url, migrations_dir)
    assert_mismatch(
        report,
        2,
        "2_numbered.up.sql",
        UP_AGAIN_DIFFERS,
        ["missing table public.t_1", "added table public.t_2"],
    )
    assert report.unverifiable == [1]


# -- verify: sets that pass -------------------------------------------------------------------


def test_the_projects_seed_migrations_verify(database_url: str, events: Events) -> None:
    started = time.monotonic()
    report = run_verify(database_url, SEED_MIGRATIONS)
    assert report.exit_code == ExitCode.OK
    assert (report.verified, report.unverifiable, report.mismatch) == ([1], [], None)
    assert report.database.startswith("migration_runner_verify_")
    assert not report.kept
    assert not database_exists(database_url, report.database)
    assert [e["step"] for e in events.named("verify.step")] == ["up", "down", "up_again"]
    (ok,) = events.named("verify.ok")
    assert (ok["verified"], ok["unverifiable"], ok["kept"]) == ([1], [], False)
    assert time.monotonic() - started < 5


def test_no_transaction_files_and_missing_down_files(
    database_url: str, migrations_dir: Path, events: Events
) -> None:
    """No-transaction files run as `up` runs them; a migration without a down file is applied
    and listed, not a failure, and the ones after it are still checked."""
    base_table(migrations_dir)
    write_migration(migrations_dir, "2_no_down.up.sql", "ALTER TABLE t ADD COLUMN c int;")
    write_migration(
        migrations_dir,
        "3_concurrently.up.sql",
        "-- migrate:no-transaction\nCREATE INDEX CONCURRENTLY t_c ON t (c);\n",
    )
    write_migration(
        migrations_dir,
        "3_concurrently.down.sql",
        "-- migrate:no-transaction\nDROP INDEX CONCURRENTLY t_c;\n",
    )
    report = run_verify(database_url, migrations_dir)
    assert report.exit_code == ExitCode.OK
    assert (report.verified, report.unverifiable) == ([1, 3], [2])
    assert "not verified, no down file: 2" in report.render()
    (skipped,) = [e for e in events.named("verify.step") if e["step"] == NO_DOWN]
    assert skipped["file"] == "2_no_down.up.sql"


def test_keep_leaves_the_scratch_database_for_a_look(
    database_url: str, migrations_dir: Path, events: Events
) -> None:
    base_table(migrations_dir)
    report = run_verify(database_url, migrations_dir, keep=True)
    try:
        assert report.kept
        assert database_exists(database_url, report.database)
        assert events.named("scratch.kept")[0]["database"] == report.database
        scratch = make_conninfo(database_url, dbname=report.database)
        assert query(scratch, "SELECT version FROM schema_migrations") == [(1,)]
    finally:
        drop_database(database_url, report.database)


# -- verify: failures that are not about the schema --------------------------------------------


def test_a_failing_file_raises_migration_failed_and_the_scratch_database_goes(
    database_url: str, migrations_dir: Path, events: Events
) -> None:
    base_table(migrations_dir)
    write_migration(migrations_dir, "2_bad.up.sql", "ALTER TABLE t ADD COLUMN d int;")
    write_migration(migrations_dir, "2_bad.down.sql", "ALTER TABLE t DROP COLUMN nope;")
    with pytest.raises(MigrationFailed) as failed:
        run_verify(database_url, migrations_dir)
    assert failed.value.version == 2
    assert failed.value.file == "2_bad.down.sql"
    assert str(failed.value).startswith("verify, its down file: migration 2 failed at 2_bad")
    (name,) = {e["database"] for e in events.named("verify.step")}
    assert not database_exists(database_url, name)


def test_a_role_without_createdb_is_told_so(
    database_url: str, migrations_dir: Path, server_url: str
) -> None:
    base_table(migrations_dir)
    role = f"no_createdb_{uuid.uuid4().hex[:8]}"
    query(server_url, f"CREATE ROLE {role} LOGIN NOCREATEDB")
    try:
        url = make_conninfo(database_url, user=role)
        with pytest.raises(PermissionDenied, match="CREATEDB") as denied:
            run_verify(url, migrations_dir)
        assert denied.value.exit_code == ExitCode.AUTH_FAILED
        assert "VERIFY_DATABASE_URL" in str(denied.value)
    finally:
        query(server_url, f"DROP ROLE {role}")


def test_a_signal_drops_the_scratch_database(
    database_url: str, migrations_dir: Path, events: Events
) -> None:
    """The CLI turns SIGTERM and SIGINT into KeyboardInterrupt; here SIGALRM does, while the
    migration runs."""
    write_migration(migrations_dir, "1_slow.up.sql", "SELECT pg_sleep(10);")

    def interrupt(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    class AlarmWhenStarted(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if getattr(record, "event", None) == "migration.started":
                signal.setitimer(signal.ITIMER_REAL, 0.2)

    alarm = AlarmWhenStarted()
    previous = signal.signal(signal.SIGALRM, interrupt)
    logs.logger.addHandler(alarm)
    started = time.monotonic()
    try:
        with pytest.raises(KeyboardInterrupt):
            run_verify(database_url, migrations_dir)
    finally:
        logs.logger.removeHandler(alarm)
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    assert time.monotonic() - started < 8
    (name,) = {e["database"] for e in events.named("verify.step")}
    assert not database_exists(database_url, name)


# -- verify: a database given by VERIFY_DATABASE_URL --------------------------------------------


def test_a_given_empty_database_is_used_and_kept(
    database_url: str, migrations_dir: Path, empty_database: str
) -> None:
    base_table(migrations_dir)
    report = run_verify(database_url, migrations_dir, scratch_url=empty_database)
    assert report.exit_code == ExitCode.OK
    assert report.database == conninfo_to_dict(empty_database)["dbname"]
    assert report.kept
    assert query(empty_database, "SELECT version FROM schema_migrations") == [(1,)]
    with pytest.raises(ConfigError, match=r"is not empty .*table public\.t") as refused:
        run_verify(database_url, migrations_dir, scratch_url=empty_database)
    assert refused.value.variable == "VERIFY_DATABASE_URL"
    assert database_exists(database_url, report.database)


# -- drift ------------------------------------------------------------------------------------


def migrated(database_url: str, directory: Path) -> Settings:
    settings = settings_for(database_url, directory)
    commands.up(settings, commands.RunReport(command="up"))
    return settings


def run_drift(settings: Settings, scratch_url: str | None = None) -> DriftReport:
    return drift(settings, migrations.load(settings.migrations_dir), scratch_url=scratch_url)


def test_drift_finds_exactly_what_was_changed_by_hand(database_url: str, events: Events) -> None:
    settings = migrated(database_url, SEED_MIGRATIONS)
    query(database_url, "ALTER TABLE users ADD COLUMN nickname text")
    query(database_url, "DROP INDEX idx_users_email")
    query(database_url, "ALTER TABLE users ALTER COLUMN created_at SET DEFAULT clock_timestamp()")
    report = run_drift(settings)
    assert report.exit_code == ExitCode.CHECK_FAILED
    assert report.replayed == [1]
    assert report.render().splitlines()[1:] == [
        'changed column public.users.created_at: default: "now()" -> "clock_timestamp()"',
        "added column public.users.nickname",
        "missing index public.idx_users_email",
    ]
    (found,) = events.named("drift.found")
    assert len(found["differences"]) == 3
    assert not database_exists(database_url, report.database)


def test_no_drift_on_an_unaltered_database(
    database_url: str, migrations_dir: Path, events: Events
) -> None:
    base_table(migrations_dir)
    write_migration(migrations_dir, "2_c.up.sql", "ALTER TABLE t ADD COLUMN c int;")
    settings = migrated(database_url, migrations_dir)
    write_migration(migrations_dir, "3_pending.up.sql", "CREATE TABLE pending (id int);")
    report = run_drift(settings)
    assert report.exit_code == ExitCode.OK
    assert (report.replayed, report.differences) == ([1, 2], [])
    assert report.render().startswith("no drift")
    assert events.named("drift.none")[0]["replayed"] == [1, 2]
    assert not database_exists(database_url, report.database)


def test_a_tracking_table_of_its_own_schema_is_no_drift(
    database_url: str, migrations_dir: Path
) -> None:
    base_table(migrations_dir)
    settings = settings_for(database_url, migrations_dir, MIGRATIONS_TABLE="ops.migrations")
    commands.up(settings, commands.RunReport(command="up"))
    assert run_drift(settings).differences == []
    commands.down(settings, commands.RunReport(command="down"), None)
    report = run_drift(settings)  # no row left, but the table and its schema stay
    assert (report.replayed, report.differences) == ([], [])


def test_drift_only_reads_the_live_database(
    database_url: str, migrations_dir: Path, empty_database: str
) -> None:
    base_table(migrations_dir)
    settings = migrated(database_url, migrations_dir)
    name = conninfo_to_dict(database_url)["dbname"]
    query(database_url, f'ALTER DATABASE "{name}" SET default_transaction_read_only = on')
    report = run_drift(settings, scratch_url=empty_database)
    assert (report.exit_code, report.replayed) == (ExitCode.OK, [1])


def test_an_applied_version_without_a_file_is_named(
    database_url: str, migrations_dir: Path
) -> None:
    base_table(migrations_dir)
    write_migration(migrations_dir, "2_gone.up.sql", "CREATE TABLE gone (id int);")
    settings = migrated(database_url, migrations_dir)
    (migrations_dir / "2_gone.up.sql").unlink()
    with pytest.raises(MissingMigration, match=r"migration 2 \(gone\) is applied") as missing:
        run_drift(settings)
    assert missing.value.version == 2


def test_drift_refuses_the_live_database_as_its_scratch_database(
    database_url: str, migrations_dir: Path
) -> None:
    base_table(migrations_dir)
    settings = settings_for(database_url, migrations_dir)
    with pytest.raises(ConfigError, match="names the configured database itself"):
        run_drift(settings, scratch_url=database_url)
    assert query(database_url, "SELECT to_regclass('schema_migrations')") == [(None,)]
