"""`up` through the real entrypoint against a real PostgreSQL: applying, recording, refusing."""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
from pathlib import Path

import psycopg
import pytest

from tests.conftest import (
    ROOT,
    SEED_MIGRATIONS,
    Run,
    RunnerProcess,
    poll_until,
    query,
    race_of_16,
    run_entrypoint,
    runner_env,
    runner_statements,
    write_migration,
)


def up(database_url: str, migrations: Path, *args: str, **extra: str) -> Run:
    return run_entrypoint("up", *args, env=runner_env(database_url, migrations, **extra))


def applied_versions(database_url: str, table: str = "schema_migrations") -> list[int]:
    return [row[0] for row in query(database_url, f"SELECT version FROM {table} ORDER BY 1")]


def advisory_locks(database_url: str) -> int:
    rows = query(
        database_url,
        "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' "
        "AND database = (SELECT oid FROM pg_database WHERE datname = current_database())",
    )
    return int(rows[0][0])


def test_the_seed_schema_applies_and_is_recorded(database_url: str) -> None:
    run = up(database_url, SEED_MIGRATIONS)
    assert run.code == 0, run.stderr
    assert run.finished["applied"] == [1]
    assert run.finished["exit_code"] == 0
    version, name, checksum, status, ms, by = query(
        database_url,
        "SELECT version, name, checksum, status, execution_ms, applied_by FROM schema_migrations",
    )[0]
    assert (version, name, status) == (1, "init", "applied")
    assert len(checksum) == 64
    assert ms >= 0
    assert by.startswith("postgres@")
    # The trigger maintains updated_at by itself; email is unique; id is generated.
    query(database_url, "INSERT INTO users (email) VALUES ('a@example.com')")
    before = query(database_url, "SELECT id, created_at, updated_at FROM users")[0]
    query(database_url, "UPDATE users SET email = 'b@example.com'")
    after = query(database_url, "SELECT id, created_at, updated_at FROM users")[0]
    assert after[0] == before[0]
    assert after[1] == before[1]
    assert after[2] > before[2]
    with pytest.raises(psycopg.errors.UniqueViolation):
        query(database_url, "INSERT INTO users (email) VALUES ('b@example.com')")
    indexes = {
        row[0]
        for row in query(database_url, "SELECT indexname FROM pg_indexes WHERE tablename = 'users'")
    }
    assert "idx_users_email" in indexes


def test_the_seed_down_file_removes_exactly_what_up_created(database_url: str) -> None:
    def objects() -> list[tuple[str, ...]]:
        return query(
            database_url,
            "SELECT 'rel:' || relname FROM pg_class WHERE relnamespace = 'public'::regnamespace "
            "UNION ALL SELECT 'fn:' || proname FROM pg_proc "
            "WHERE pronamespace = 'public'::regnamespace "
            "UNION ALL SELECT 'ext:' || extname FROM pg_extension ORDER BY 1",
        )

    empty = objects()
    up_sql = (SEED_MIGRATIONS / "000001_init.up.sql").read_text()
    down_sql = (SEED_MIGRATIONS / "000001_init.down.sql").read_text()
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(up_sql.encode())
        created = objects()
        conn.execute(down_sql.encode())
        assert objects() == empty
        conn.execute(up_sql.encode())
    assert objects() == created


def test_a_second_run_applies_nothing(database_url: str) -> None:
    assert up(database_url, SEED_MIGRATIONS).code == 0
    again = up(database_url, SEED_MIGRATIONS)
    assert again.code == 0
    assert again.finished["applied"] == []
    assert applied_versions(database_url) == [1]
    # Nothing to do is found without taking the lock.
    assert not any(entry["event"] == "lock.acquired" for entry in again.events)


def test_a_file_with_many_statements_function_bodies_do_blocks_and_comments_runs_as_written(
    database_url: str, migrations_dir: Path
) -> None:
    write_migration(
        migrations_dir,
        "1_mixed.up.sql",
        "-- a comment; with a semicolon\n"
        "CREATE TABLE things (id int PRIMARY KEY, note text);\n"
        "/* block ; comment */\n"
        "CREATE FUNCTION bump() RETURNS int LANGUAGE plpgsql AS $$\n"
        "BEGIN\n  INSERT INTO things VALUES (1, 'a;b');\n  RETURN 1;\nEND;\n$$;\n"
        "DO $do$ BEGIN PERFORM bump(); END $do$;\n"
        "INSERT INTO things VALUES (2, E'it''s; \\\\ fine')",
    )
    run = up(database_url, migrations_dir)
    assert run.code == 0, run.stderr
    assert query(database_url, "SELECT id, note FROM things ORDER BY id") == [
        (1, "a;b"),
        (2, "it's; \\ fine"),
    ]
    assert run.event("migration.applied")["statements"] == 4


