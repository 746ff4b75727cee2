"""The server itself misbehaves: it comes up late, restarts in the middle of a migration
(fast and immediate shutdown), or refuses connections because every slot is taken."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import psycopg
import pytest

from runner.exit_codes import ExitCode
from tests.conftest import RunnerProcess, poll_until, runner_env
from tests.faults.harness import (
    Database,
    FaultRegistry,
    active_statement,
    assert_consistent,
    assert_no_runner_left,
    assert_rerun_finishes,
    migration_set,
)
from tests.pgcluster import TempCluster

pytestmark = [pytest.mark.faults, pytest.mark.cluster]


def test_the_database_comes_up_late(
    db: Database, cluster: TempCluster, migrations_dir: Path, fault_registry: FaultRegistry
) -> None:
    with fault_registry.trial("database starts 3 s after the runner"):
        versions = migration_set(migrations_dir, 3)
        cluster.stop()
        starter = threading.Timer(3.0, cluster.start)
        env = runner_env(db.url, migrations_dir, DB_WAIT_TIMEOUT="30")
        try:
            with RunnerProcess(env) as runner:
                starter.start()
                run = runner.finish()
        finally:
            starter.join()
            if not (cluster.data / "postmaster.pid").exists():
                cluster.start()
        assert run.code == 0, run.stderr
        assert run.seconds >= 3
        assert run.event("db.connected")["attempts"] >= 2
        assert assert_consistent(db, versions) == set(versions)
        assert_no_runner_left(db)
        assert_rerun_finishes(db, migrations_dir, versions, set(versions))


@pytest.mark.parametrize("mode", ["fast", "immediate"])
def test_the_server_restarts_during_a_migration(
    db: Database,
    cluster: TempCluster,
    migrations_dir: Path,
    fault_registry: FaultRegistry,
    mode: str,
) -> None:
    with fault_registry.trial(f"pg_ctl restart -m {mode} during a migration"):
        versions = migration_set(migrations_dir, 3, slow=2, seconds=3)
        with RunnerProcess(runner_env(db.url, migrations_dir)) as runner:
            poll_until(active_statement(db, "pg_sleep"), 15, "migration 2 never ran")
            cluster.restart(mode)
            run = runner.finish()
        assert run.code == ExitCode.DB_UNREACHABLE, run.stderr
        assert run.finished["retryable"] is True
        assert_no_runner_left(db)
        applied = assert_consistent(db, versions)
        if mode == "fast":
            assert applied == {1}
        else:
            # A crash may lose a commit that was acknowledged asynchronously (the runner may
            # commit with synchronous_commit off until the run ends): then the row is lost too.
            assert applied in (set(), {1})
        assert_rerun_finishes(db, migrations_dir, versions, applied)


def test_too_many_connections_for_a_while(
    db: Database, cluster: TempCluster, migrations_dir: Path, fault_registry: FaultRegistry
) -> None:
    """Every slot is taken (53300) for 3 s: the runner waits, then succeeds."""
    with fault_registry.trial("too many connections (53300) for 3 s"):
        versions = migration_set(migrations_dir, 3)
        cluster.psql("ALTER SYSTEM SET max_connections = 5")
        cluster.psql("ALTER SYSTEM SET superuser_reserved_connections = 0")
        cluster.restart()
        hogs: list[psycopg.Connection[tuple[object, ...]]] = []
        try:
            hogs += [psycopg.connect(db.url, autocommit=True) for _ in range(5)]
            with pytest.raises(psycopg.OperationalError, match="too many clients"):
                hogs.append(psycopg.connect(db.url, autocommit=True))
            env = runner_env(db.url, migrations_dir, DB_WAIT_TIMEOUT="30")
            with RunnerProcess(env) as runner:
                waiting = runner.wait_for("db.wait.attempt")
                time.sleep(3)
                for hog in hogs:
                    hog.close()
                run = runner.finish()
        finally:
            for hog in hogs:
                hog.close()
            cluster.psql("ALTER SYSTEM RESET max_connections")
            cluster.psql("ALTER SYSTEM RESET superuser_reserved_connections")
            cluster.restart()
        assert "too many clients" in waiting["error"]
        assert run.code == 0, run.stderr
        assert assert_consistent(db, versions) == set(versions)
        assert_no_runner_left(db)
        assert_rerun_finishes(db, migrations_dir, versions, set(versions))
