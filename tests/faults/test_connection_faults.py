"""The runner's connection is cut before, during and after a migration's COMMIT: by a proxy that
drops it, and by pg_terminate_backend() from another session. The runner cannot know whether a
COMMIT cut short happened: the re-run reads the tracking table, never guesses."""

from __future__ import annotations

import time
from collections.abc import Iterator
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
    assert_survived,
    migration_set,
    recorded,
    runner_pid,
)
from tests.pgcluster import TempCluster
from tests.tcpproxy import TcpProxy

pytestmark = [pytest.mark.faults, pytest.mark.cluster]

# Matched anywhere in what the client sends: a `Q COMMIT` message of its own, or the end of a
# migration sent as one simple query (BEGIN; file; INSERT row; COMMIT).
COMMIT = b"COMMIT"
RECORD = b'INSERT INTO "public"."schema_migrations"'


@pytest.fixture
def proxy(cluster: TempCluster) -> Iterator[TcpProxy]:
    with TcpProxy(cluster.port) as proxy:
        yield proxy


def lost_connection(run_code: int, stderr: str) -> None:
    """A lost connection is retryable (69), and says that the re-run will know."""
    assert run_code == ExitCode.DB_UNREACHABLE, stderr


@pytest.mark.parametrize(
    ("fault", "pattern", "forward", "committed"),
    [
        ("proxy drops the record INSERT (before COMMIT)", RECORD, False, False),
        ("proxy drops COMMIT before the server sees it", COMMIT, False, False),
        ("proxy drops the connection right after COMMIT", COMMIT, True, True),
    ],
)
def test_proxy_cuts_the_connection_around_commit(
    db: Database,
    proxy: TcpProxy,
    migrations_dir: Path,
    fault_registry: FaultRegistry,
    fault: str,
    pattern: bytes,
    forward: bool,
    committed: bool,
) -> None:
    with fault_registry.trial(fault):
        versions = migration_set(migrations_dir, 3)
        fired = proxy.drop_when(pattern, forward=forward, delay=0.3 if forward else 0)
        with RunnerProcess(runner_env(db.url_via(proxy.port), migrations_dir)) as runner:
            run = runner.finish()
        assert fired.is_set()
        lost_connection(run.code, run.stderr)
        assert run.finished["retryable"] is True
        assert_no_runner_left(db)
        applied = assert_consistent(db, versions)
        assert applied == ({1} if committed else set())
        assert_rerun_finishes(db, migrations_dir, versions, applied)


def test_proxy_cuts_the_connection_during_a_slow_commit(
    db: Database, proxy: TcpProxy, migrations_dir: Path, fault_registry: FaultRegistry
) -> None:
    with fault_registry.trial("proxy drops the connection during COMMIT"):
        versions = migration_set(migrations_dir, 3, slow_commit=1, seconds=1.5)
        fired = proxy.drop_when(COMMIT, forward=True, delay=0.5)
        with RunnerProcess(runner_env(db.url_via(proxy.port), migrations_dir)) as runner:
            run = runner.finish()
        assert fired.is_set()
        lost_connection(run.code, run.stderr)
        assert_no_runner_left(db)
        # The server did not notice the client leave while it committed: the commit happened.
        applied = assert_consistent(db, versions)
        assert_rerun_finishes(db, migrations_dir, versions, applied)


def test_proxy_drops_every_connection_while_a_migration_runs(
    db: Database, proxy: TcpProxy, migrations_dir: Path, fault_registry: FaultRegistry
) -> None:
    with fault_registry.trial("proxy drops all connections during a migration"):
        versions = migration_set(migrations_dir, 3, slow=2, seconds=2)
        with RunnerProcess(runner_env(db.url_via(proxy.port), migrations_dir)) as runner:
            runner.wait_for("migration.started", version=2)
            poll_until(active_statement(db, "pg_sleep"), 15, "migration 2 never ran")
            # The runner's session, and the lock-blocker probe's, which connects when armed.
            assert proxy.drop_all() in (1, 2)
            run = runner.finish()
        lost_connection(run.code, run.stderr)
        assert_no_runner_left(db)
        # The server does not notice the client leave while it runs the migration; when the
        # migration travels as one query with its COMMIT, it commits anyway, and so does 3,
        # sent in the same batch.
        applied = assert_consistent(db, versions)
        assert applied in ({1}, {1, 2}, {1, 2, 3})
        assert_rerun_finishes(db, migrations_dir, versions, applied)