def test_a_failing_second_statement_leaves_no_trace_of_the_first(
    database_url: str, migrations_dir: Path
) -> None:
    write_migration(migrations_dir, "1_ok.up.sql", "CREATE TABLE kept (id int);")
    write_migration(
        migrations_dir,
        "2_broken.up.sql",
        "CREATE TABLE first_one (id int);\n\n-- the next one fails\nSELECT 1 / 0;\n",
    )
    write_migration(migrations_dir, "3_later.up.sql", "CREATE TABLE never (id int);")
    run = up(database_url, migrations_dir)
    assert run.code == 65, run.stderr
    failed = run.event("migration.failed")
    assert failed["version"] == 2
    assert failed["file"] == "2_broken.up.sql"
    assert failed["sqlstate"] == "22012"
    assert failed["line"] == 4
    assert "division by zero" in failed["message"]
    assert run.finished["exit_code"] == 65
    assert run.finished["applied"] == [1]
    assert run.finished["failed_version"] == 2
    tables = {
        row[0]
        for row in query(
            database_url, "SELECT tablename FROM pg_tables WHERE schemaname = 'public'"
        )
    }
    assert "kept" in tables
    assert "first_one" not in tables
    assert "never" not in tables
    assert applied_versions(database_url) == [1]
    assert advisory_locks(database_url) == 0


def test_a_syntax_error_names_its_line(database_url: str, migrations_dir: Path) -> None:
    write_migration(
        migrations_dir, "1_typo.up.sql", "CREATE TABLE a (id int);\n\nCREAT TABLE b ();"
    )
    run = up(database_url, migrations_dir)
    assert run.code == 65
    failed = run.event("migration.failed")
    assert (failed["sqlstate"], failed["line"]) == ("42601", 3)
    assert "1_typo.up.sql line 3" in failed["message"]


def test_an_edited_applied_file_is_refused_and_nothing_runs(
    database_url: str, migrations_dir: Path
) -> None:
    first = write_migration(migrations_dir, "1_a.up.sql", "CREATE TABLE a (id int);")
    assert up(database_url, migrations_dir).code == 0
    first.write_text("CREATE TABLE a (id bigint);")
    write_migration(migrations_dir, "2_b.up.sql", "CREATE TABLE b (id int);")
    run = up(database_url, migrations_dir)
    assert run.code == 66
    assert "1_a.up.sql was edited" in run.finished["error"]
    assert applied_versions(database_url) == [1]
    assert query(database_url, "SELECT to_regclass('b')") == [(None,)]


def test_a_migration_missing_on_disk_is_refused(database_url: str, migrations_dir: Path) -> None:
    write_migration(migrations_dir, "1_a.up.sql", "SELECT 1;")
    second = write_migration(migrations_dir, "2_b.up.sql", "SELECT 2;")
    assert up(database_url, migrations_dir).code == 0
    second.unlink()
    run = up(database_url, migrations_dir)
    assert run.code == 66
    assert "database is newer" in run.finished["error"]


def test_out_of_order_needs_the_flag(database_url: str, migrations_dir: Path) -> None:
    write_migration(migrations_dir, "1_a.up.sql", "SELECT 1;")
    write_migration(migrations_dir, "3_c.up.sql", "SELECT 3;")
    assert up(database_url, migrations_dir).code == 0
    write_migration(migrations_dir, "2_b.up.sql", "CREATE TABLE b (id int);")
    refused = up(database_url, migrations_dir)
    assert refused.code == 66
    assert "--allow-out-of-order" in refused.finished["error"]
    allowed = up(database_url, migrations_dir, "--allow-out-of-order")
    assert allowed.code == 0, allowed.stderr
    assert allowed.finished["applied"] == [2]


@pytest.mark.parametrize(
    ("filename", "content"),
    [
        ("1_a.up.sql", None),  # bad name next to it
        ("not-a-migration.sql", "SELECT 1;"),
    ],
)
def test_bad_names_are_refused_before_connecting(
    migrations_dir: Path, filename: str, content: str | None
) -> None:
    write_migration(migrations_dir, "2_b.up.sql", "SELECT 1;")
    write_migration(migrations_dir, "002_dup.up.sql", "SELECT 1;")
    if content is not None:
        write_migration(migrations_dir, filename, content)
    # An unreachable database: the refusal comes first, without waiting.
    run = run_entrypoint(
        "up", env=runner_env("postgresql://u@127.0.0.1:1/d", migrations_dir, DB_WAIT_TIMEOUT="30")
    )
    assert run.code == 66
    assert run.seconds < 10
    assert not any(entry["event"] == "db.wait.attempt" for entry in run.events)


def test_invalid_utf8_names_the_file_and_line(database_url: str, migrations_dir: Path) -> None:
    (migrations_dir / "1_bin.up.sql").write_bytes(b"SELECT 1;\nSELECT '\xff';\n")
    run = up(database_url, migrations_dir)
    assert run.code == 66
    assert "1_bin.up.sql: line 2: not valid UTF-8" in run.finished["error"]


