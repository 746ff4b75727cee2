"""The runner gets SIGTERM, SIGINT or SIGKILL while a transactional migration runs."""

from __future__ import annotations

import signal
from pathlib import Path

import pytest

from tests.conftest import RunnerProcess, poll_until, runner_env
from tests.faults.harness import (
    SIGNAL_EXIT,
    Database,
    FaultRegistry,
    active_statement,
    assert_consistent,
    assert_no_runner_left,
    assert_rerun_finishes,
    migration_set,
)

pytestmark = [pytest.mark.faults, pytest.mark.cluster]


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT, signal.SIGKILL])
@pytest.mark.parametrize("where", ["body", "commit"])
def test_a_signal_during_a_transactional_migration(
    db: Database,
    migrations_dir: Path,
    fault_registry: FaultRegistry,
    signum: signal.Signals,
    where: str,
) -> None:
    with fault_registry.trial(f"{signum.name} during a migration's {where}"):
        if where == "body":
            versions = migration_set(migrations_dir, 3, slow=2, seconds=3)
            needle = "pg_sleep"
        else:
            versions = migration_set(migrations_dir, 3, slow_commit=2, seconds=3)
            needle = "COMMIT"
        with RunnerProcess(runner_env(db.url, migrations_dir)) as runner:
            poll_until(active_statement(db, needle), 15, f"{needle} never ran")
            runner.send(signum)
            run = runner.finish(timeout=15)
        assert run.code == SIGNAL_EXIT[signum], run.stderr
        if signum != signal.SIGKILL:
            assert run.seconds < 15
            assert run.finished["retryable"] is True
        assert_no_runner_left(db)
        applied = assert_consistent(db, versions)
        # Nobody cancels the statement of a killed runner, and the migration travels with its
        # COMMIT: the server may finish it. A signal in COMMIT, or one that reaches a loaded
        # machine late, may also come too late to cancel; and 2 travels with 3, in one batch
        # of two BEGIN ... COMMIT blocks, which a killed runner's server runs to its end.
        # (tests/test_up.py checks the rollback of a cancelled 60 s statement.) Whatever
        # happened, a runner that lived to report says exactly what committed.
        assert applied in ({1}, {1, 2}, {1, 2, 3})
        if signum != signal.SIGKILL:
            assert set(run.finished["applied"]) == applied
        assert_rerun_finishes(db, migrations_dir, versions, applied)
