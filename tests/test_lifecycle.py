"""The day-2 commands through the real entrypoint: down, goto, new, baseline, repair, adopt,
await, no-transaction migrations, lock timeouts under load, --single-transaction."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import psycopg

from runner.exit_codes import ExitCode
from tests.conftest import (
    Run,
    RunnerProcess,
    query,
    run_entrypoint,
    runner_env,
    write_migration,
)


def run(database_url: str | None, migrations: Path, *args: str, **extra: str) -> Run:
    return run_entrypoint(*args, env=runner_env(database_url, migrations, **extra))


def tables(database_url: str) -> set[str]:
    rows = query(database_url, "SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
    return {row[0] for row in rows} - {"schema_migrations"}


def recorded(database_url: str) -> list[tuple[int, str]]:
    return [
        (row[0], row[1])
        for row in query(
            database_url, "SELECT version, status FROM schema_migrations ORDER BY version"
        )
    ]


def three_with_downs(directory: Path) -> None:
    for version in (1, 2, 3):
        write_migration(
            directory, f"{version}_t{version}.up.sql", f"CREATE TABLE t{version} (id int);"
        )
        write_migration(directory, f"{version}_t{version}.down.sql", f"DROP TABLE t{version};")


# -- down and goto ----------------------------------------------------------------------------


def test_down_rolls_back_the_newest_one_by_default_then_n_then_all(
    database_url: str, migrations_dir: Path
) -> None:
    three_with_downs(migrations_dir)
    assert run(database_url, migrations_dir, "up").code == 0
    first = run(database_url, migrations_dir, "down")
    assert first.code == 0, first.stderr
    assert first.finished["reverted"] == [3]
    assert tables(database_url) == {"t1", "t2"}
    assert run(database_url, migrations_dir, "up").code == 0
    two = run(database_url, migrations_dir, "down", "2")
    assert two.finished["reverted"] == [3, 2]
    assert tables(database_url) == {"t1"}
    everything = run(database_url, migrations_dir, "down", "--all")
    assert everything.finished["reverted"] == [1]
    assert tables(database_url) == set()
    assert recorded(database_url) == []


def test_down_without_a_down_file_stops_before_anything_runs(
    database_url: str, migrations_dir: Path
) -> None:
    three_with_downs(migrations_dir)
    (migrations_dir / "2_t2.down.sql").unlink()
    assert run(database_url, migrations_dir, "up").code == 0
    refused = run(database_url, migrations_dir, "down", "2")
    assert refused.code == ExitCode.INVALID_MIGRATIONS
    assert "has no .down.sql" in refused.finished["error"]
    assert tables(database_url) == {"t1", "t2", "t3"}  # not even 3 was rolled back
    assert recorded(database_url) == [(1, "applied"), (2, "applied"), (3, "applied")]


def test_a_failing_down_file_rolls_back_and_keeps_the_row(
    database_url: str, migrations_dir: Path
) -> None:
    three_with_downs(migrations_dir)
    write_migration(migrations_dir, "3_t3.down.sql", "DROP TABLE t3;\nDROP TABLE nope;")
    assert run(database_url, migrations_dir, "up").code == 0
    failed = run(database_url, migrations_dir, "down")
    assert failed.code == ExitCode.MIGRATION_FAILED
    assert failed.event("migration.failed")["line"] == 2
    assert tables(database_url) == {"t1", "t2", "t3"}
    assert len(recorded(database_url)) == 3


def test_goto_moves_up_or_down_to_exactly_a_version(
    database_url: str, migrations_dir: Path
) -> None:
    three_with_downs(migrations_dir)
    up_to_two = run(database_url, migrations_dir, "goto", "2")
    assert up_to_two.code == 0, up_to_two.stderr
    assert up_to_two.finished["applied"] == [1, 2]
    assert tables(database_url) == {"t1", "t2"}
    assert run(database_url, migrations_dir, "goto", "3").finished["applied"] == [3]
    back = run(database_url, migrations_dir, "goto", "1")
    assert back.finished["reverted"] == [3, 2]
    assert tables(database_url) == {"t1"}
    assert run(database_url, migrations_dir, "goto", "0").finished["reverted"] == [1]
    unknown = run(database_url, migrations_dir, "goto", "7")
    assert unknown.code == ExitCode.INVALID_MIGRATIONS
    assert "no migration with version 7" in unknown.finished["error"]


def test_down_and_goto_arguments_are_checked() -> None:
    env = runner_env("postgresql://u@h/d", Path("."))
    for args in (
        ("down", "x"),
        ("down", "0"),
        ("down", "2", "--all"),
        ("goto",),
        ("new",),
        ("up", "--all"),
        ("status", "3"),
    ):
        assert run_entrypoint(*args, env=env).code == ExitCode.USAGE, args


# -- new ----------------------------------------------------------------------------------------


def test_new_creates_the_next_pair_with_six_digits(migrations_dir: Path) -> None:
    write_migration(migrations_dir, "000041_old.up.sql", "SELECT 1;")
    created = run(None, migrations_dir, "new", "add_orders_table")
    assert created.code == 0, created.stderr
    assert created.stdout.split() == [
        str(migrations_dir / "000042_add_orders_table.up.sql"),
        str(migrations_dir / "000042_add_orders_table.down.sql"),
    ]
    assert (migrations_dir / "000042_add_orders_table.down.sql").exists()
    assert run(None, migrations_dir, "validate", "--offline").code == 0


def test_new_refuses_names_that_are_not_snake_case(migrations_dir: Path) -> None:
    for name in ("AddOrders", "add-orders", "add orders", "_x", "x__y", "1st"):
        refused = run(None, migrations_dir, "new", name)
        assert refused.code == ExitCode.USAGE, name
        assert "snake_case" in refused.finished["error"]
    assert list(migrations_dir.iterdir()) == []


# -- baseline and repair ----------------------------------------------------------------------


def test_baseline_records_without_running(database_url: str, migrations_dir: Path) -> None:
    three_with_downs(migrations_dir)
    query(database_url, "CREATE TABLE t1 (id int); CREATE TABLE t2 (id int)")  # made by hand
    baselined = run(database_url, migrations_dir, "baseline", "2")
    assert baselined.code == 0, baselined.stderr
    assert baselined.event("baseline.recorded")["versions"] == [1, 2]
    rows = query(database_url, "SELECT version, checksum, applied_by FROM schema_migrations")
    assert [row[0] for row in rows] == [1, 2]
    assert all(len(row[1]) == 64 and row[2].startswith("baseline by") for row in rows)
    rest = run(database_url, migrations_dir, "up")
    assert rest.finished["applied"] == [3]
    assert run(database_url, migrations_dir, "baseline", "9").code == ExitCode.INVALID_MIGRATIONS


def test_repair_clears_a_failed_migration_and_accepts_edits_only_when_asked(
    database_url: str, migrations_dir: Path
) -> None:
    three_with_downs(migrations_dir)
    assert run(database_url, migrations_dir, "up").code == 0
    query(database_url, "UPDATE schema_migrations SET status = 'failed' WHERE version = 3")
    query(database_url, "DROP TABLE t3")  # the person put the schema back
    assert run(database_url, migrations_dir, "up").code == ExitCode.NEEDS_ATTENTION
    repaired = run(database_url, migrations_dir, "repair")
    assert repaired.code == 0, repaired.stderr
    cleared = repaired.event("repair.cleared")
    assert (cleared["version"], cleared["status"]) == (3, "failed")
    assert run(database_url, migrations_dir, "up").finished["applied"] == [3]

    (migrations_dir / "1_t1.up.sql").write_text("CREATE TABLE t1 (id bigint);")
    assert run(database_url, migrations_dir, "up").code == ExitCode.INVALID_MIGRATIONS
    assert run(database_url, migrations_dir, "repair").event("repair.nothing")
    assert run(database_url, migrations_dir, "up").code == ExitCode.INVALID_MIGRATIONS
    accepted = run(database_url, migrations_dir, "repair", "--update-checksums")
    updated = accepted.event("repair.checksum_updated")
    assert (updated["version"], updated["file"]) == (1, "1_t1.up.sql")
    assert updated["old_checksum"] != updated["new_checksum"]
    assert run(database_url, migrations_dir, "up").code == 0


# -- adopt --------------------------------------------------------------------------------------


def test_adopt_takes_over_golang_migrate(database_url: str, migrations_dir: Path) -> None:
    three_with_downs(migrations_dir)
    # Exactly as golang-migrate's postgres driver creates and fills its table.
    query(
        database_url,
        'CREATE TABLE IF NOT EXISTS "schema_migrations" '
        "(version bigint not null primary key, dirty boolean not null)",
    )
    query(database_url, 'INSERT INTO "schema_migrations" (version, dirty) VALUES (2, false)')
    query(database_url, "CREATE TABLE t1 (id int); CREATE TABLE t2 (id int)")
    assert run(database_url, migrations_dir, "up").code == ExitCode.NEEDS_ATTENTION
    adopted = run(database_url, migrations_dir, "adopt")
    assert adopted.code == 0, adopted.stderr
    assert adopted.event("adopt.done")["kept_as"] == "schema_migrations_golang_migrate"
    assert recorded(database_url) == [(1, "applied"), (2, "applied")]
    assert query(database_url, "SELECT version, dirty FROM schema_migrations_golang_migrate") == [
        (2, False)
    ]
    assert run(database_url, migrations_dir, "up").finished["applied"] == [3]
    assert run(database_url, migrations_dir, "adopt").event("adopt.nothing")


def test_adopt_refuses_a_dirty_golang_migrate_database(
    database_url: str, migrations_dir: Path
) -> None:
    three_with_downs(migrations_dir)
    query(
        database_url,
        'CREATE TABLE IF NOT EXISTS "schema_migrations" '
        "(version bigint not null primary key, dirty boolean not null)",
    )
    query(database_url, 'INSERT INTO "schema_migrations" (version, dirty) VALUES (2, true)')
    refused = run(database_url, migrations_dir, "adopt")
    assert refused.code == ExitCode.NEEDS_ATTENTION
    assert "dirty" in refused.finished["error"]
    assert query(database_url, "SELECT version, dirty FROM schema_migrations") == [(2, True)]


def test_adopt_takes_over_dbmate(database_url: str, migrations_dir: Path) -> None:
    three_with_downs(migrations_dir)
    # Exactly as dbmate's postgres driver creates and fills its table.
    query(
        database_url,
        "create table if not exists public.schema_migrations (version varchar(128) primary key)",
    )
    query(database_url, "insert into public.schema_migrations (version) values ('1'), ('3')")
    adopted = run(database_url, migrations_dir, "adopt", "--allow-out-of-order")
    assert adopted.code == 0, adopted.stderr
    assert adopted.event("adopt.done")["kept_as"] == "schema_migrations_dbmate"
    assert recorded(database_url) == [(1, "applied"), (3, "applied")]
    assert query(database_url, "SELECT count(*) FROM schema_migrations_dbmate") == [(2,)]


# -- await --------------------------------------------------------------------------------------


def test_await_waits_for_the_schema_without_locking_or_writing(
    database_url: str, migrations_dir: Path
) -> None:
    three_with_downs(migrations_dir)
    early = run(database_url, migrations_dir, "await", AWAIT_TIMEOUT="1.5")
    assert early.code == ExitCode.TEMPORARY_FAILURE
    assert "3 migration(s) still not applied" in early.finished["error"]
    assert query(database_url, "SELECT to_regclass('schema_migrations')") == [(None,)]

    env = runner_env(database_url, migrations_dir, AWAIT_TIMEOUT="30")
    with RunnerProcess(env, "await") as waiter:
        waiter.wait_for("await.waiting")  # it looked, and is waiting
        assert waiter.process.poll() is None
        assert run(database_url, migrations_dir, "up").code == 0
        awaited = waiter.finish(timeout=30)
    assert awaited.code == 0, awaited.stderr
    assert awaited.event("await.ready")


def test_await_refuses_a_database_newer_than_the_image(
    database_url: str, migrations_dir: Path
) -> None:
    three_with_downs(migrations_dir)
    assert run(database_url, migrations_dir, "up").code == 0
    for version in (2, 3):
        (migrations_dir / f"{version}_t{version}.up.sql").unlink()
        (migrations_dir / f"{version}_t{version}.down.sql").unlink()
    newer = run(database_url, migrations_dir, "await", AWAIT_TIMEOUT="10")
    assert newer.code == ExitCode.INVALID_MIGRATIONS
    assert "database is newer" in newer.finished["error"]


# -- migrations that cannot run in a transaction ----------------------------------------------


def test_a_non_transactional_statement_in_an_ordinary_file_is_reported_first(
    database_url: str, migrations_dir: Path
) -> None:
    write_migration(migrations_dir, "1_a.up.sql", "CREATE TABLE a (id int);")
    write_migration(
        migrations_dir,
        "2_idx.up.sql",
        "-- index it\n\nCREATE INDEX CONCURRENTLY idx_a_id ON a (id);",
    )
    refused = run(database_url, migrations_dir, "up")
    assert refused.code == ExitCode.INVALID_MIGRATIONS
    error = refused.finished["error"]
    assert "2_idx.up.sql: line 3: CREATE INDEX CONCURRENTLY" in error
    assert "-- migrate:no-transaction" in error
    assert tables(database_url) == set()


def test_create_index_concurrently_runs_outside_a_transaction(
    database_url: str, migrations_dir: Path
) -> None:
    write_migration(migrations_dir, "1_a.up.sql", "CREATE TABLE a (id int, v text);")
    write_migration(
        migrations_dir,
        "2_idx.up.sql",
        "-- migrate:no-transaction\nCREATE INDEX CONCURRENTLY idx_a_id ON a (id);\n"
        "CREATE INDEX CONCURRENTLY idx_a_v ON a (v);\nVACUUM ANALYZE a;",
    )
    applied = run(database_url, migrations_dir, "up")
    assert applied.code == 0, applied.stderr
    assert recorded(database_url) == [(1, "applied"), (2, "applied")]
    valid = query(
        database_url,
        "SELECT c.relname, i.indisvalid FROM pg_index i "
        "JOIN pg_class c ON c.oid = i.indexrelid ORDER BY 1",
    )
    assert ("idx_a_id", True) in valid
    assert ("idx_a_v", True) in valid


def test_a_failed_concurrent_index_with_more_in_its_file_needs_repair_then_heals_itself(
    database_url: str, migrations_dir: Path
) -> None:
    # ANALYZE makes the file not retry-safe as a whole (tests/test_failures.py has the
    # retry of a file of index builds only).
    write_migration(
        migrations_dir, "1_a.up.sql", "CREATE TABLE a (id int); INSERT INTO a VALUES (1), (1);"
    )
    write_migration(
        migrations_dir,
        "2_idx.up.sql",
        "-- migrate:no-transaction\nCREATE UNIQUE INDEX CONCURRENTLY idx_a_id ON a (id);\n"
        "ANALYZE a;",
    )
    failed = run(database_url, migrations_dir, "up")
    assert failed.code == ExitCode.MIGRATION_FAILED
    assert failed.event("migration.failed")["sqlstate"] == "23505"
    assert recorded(database_url) == [(1, "applied"), (2, "failed")]
    # The failed build left an invalid index behind.
    assert query(
        database_url, "SELECT indisvalid FROM pg_index WHERE indexrelid = 'idx_a_id'::regclass"
    ) == [(False,)]
    blocked = run(database_url, migrations_dir, "up")
    assert blocked.code == ExitCode.NEEDS_ATTENTION
    assert "migration 2" in blocked.finished["error"]
    query(database_url, "DELETE FROM a WHERE ctid = (SELECT max(ctid) FROM a)")
    assert run(database_url, migrations_dir, "repair").code == 0
    healed = run(database_url, migrations_dir, "up")
    assert healed.code == 0, healed.stderr
    assert healed.event("index.invalid_dropped")["index"] == "public.idx_a_id"
    assert query(
        database_url, "SELECT indisvalid FROM pg_index WHERE indexrelid = 'idx_a_id'::regclass"
    ) == [(True,)]
    assert recorded(database_url) == [(1, "applied"), (2, "applied")]


# -- lock timeouts under load -----------------------------------------------------------------


def _alter_users_while_locked(
    database_url: str, migrations_dir: Path, hold_seconds: float, **settings: str
) -> Run:
    """Run up on `ALTER TABLE users` while another session holds a lock on users."""
    write_migration(migrations_dir, "1_users.up.sql", "CREATE TABLE users (id int);")
    assert run(database_url, migrations_dir, "up").code == 0
    write_migration(
        migrations_dir,
        "2_alter.up.sql",
        "CREATE TABLE side (id int);\nALTER TABLE users ADD COLUMN email text;",
    )
    ready = threading.Event()

    def hold() -> None:
        with psycopg.connect(database_url, application_name="busy-app") as conn:
            conn.execute("LOCK TABLE users IN ACCESS SHARE MODE")
            ready.set()
            time.sleep(hold_seconds)
            conn.rollback()

    holder = threading.Thread(target=hold)
    holder.start()
    ready.wait(10)
    try:
        return run(database_url, migrations_dir, "up", **settings)
    finally:
        holder.join()


def test_a_locked_table_makes_the_migration_retry_then_succeed(
    database_url: str, migrations_dir: Path
) -> None:
    result = _alter_users_while_locked(
        database_url, migrations_dir, 2.5, DDL_LOCK_TIMEOUT="0.5", DDL_LOCK_RETRIES="20"
    )
    assert result.code == 0, result.stderr
    retries = [e for e in result.events if e["event"] == "migration.lock_timeout"]
    assert retries
    blockers = [b for e in retries for b in e["blockers"]]
    assert any(b["application_name"] == "busy-app" for b in blockers)
    assert {"pid", "state", "transaction_age_s", "query"} <= set(blockers[0])
    assert recorded(database_url) == [(1, "applied"), (2, "applied")]


def test_a_long_held_lock_exhausts_the_retries_with_75_and_leaves_nothing(
    database_url: str, migrations_dir: Path
) -> None:
    result = _alter_users_while_locked(
        database_url, migrations_dir, 6, DDL_LOCK_TIMEOUT="0.3", DDL_LOCK_RETRIES="2"
    )
    assert result.code == ExitCode.TEMPORARY_FAILURE
    assert "busy-app" in result.finished["error"]
    assert result.finished["retryable"] is True
    assert tables(database_url) == {"users"}
    assert recorded(database_url) == [(1, "applied")]


def test_statement_timeout_fails_the_migration(database_url: str, migrations_dir: Path) -> None:
    write_migration(
        migrations_dir, "1_slow.up.sql", "CREATE TABLE a (id int);\nSELECT pg_sleep(3);"
    )
    result = run(database_url, migrations_dir, "up", STATEMENT_TIMEOUT="0.5")
    assert result.code == ExitCode.MIGRATION_FAILED
    assert result.event("migration.failed")["sqlstate"] == "57014"
    assert "STATEMENT_TIMEOUT" in result.finished["error"]
    assert tables(database_url) == set()


# -- single transaction -------------------------------------------------------------------------


def test_single_transaction_is_all_or_nothing(database_url: str, migrations_dir: Path) -> None:
    three_with_downs(migrations_dir)
    write_migration(migrations_dir, "4_bad.up.sql", "CREATE TABLE t4 (id int);\nSELECT 1/0;")
    failed = run(database_url, migrations_dir, "up", "--single-transaction")
    assert failed.code == ExitCode.MIGRATION_FAILED
    assert failed.event("migration.failed")["version"] == 4
    assert failed.event("migration.failed")["line"] == 2
    assert tables(database_url) == set()
    assert recorded(database_url) == []
    (migrations_dir / "4_bad.up.sql").unlink()
    applied = run(database_url, migrations_dir, "up", "--single-transaction")
    assert applied.code == 0, applied.stderr
    assert applied.finished["applied"] == [1, 2, 3]
    assert tables(database_url) == {"t1", "t2", "t3"}


def test_single_transaction_refuses_a_no_transaction_file(
    database_url: str, migrations_dir: Path
) -> None:
    write_migration(migrations_dir, "1_a.up.sql", "CREATE TABLE a (id int);")
    write_migration(migrations_dir, "2_v.up.sql", "-- migrate:no-transaction\nVACUUM a;")
    refused = run(database_url, migrations_dir, "up", "--single-transaction")
    assert refused.code == ExitCode.INVALID_MIGRATIONS
    assert "2_v.up.sql" in refused.finished["error"]
    assert tables(database_url) == set()


def test_messages_name_the_repair_command_and_repair_can_take_one_version(
    database_url: str, migrations_dir: Path
) -> None:
    write_migration(migrations_dir, "1_a.up.sql", "CREATE TABLE a (id int);")
    write_migration(
        migrations_dir,
        "2_idx.up.sql",
        "-- migrate:no-transaction\nCREATE INDEX CONCURRENTLY idx_a_id ON a (id);\nSELECT 1/0;",
    )
    assert run(database_url, migrations_dir, "up").code == ExitCode.MIGRATION_FAILED
    halted = run(database_url, migrations_dir, "up")
    assert halted.code == ExitCode.NEEDS_ATTENTION
    assert "`migration-runner repair --version 2`" in halted.finished["error"]
    (migrations_dir / "1_a.up.sql").write_text("CREATE TABLE a (id int); -- reviewed")
    edited = run(database_url, migrations_dir, "validate")
    assert "`migration-runner repair --update-checksums --version 1`" in edited.stderr
    unknown = run(database_url, migrations_dir, "repair", "--version", "7")
    assert unknown.code == ExitCode.INVALID_MIGRATIONS
    assert "version 7 has no row" in unknown.finished["error"]
    only_two = run(database_url, migrations_dir, "repair", "--update-checksums", "--version", "2")
    assert only_two.code == 0, only_two.stderr
    assert recorded(database_url) == [(1, "applied")]
    assert not any(e["event"] == "repair.checksum_updated" for e in only_two.events)
    assert run(database_url, migrations_dir, "repair", "--version", "x").code == ExitCode.USAGE
    accepted = run(database_url, migrations_dir, "repair", "--update-checksums", "--version", "1")
    assert accepted.event("repair.checksum_updated")["version"] == 1


def test_every_command_has_its_own_help() -> None:
    env = runner_env(None, Path("."))
    for command in ("up", "down", "repair", "status", "validate"):
        shown = run_entrypoint(command, "--help", env=env)
        assert shown.code == 0
        assert f"usage: migration-runner {command}" in shown.stdout
    assert "--update-checksums" in run_entrypoint("repair", "--help", env=env).stdout
    assert "--update-checksums" not in run_entrypoint("up", "--help", env=env).stdout


def test_a_rolled_back_image_starts_with_ignore_future(
    database_url: str, migrations_dir: Path
) -> None:
    three_with_downs(migrations_dir)
    assert run(database_url, migrations_dir, "up").code == 0
    for version in (3,):  # the older image does not know version 3
        (migrations_dir / f"{version}_t{version}.up.sql").unlink()
        (migrations_dir / f"{version}_t{version}.down.sql").unlink()
    assert run(database_url, migrations_dir, "await").code == ExitCode.INVALID_MIGRATIONS
    for args, extra in (
        (("await", "--ignore-future"), {}),
        (("await",), {"IGNORE_FUTURE_VERSIONS": "true"}),
        (("up", "--ignore-future"), {}),
        (("status", "--ignore-future"), {}),
    ):
        allowed = run(database_url, migrations_dir, *args, **extra)
        assert allowed.code == 0, (args, allowed.stderr)
        assert allowed.event("plan.future_versions")["versions"] == [3]
    # A lower version whose file is gone was deleted, not newer: still refused.
    (migrations_dir / "1_t1.up.sql").unlink()
    (migrations_dir / "1_t1.down.sql").unlink()
    deleted = run(database_url, migrations_dir, "up", "--ignore-future")
    assert deleted.code == ExitCode.INVALID_MIGRATIONS
    assert "migration 1 (t1) is applied in the database but has no file" in deleted.stderr