def test_a_foreign_tracking_table_stops_the_run_untouched(database_url: str) -> None:
    # golang-migrate's table, created as golang-migrate creates it.
    query(
        database_url,
        "CREATE TABLE schema_migrations (version bigint NOT NULL PRIMARY KEY, "
        "dirty boolean NOT NULL)",
    )
    query(database_url, "INSERT INTO schema_migrations VALUES (20240101, false)")
    run = up(database_url, SEED_MIGRATIONS)
    assert run.code == 67
    assert "golang-migrate" in run.finished["error"]
    assert query(database_url, "SELECT * FROM schema_migrations") == [(20240101, False)]
    assert query(database_url, "SELECT to_regclass('users')") == [(None,)]


def test_a_schema_qualified_tracking_table(database_url: str) -> None:
    run = up(database_url, SEED_MIGRATIONS, MIGRATIONS_TABLE="ops.migrations")
    assert run.code == 0, run.stderr
    assert applied_versions(database_url, "ops.migrations") == [1]


def test_concurrent_runners_apply_each_migration_exactly_once(
    database_url: str, migrations_dir: Path
) -> None:
    env = runner_env(database_url, migrations_dir, MIGRATION_LOCK_TIMEOUT="60")
    runs = race_of_16(migrations_dir, env)
    assert applied_versions(database_url) == [1, 2, 3, 4, 5]
    assert sum(1 for run in runs for e in run.events if e["event"] == "lock.waiting") > 0
    # Runners that waited while another applied everything stop waiting, without the lock.
    assert any(e["event"] == "lock.unneeded" for run in runs for e in run.events)
    assert advisory_locks(database_url) == 0


def test_a_held_lock_times_out_with_75_and_names_the_holder(
    database_url: str, migrations_dir: Path
) -> None:
    write_migration(migrations_dir, "1_a.up.sql", "CREATE TABLE a (id int);")
    from runner.config import TableName
    from runner.lock import lock_key

    with psycopg.connect(database_url, autocommit=True, application_name="someone-else") as holder:
        holder.execute(
            "SELECT pg_advisory_lock(%s)", (lock_key(TableName("public", "schema_migrations")),)
        )
        run = up(database_url, migrations_dir, MIGRATION_LOCK_TIMEOUT="2")
    assert run.code == 75
    waiting = run.event("lock.waiting")
    assert waiting["holder_application"] == "someone-else"
    assert waiting["holder_pid"] > 0
    assert "someone-else" in run.finished["error"]
    assert query(database_url, "SELECT to_regclass('a')") == [(None,)]


def test_sigterm_during_a_long_migration_rolls_back_and_exits_143(
    database_url: str, migrations_dir: Path
) -> None:
    write_migration(
        migrations_dir, "1_slow.up.sql", "CREATE TABLE slow (id int);\nSELECT pg_sleep(60);"
    )
    with RunnerProcess(runner_env(database_url, migrations_dir)) as runner:
        runner.wait_for("migration.started")
        # The statement is running in the server now.
        poll_until(
            lambda: runner_statements(database_url, "pg_sleep(60)") == 1,
            15,
            "the runner's pg_sleep(60) never ran",
        )
        run, elapsed = runner.stop(signal.SIGTERM)
    assert run.code == 143, run.stderr
    assert elapsed < 3
    assert run.finished["exit_code"] == 143
    assert query(database_url, "SELECT to_regclass('slow')") == [(None,)]
    assert applied_versions(database_url) == []
    assert advisory_locks(database_url) == 0
    assert query(
        database_url,
        "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'migration-runner'",
    ) == [(0,)]


def test_python_dash_m_runner_works_too(database_url: str, tmp_path: Path) -> None:
    migrations = tmp_path / "m"
    shutil.copytree(SEED_MIGRATIONS, migrations)
    result = subprocess.run(
        [sys.executable, "-m", "runner", "up"],
        env=runner_env(database_url, migrations),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert applied_versions(database_url) == [1]


@pytest.mark.parametrize("status", ["running", "failed"])
def test_a_half_applied_migration_stops_the_run_with_67(
    database_url: str, migrations_dir: Path, status: str
) -> None:
    write_migration(migrations_dir, "1_a.up.sql", "CREATE TABLE a (id int);")
    write_migration(migrations_dir, "2_b.up.sql", "CREATE TABLE b (id int);")
    assert up(database_url, migrations_dir).code == 0
    query(database_url, "UPDATE schema_migrations SET status = %s WHERE version = 2", (status,))
    write_migration(migrations_dir, "3_c.up.sql", "CREATE TABLE c (id int);")
    run = up(database_url, migrations_dir)
    assert run.code == 67
    assert f"recorded as {status}" in run.finished["error"]
    assert run.finished["failed_version"] == 2
    assert query(database_url, "SELECT to_regclass('c')") == [(None,)]