def test_proxy_refuses_connections_for_a_while(
    db: Database, proxy: TcpProxy, migrations_dir: Path, fault_registry: FaultRegistry
) -> None:
    with fault_registry.trial("proxy refuses connections for 2 s"):
        versions = migration_set(migrations_dir, 3)
        proxy.refuse()
        env = runner_env(db.url_via(proxy.port), migrations_dir, DB_WAIT_TIMEOUT="30")
        with RunnerProcess(env) as runner:
            runner.wait_for("db.wait.attempt")
            time.sleep(2)
            assert runner.process.poll() is None  # still waiting
            proxy.accept()
            run = runner.finish()
        assert run.code == 0, run.stderr
        assert "refused" in runner.wait_for("db.wait.attempt")["error"]
        assert assert_consistent(db, versions) == set(versions)
        assert_rerun_finishes(db, migrations_dir, versions, set(versions))


def _terminate(db: Database) -> None:
    pid = runner_pid(db)
    assert db.query("SELECT pg_terminate_backend(%s)", (pid,)) == [(True,)]


def test_terminate_backend_before_commit(
    db: Database, migrations_dir: Path, fault_registry: FaultRegistry
) -> None:
    """While the migration's body runs: nothing of it may remain."""
    with fault_registry.trial("pg_terminate_backend before COMMIT (body running)"):
        versions = migration_set(migrations_dir, 3, slow=1, seconds=3)
        with RunnerProcess(runner_env(db.url, migrations_dir)) as runner:
            poll_until(active_statement(db, "pg_sleep"), 15, "migration 1 never ran")
            _terminate(db)
            run = runner.finish()
        lost_connection(run.code, run.stderr)
        assert_survived(db, migrations_dir, versions, [set()])


def test_terminate_backend_during_commit(
    db: Database, migrations_dir: Path, fault_registry: FaultRegistry
) -> None:
    """While COMMIT runs a deferred trigger: the transaction aborts, nothing remains."""
    with fault_registry.trial("pg_terminate_backend during COMMIT"):
        versions = migration_set(migrations_dir, 3, slow_commit=1, seconds=3)
        with RunnerProcess(runner_env(db.url, migrations_dir)) as runner:
            poll_until(active_statement(db, "COMMIT"), 15, "COMMIT never ran")
            _terminate(db)
            run = runner.finish()
        lost_connection(run.code, run.stderr)
        assert_survived(db, migrations_dir, versions, [set()])


def test_terminate_backend_after_commit(
    db: Database, migrations_dir: Path, fault_registry: FaultRegistry
) -> None:
    """Once migration 1 is committed (its row is visible), while migration 2 runs."""
    with fault_registry.trial("pg_terminate_backend after COMMIT"):
        versions = migration_set(migrations_dir, 3, slow=2, seconds=3)
        with RunnerProcess(runner_env(db.url, migrations_dir)) as runner:
            poll_until(lambda: recorded(db) == {1: "applied"}, 15, "migration 1 never committed")
            _terminate(db)
            run = runner.finish()
        lost_connection(run.code, run.stderr)
        assert_survived(db, migrations_dir, versions, [{1}])


def test_terminate_backend_while_waiting_for_the_lock(
    db: Database, migrations_dir: Path, fault_registry: FaultRegistry
) -> None:
    """Before any migration: cut while the runner polls for a lock someone else holds."""
    from runner.config import TableName
    from runner.lock import lock_key

    with fault_registry.trial("pg_terminate_backend while waiting for the lock"):
        versions = migration_set(migrations_dir, 3)
        key = lock_key(TableName("public", "schema_migrations"))
        with psycopg.connect(db.url, autocommit=True, application_name="holder") as holder:
            holder.execute("SELECT pg_advisory_lock(%s)", (key,))
            with RunnerProcess(runner_env(db.url, migrations_dir)) as runner:
                runner.wait_for("lock.waiting")
                _terminate(db)
                run = runner.finish()
        lost_connection(run.code, run.stderr)
        assert_survived(db, migrations_dir, versions, [set()])


@pytest.mark.parametrize(
    ("fault", "pattern"),
    [
        ("proxy drops the connection while waiting for the lock", b"pg_try_advisory_lock"),
        ("proxy drops the connection at the lock release", b"pg_advisory_unlock"),
    ],
)
def test_proxy_cuts_the_connection_outside_a_migration(
    db: Database,
    proxy: TcpProxy,
    migrations_dir: Path,
    fault_registry: FaultRegistry,
    fault: str,
    pattern: bytes,
) -> None:
    """Before the first migration and after the last one the cut is still a lost connection
    (69, retryable), not an internal error."""
    with fault_registry.trial(fault):
        versions = migration_set(migrations_dir, 3)
        proxy.drop_when(pattern)
        with RunnerProcess(runner_env(db.url_via(proxy.port), migrations_dir)) as runner:
            run = runner.finish()
        lost_connection(run.code, run.stderr)
        assert_no_runner_left(db)
        applied = assert_consistent(db, versions)
        assert applied == (set(versions) if b"unlock" in pattern else set())
        assert_rerun_finishes(db, migrations_dir, versions, applied)
