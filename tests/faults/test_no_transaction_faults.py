"""Faults during a no-transaction migration (first line `-- migrate:no-transaction`: statement
by statement outside a transaction, its row written `running` first, then `applied`).

A death or failure leaves the row `running` or `failed`; every later run exits 67 naming the
version until `entrypoint.py repair` deletes that row; then the migration runs again (so it
must be written to be re-runnable, as these are: IF NOT EXISTS)."""

from __future__ import annotations

import signal
from pathlib import Path

import pytest

from runner.exit_codes import ExitCode
from tests.conftest import RunnerProcess, poll_until, run_entrypoint, runner_env
from tests.faults.harness import (
    SIGNAL_EXIT,
    Database,
    FaultRegistry,
    active_statement,
    assert_no_runner_left,
    recorded,
    runner_pid,
    write,
)

pytestmark = [pytest.mark.faults, pytest.mark.cluster]

NO_TRANSACTION = """-- migrate:no-transaction
CREATE TABLE IF NOT EXISTS nt_first (id int);
SELECT pg_sleep({seconds});
CREATE TABLE IF NOT EXISTS nt_second (id int);
"""


def no_transaction_set(directory: Path, seconds: float = 3) -> None:
    write(directory, "1_first.up.sql", "CREATE TABLE t1 (id int);\n")
    write(directory, "2_concurrently.up.sql", NO_TRANSACTION.format(seconds=seconds))
    write(directory, "3_third.up.sql", "CREATE TABLE t3 (id int);\n")


def tables(db: Database) -> set[str]:
    rows = db.query(
        "SELECT tablename FROM pg_tables WHERE schemaname = 'public' "
        "AND tablename <> 'schema_migrations'"
    )
    return {row[0] for row in rows}


def assert_stuck_then_repaired(db: Database, migrations: Path) -> None:
    """Every run exits 67 naming version 2 until `repair`; then a plain run finishes."""
    status = recorded(db)
    assert status.get(1) == "applied"
    assert status.get(2) in ("running", "failed"), status
    assert 3 not in status
    assert "t3" not in tables(db)
    env = runner_env(db.url, migrations)
    for _ in range(2):
        again = run_entrypoint("up", env=env)
        assert again.code == ExitCode.NEEDS_ATTENTION, again.stderr
        assert again.finished["failed_version"] == 2
        assert "2" in again.finished["error"]
        assert recorded(db) == status  # refused: nothing changed
        assert "t3" not in tables(db)
    assert_no_runner_left(db)
    repaired = run_entrypoint("repair", env=env)
    assert repaired.code == 0, repaired.stderr
    assert recorded(db) == {1: "applied"}
    final = run_entrypoint("up", env=env)
    assert final.code == 0, final.stderr
    assert final.finished["applied"] == [2, 3]
    assert recorded(db) == {1: "applied", 2: "applied", 3: "applied"}
    assert tables(db) == {"t1", "nt_first", "nt_second", "t3"}
    assert_no_runner_left(db)


@pytest.mark.parametrize("signum", [signal.SIGKILL, signal.SIGTERM, signal.SIGINT])
def test_a_signal_during_a_no_transaction_migration(
    db: Database, migrations_dir: Path, fault_registry: FaultRegistry, signum: signal.Signals
) -> None:
    with fault_registry.trial(f"{signum.name} during a no-transaction migration"):
        no_transaction_set(migrations_dir)
        with RunnerProcess(runner_env(db.url, migrations_dir)) as runner:
            poll_until(active_statement(db, "pg_sleep"), 15, "the sleep never ran")
            runner.send(signum)
            run = runner.finish(timeout=15)
        assert run.code == SIGNAL_EXIT[signum], run.stderr
        assert_no_runner_left(db)
        if signum == signal.SIGKILL:
            assert recorded(db)[2] == "running"
        else:  # the last words say what is left, not "rolled back"
            error = run.finished["error"]
            assert "migration 2 stopped half-way" in error, error
            assert "`migration-runner repair --version 2`" in error
        # The first statement committed on its own; the one after the sleep never ran.
        assert tables(db) == {"t1", "nt_first"}
        assert_stuck_then_repaired(db, migrations_dir)


def test_a_lost_connection_during_a_no_transaction_migration(
    db: Database, migrations_dir: Path, fault_registry: FaultRegistry
) -> None:
    with fault_registry.trial("pg_terminate_backend during a no-transaction migration"):
        no_transaction_set(migrations_dir)
        with RunnerProcess(runner_env(db.url, migrations_dir)) as runner:
            poll_until(active_statement(db, "pg_sleep"), 15, "the sleep never ran")
            db.query("SELECT pg_terminate_backend(%s)", (runner_pid(db),))
            run = runner.finish()
        assert run.code == ExitCode.DB_UNREACHABLE, run.stderr
        assert_no_runner_left(db)
        assert recorded(db)[2] == "running"  # nobody could mark it failed
        assert tables(db) == {"t1", "nt_first"}
        assert_stuck_then_repaired(db, migrations_dir)


def test_a_failing_statement_in_a_no_transaction_migration(
    db: Database, migrations_dir: Path, fault_registry: FaultRegistry
) -> None:
    with fault_registry.trial("a failing statement in a no-transaction migration"):
        no_transaction_set(migrations_dir, seconds=0)
        broken = NO_TRANSACTION.format(seconds=0).replace("SELECT pg_sleep(0);", "SELECT 1 / 0;")
        write(migrations_dir, "2_concurrently.up.sql", broken)
        run = run_entrypoint("up", env=runner_env(db.url, migrations_dir))
        assert run.code == ExitCode.MIGRATION_FAILED, run.stderr
        assert run.finished["failed_version"] == 2
        assert recorded(db)[2] == "failed"
        assert tables(db) == {"t1", "nt_first"}
        # A person fixes the file (its row is cleared by repair, so the new checksum is fine).
        write(migrations_dir, "2_concurrently.up.sql", NO_TRANSACTION.format(seconds=0))
        assert_stuck_then_repaired(db, migrations_dir)
