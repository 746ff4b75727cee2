"""Consecutive small migrations sent together: each still commits alone with its row, and a
failure stops at its own block with everything before it committed and recorded."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import psycopg
import pytest

from runner import commands, db
from runner.config import from_env
from tests.conftest import Run, query, run_entrypoint, runner_env, write_migration


def up(database_url: str, migrations: Path, **extra: str) -> Run:
    return run_entrypoint("up", env=runner_env(database_url, migrations, **extra))


def recorded(database_url: str) -> list[tuple[int, str]]:
    return [
        (int(version), str(status))
        for version, status in query(
            database_url, "SELECT version, status FROM schema_migrations ORDER BY version"
        )
    ]


def tables(database_url: str) -> list[str]:
    rows = query(
        database_url,
        "SELECT tablename FROM pg_tables WHERE schemaname = 'public' "
        "AND tablename <> 'schema_migrations' ORDER BY 1",
    )
    return [str(row[0]) for row in rows]


def of(run: Run, event: str) -> list[dict[str, Any]]:
    return [entry for entry in run.events if entry["event"] == event]


def write_tables(directory: Path, versions: range) -> None:
    for version in versions:
        write_migration(
            directory, f"{version}_t{version}.up.sql", f"CREATE TABLE t{version} (id int);"
        )


def test_many_small_migrations_each_get_their_row_and_their_lines(
    database_url: str, migrations_dir: Path
) -> None:
    write_tables(migrations_dir, range(1, 41))
    run = up(database_url, migrations_dir)
    assert run.code == 0, run.stderr
    assert run.finished["applied"] == list(range(1, 41))
    assert recorded(database_url) == [(version, "applied") for version in range(1, 41)]
    assert tables(database_url) == sorted(f"t{version}" for version in range(1, 41))
    # One started and one applied line per migration, in order; the first runs alone and
    # the rest in batches that say how many went together.
    migration_lines = [
        (entry["event"], entry["version"])
        for entry in run.events
        if entry["event"] in ("migration.started", "migration.applied")
    ]
    assert [line for line in migration_lines if line[0] == "migration.started"] == [
        ("migration.started", version) for version in range(1, 41)
    ]
    assert [line for line in migration_lines if line[0] == "migration.applied"] == [
        ("migration.applied", version) for version in range(1, 41)
    ]
    applied = of(run, "migration.applied")
    assert "batch" not in applied[0]
    # Batches of 1, 2, 4, 8, 16 and the 9 left: 6 round trips for 40 migrations.
    assert [entry["batch"] for entry in applied[1:]] == [2] * 2 + [4] * 4 + [8] * 8 + [16] * 16 + [
        9
    ] * 9
    assert all(entry["statements"] == 1 for entry in applied)
    assert all(entry["duration_ms"] >= 0 for entry in applied)
    for entry in run.events:  # every line of a migration comes after its `started`
        if entry["event"] == "migration.applied":
            started = of(run, "migration.started")
            assert run.events.index(entry) > run.events.index(
                next(s for s in started if s["version"] == entry["version"])
            )


def test_a_failure_in_a_batch_keeps_what_came_before_and_runs_nothing_after(
    database_url: str, migrations_dir: Path
) -> None:
    write_tables(migrations_dir, range(1, 6))
    write_migration(
        migrations_dir,
        "6_bad.up.sql",
        "CREATE TABLE t6 (id int);\n\nINSERT INTO t6 VALUES ('not a number');\n",
    )
    write_tables(migrations_dir, range(7, 9))
    run = up(database_url, migrations_dir)
    assert run.code == 65, run.stderr
    assert run.finished["applied"] == [1, 2, 3, 4, 5]
    assert run.finished["failed_version"] == 6
    failed = run.event("migration.failed")
    assert failed["file"] == "6_bad.up.sql"
    assert failed["line"] == 3
    assert failed["sqlstate"] == "22P02"
    assert recorded(database_url) == [(version, "applied") for version in range(1, 6)]
    assert tables(database_url) == ["t1", "t2", "t3", "t4", "t5"]  # nothing of 6, 7 or 8
    # The next run, with the file fixed, goes on from 6.
    write_migration(migrations_dir, "6_bad.up.sql", "CREATE TABLE t6 (id int);\n")
    again = up(database_url, migrations_dir)
    assert again.code == 0, again.stderr
    assert again.finished["applied"] == [6, 7, 8]


def test_a_syntax_error_in_a_later_block_names_its_own_file_and_line(
    database_url: str, migrations_dir: Path
) -> None:
    write_tables(migrations_dir, range(1, 6))
    write_migration(migrations_dir, "6_typo.up.sql", "CREATE TABLE t6 (id int);\nSELEC 1;\n")
    write_tables(migrations_dir, range(7, 9))
    run = up(database_url, migrations_dir)
    assert run.code == 65, run.stderr
    failed = run.event("migration.failed")
    assert (failed["file"], failed["line"], failed["sqlstate"]) == ("6_typo.up.sql", 2, "42601")
    assert run.finished["applied"] == [1, 2, 3, 4, 5]
    assert recorded(database_url) == [(version, "applied") for version in range(1, 6)]
    assert "t6" not in tables(database_url)
    # Each migration is announced once, even when its batch is sent again one by one.
    started = [entry["version"] for entry in of(run, "migration.started")]
    assert started == sorted(set(started))


def test_a_notice_in_a_batch_names_the_migration_that_raised_it(
    database_url: str, migrations_dir: Path
) -> None:
    write_tables(migrations_dir, range(1, 4))
    for version in (4, 5, 6):
        write_migration(
            migrations_dir,
            f"{version}_say.up.sql",
            f"DO $$ BEGIN RAISE NOTICE 'from {version}'; END $$;\n"
            f"CREATE TABLE t{version} (id int);\n",
        )
    run = up(database_url, migrations_dir)
    assert run.code == 0, run.stderr
    notices = [(entry["version"], entry["notice"]) for entry in of(run, "migration.notice")]
    assert notices == [(4, "from 4"), (5, "from 5"), (6, "from 6")]


def test_a_locked_table_in_a_batch_retries_that_migration_alone(
    database_url: str, migrations_dir: Path
) -> None:
    write_migration(migrations_dir, "1_users.up.sql", "CREATE TABLE users (id int);")
    assert up(database_url, migrations_dir).code == 0
    # Batches of 1, 2 and 4: the ALTER is the second block of the third.
    write_tables(migrations_dir, range(2, 6))
    write_migration(migrations_dir, "6_alter.up.sql", "ALTER TABLE users ADD COLUMN email text;")
    write_tables(migrations_dir, range(7, 9))
    ready = threading.Event()

    def hold() -> None:
        with psycopg.connect(database_url, application_name="busy-app") as conn:
            conn.execute("LOCK TABLE users IN ACCESS SHARE MODE")
            ready.set()
            time.sleep(2.0)
            conn.rollback()

    holder = threading.Thread(target=hold)
    holder.start()
    ready.wait(10)
    try:
        run = up(database_url, migrations_dir, DDL_LOCK_TIMEOUT="0.4", DDL_LOCK_RETRIES="20")
    finally:
        holder.join()
    assert run.code == 0, run.stderr
    assert run.finished["applied"] == [2, 3, 4, 5, 6, 7, 8]
    timeouts = of(run, "migration.lock_timeout")
    assert timeouts
    assert {entry["version"] for entry in timeouts} == {6}
    assert recorded(database_url) == [(version, "applied") for version in range(1, 9)]
    assert [entry["version"] for entry in of(run, "migration.started")] == list(range(2, 9))


def test_each_row_of_a_batch_holds_its_own_start_and_duration(
    database_url: str, migrations_dir: Path
) -> None:
    write_tables(migrations_dir, range(1, 2))
    for version in (2, 3):  # the batch of two
        write_migration(
            migrations_dir,
            f"{version}_slow.up.sql",
            f"CREATE TABLE t{version} (id int);\nSELECT pg_sleep(0.3);\n",
        )
    run = up(database_url, migrations_dir)
    assert run.code == 0, run.stderr
    assert [entry["batch"] for entry in of(run, "migration.applied")[1:]] == [2, 2]
    rows = query(
        database_url,
        "SELECT version, execution_ms, "
        "extract(epoch FROM applied_at - lag(applied_at) OVER (ORDER BY version)) * 1000 "
        "FROM schema_migrations ORDER BY version",
    )
    (_, _, _), (_, second_ms, _), (_, third_ms, third_started_after) = rows
    # Not measured from the batch's start, which would make the third 600 ms.
    assert 290 <= second_ms < 550
    assert 290 <= third_ms < 550
    assert 290 <= float(third_started_after) < 550
    durations = {entry["version"]: entry["duration_ms"] for entry in of(run, "migration.applied")}
    assert (durations[2], durations[3]) == (second_ms, third_ms)


def test_a_signal_while_a_batch_runs_reports_exactly_what_committed(
    database_url: str, migrations_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The signal comes while the runner writes its log lines, the batch in flight: the
    statement running is cancelled, and what the run reports applied is what the table holds."""
    write_tables(migrations_dir, range(1, 3))
    write_migration(
        migrations_dir, "3_slow.up.sql", "CREATE TABLE t3 (id int);\nSELECT pg_sleep(20);\n"
    )
    real_run_script = db.run_script

    def signal_meanwhile(conn: db.Connection, script: str, **kwargs: Any) -> int:
        if "pg_sleep" in script and kwargs.get("meanwhile") is not None:
            kwargs["meanwhile"] = _interrupt
        return real_run_script(conn, script, **kwargs)

    monkeypatch.setattr(db, "run_script", signal_meanwhile)
    settings = from_env({"DATABASE_URL": database_url, "MIGRATIONS_DIR": str(migrations_dir)})
    report = commands.RunReport(command="up")
    started = time.monotonic()
    with pytest.raises(KeyboardInterrupt):
        commands.up(settings, report)
    assert time.monotonic() - started < 15
    monkeypatch.undo()
    assert [version for version, _ in recorded(database_url)] == report.applied
    assert report.applied in ([1], [1, 2])
    assert "t3" not in tables(database_url)
    assert report.in_flight is not None


def _interrupt() -> None:
    raise KeyboardInterrupt
