"""Many runners at once against one database, and a runner that cannot get the lock in time."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from runner.exit_codes import ExitCode
from tests.conftest import ENTRYPOINT, ROOT, Run, RunnerProcess, poll_until, runner_env
from tests.faults.harness import (
    Database,
    FaultRegistry,
    active_statement,
    assert_consistent,
    assert_no_runner_left,
    assert_rerun_finishes,
    migration_set,
    recorded,
)

pytestmark = [pytest.mark.faults, pytest.mark.cluster]

RUNNERS = 64


def test_64_runners_start_at_once(
    db: Database, migrations_dir: Path, fault_registry: FaultRegistry
) -> None:
    with fault_registry.trial(f"{RUNNERS} runners start at once"):
        versions = migration_set(migrations_dir, 5)
        env = runner_env(db.url, migrations_dir, MIGRATION_LOCK_TIMEOUT="120", DB_WAIT_TIMEOUT="60")
        processes = [
            subprocess.Popen(
                [sys.executable, str(ENTRYPOINT), "up"],
                env=env,
                cwd=ROOT,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                text=True,
            )
            for _ in range(RUNNERS)
        ]
        runs: list[Run] = []
        try:
            for process in processes:
                _, stderr = process.communicate(timeout=180)
                runs.append(Run(process.returncode, "", stderr, 0.0))
        finally:
            for process in processes:
                if process.poll() is None:
                    process.kill()
                    process.communicate()
        assert [run.code for run in runs] == [0] * RUNNERS, [r.stderr for r in runs if r.code]
        applied = sorted(v for run in runs for v in run.finished["applied"])
        assert applied == versions
        assert assert_consistent(db, versions) == set(versions)
        assert_no_runner_left(db)
        assert_rerun_finishes(db, migrations_dir, versions, set(versions))


def test_a_runner_that_waits_longer_than_the_lock_timeout_exits_75(
    db: Database, migrations_dir: Path, fault_registry: FaultRegistry
) -> None:
    """Another runner holds the lock (in a 4 s migration) beyond MIGRATION_LOCK_TIMEOUT=1."""
    with fault_registry.trial("lock held longer than MIGRATION_LOCK_TIMEOUT"):
        versions = migration_set(migrations_dir, 3, slow=1, seconds=4)
        with RunnerProcess(runner_env(db.url, migrations_dir)) as first:
            poll_until(active_statement(db, "pg_sleep"), 15, "the first runner never started")
            before = recorded(db)
            started = time.monotonic()
            with RunnerProcess(
                runner_env(db.url, migrations_dir, MIGRATION_LOCK_TIMEOUT="1")
            ) as second:
                late = second.finish()
            waited = time.monotonic() - started
            assert late.code == ExitCode.TEMPORARY_FAILURE, late.stderr
            assert late.finished["retryable"] is True
            assert late.finished["applied"] == []
            assert late.event("lock.waiting")["holder_application"] == "migration-runner"
            assert waited < 10
            assert recorded(db) == before  # nothing changed by the late runner
            assert first.process.poll() is None
            done = first.finish()
        assert done.code == 0, done.stderr
        assert assert_consistent(db, versions) == set(versions)
        assert_no_runner_left(db)
        assert_rerun_finishes(db, migrations_dir, versions, set(versions))
