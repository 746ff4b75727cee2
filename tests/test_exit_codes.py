"""Every exit code a user can cause, through the real entrypoint; secrets never printed."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from runner.exit_codes import ExitCode
from tests.conftest import (
    SEED_MIGRATIONS,
    Run,
    RunnerProcess,
    query,
    run_entrypoint,
    runner_env,
    write_migration,
)
from tests.pgcluster import TempCluster, free_port

PASSWORD = "Corr3ct-h0rse;b@ttery 'staple'"


@pytest.fixture(scope="module")
def password_cluster() -> Iterator[TempCluster]:
    """A server of our own that checks passwords (scram-sha-256), unlike the shared one."""
    with TempCluster(password=PASSWORD) as cluster:
        cluster.init().start()
        cluster.psql("CREATE ROLE app LOGIN PASSWORD 'app-secret-pw'")
        cluster.psql("CREATE DATABASE shop OWNER app")
        yield cluster


def assert_no_secret(run: Run, *secrets: str) -> None:
    for secret in secrets:
        assert secret not in run.stdout
        assert secret not in run.stderr


@pytest.mark.cluster
def test_bad_password_exits_77_at_once_without_printing_it(
    password_cluster: TempCluster, tmp_path: Path
) -> None:
    wrong = "wr0ng-Pa55word!"
    termination = tmp_path / "termination-log"
    env = runner_env(
        password_cluster.url("app", wrong, "shop"),
        SEED_MIGRATIONS,
        DB_WAIT_TIMEOUT="30",
        TERMINATION_LOG=str(termination),
    )
    run = run_entrypoint("up", env=env)
    assert run.code == ExitCode.AUTH_FAILED
    assert run.seconds < 10  # not retried until the 30 s deadline
    assert "password authentication failed" in run.finished["error"]
    assert_no_secret(run, wrong)
    assert wrong not in termination.read_text()
    assert json.loads(termination.read_text())["exit_code"] == 77


@pytest.mark.cluster
def test_password_from_a_file_works_and_is_never_printed(
    password_cluster: TempCluster, tmp_path: Path
) -> None:
    secret = tmp_path / "db-password"
    secret.write_text("app-secret-pw\n")
    env = runner_env(
        None,
        SEED_MIGRATIONS,
        DB_HOST="127.0.0.1",
        DB_PORT=str(password_cluster.port),
        DB_NAME="shop",
        DB_USER="app",
        DB_PASSWORD_FILE=str(secret),
        LOG_LEVEL="DEBUG",
    )
    run = run_entrypoint("up", env=env)
    assert run.code == 0, run.stderr
    assert_no_secret(run, "app-secret-pw")
    assert any(entry["event"] == "db.query" for entry in run.events)  # debug lines were written


@pytest.mark.cluster
def test_unknown_role_exits_77(password_cluster: TempCluster) -> None:
    run = run_entrypoint(
        "up", env=runner_env(password_cluster.url("nobody", "x", "shop"), SEED_MIGRATIONS)
    )
    assert run.code == ExitCode.AUTH_FAILED


@pytest.mark.cluster
def test_a_database_that_does_not_exist_exits_78_at_once(password_cluster: TempCluster) -> None:
    url = password_cluster.url("app", "app-secret-pw", "no_such_db")
    run = run_entrypoint("up", env=runner_env(url, SEED_MIGRATIONS, DB_WAIT_TIMEOUT="30"))
    assert run.code == ExitCode.CONFIG
    assert run.seconds < 10
    assert "does not exist" in run.finished["error"]
    assert_no_secret(run, "app-secret-pw")


def test_an_unreachable_database_exits_69_after_the_wait_timeout(migrations_dir: Path) -> None:
    port = free_port()
    env = runner_env(
        f"postgresql://postgres:pw-in-url@127.0.0.1:{port}/x", migrations_dir, DB_WAIT_TIMEOUT="3"
    )
    run = run_entrypoint("wait", env=env)
    assert run.code == ExitCode.DB_UNREACHABLE
    assert 2.5 < run.seconds < 15
    attempts = [entry for entry in run.events if entry["event"] == "db.wait.attempt"]
    assert len(attempts) >= 2
    assert [entry["attempt"] for entry in attempts] == list(range(1, len(attempts) + 1))
    assert "Connection refused" in run.finished["error"]
    assert_no_secret(run, "pw-in-url")


@pytest.mark.cluster
def test_a_database_that_starts_late_is_waited_for(tmp_path: Path) -> None:
    with TempCluster() as cluster:
        cluster.init()
        starter = threading.Timer(3.0, cluster.start)
        starter.start()
        try:
            run = run_entrypoint(
                "up", env=runner_env(cluster.url(), SEED_MIGRATIONS, DB_WAIT_TIMEOUT="60")
            )
        finally:
            starter.join()
        assert run.code == 0, run.stderr
        assert run.seconds >= 3
        assert any(entry["event"] == "db.wait.attempt" for entry in run.events)
        assert run.event("db.connected")["attempts"] >= 2
        assert cluster.psql("SELECT version FROM schema_migrations") == "1\n"


@pytest.mark.parametrize(
    ("args", "extra", "culprit"),
    [
        ((), {"DB_WAIT_TIMEOUT": "soon"}, "DB_WAIT_TIMEOUT"),
        ((), {"DB_SSL": "sometimes"}, "DB_SSL"),
        ((), {"MIGRATIONS_DIR": "/no/such/dir"}, "MIGRATIONS_DIR"),
        ((), {"DB_PASSWORD": "x", "DB_PASSWORD_FILE": "/etc/hostname"}, "DB_PASSWORD_FILE"),
        (("--lock-timeout", "-3"), {}, "MIGRATION_LOCK_TIMEOUT"),
    ],
)
def test_configuration_errors_exit_78_before_connecting(
    migrations_dir: Path, args: tuple[str, ...], extra: dict[str, str], culprit: str
) -> None:
    env = runner_env(
        f"postgresql://u@127.0.0.1:{free_port()}/d", migrations_dir, DB_WAIT_TIMEOUT="30"
    )
    env.update(extra)
    run = run_entrypoint("up", *args, env=env)
    assert run.code == ExitCode.CONFIG
    assert run.finished["error"].startswith(culprit)
    assert not any(entry["event"] == "db.wait.attempt" for entry in run.events)


def test_no_database_configured_exits_78(migrations_dir: Path) -> None:
    run = run_entrypoint("up", env=runner_env(None, migrations_dir))
    assert run.code == ExitCode.CONFIG
    assert "DATABASE_URL" in run.finished["error"]


@pytest.mark.parametrize("args", [("sideways",), ("up", "--no-such-flag"), ("up", "--json")])
def test_usage_errors_exit_64(args: tuple[str, ...]) -> None:
    run = run_entrypoint(*args, env=runner_env("postgresql://u@h/d", SEED_MIGRATIONS))
    assert run.code == ExitCode.USAGE
    assert run.finished["exit_code"] == 64


def test_flags_win_over_the_environment(database_url: str, migrations_dir: Path) -> None:
    write_migration(migrations_dir, "1_a.up.sql", "CREATE TABLE flagged (id int);")
    env = runner_env(database_url, Path("/no/such/dir"), LOG_FORMAT="xml")
    run = run_entrypoint(
        "up", "--migrations-dir", str(migrations_dir), "--log-format", "json", env=env
    )
    assert run.code == 0, run.stderr
    assert query(database_url, "SELECT to_regclass('flagged')::text") == [("flagged",)]


def test_sigint_during_a_migration_exits_130(database_url: str, migrations_dir: Path) -> None:
    write_migration(
        migrations_dir, "1_slow.up.sql", "CREATE TABLE slow (id int); SELECT pg_sleep(60);"
    )
    with RunnerProcess(runner_env(database_url, migrations_dir)) as runner:
        runner.wait_for("migration.started")
        _poll(lambda: _sleeping_runners(database_url) == 1)
        runner.send(2)
        run = runner.finish(timeout=30)
    assert run.code == ExitCode.INTERRUPTED, run.stderr
    assert run.finished["retryable"] is True
    assert query(database_url, "SELECT to_regclass('slow')") == [(None,)]


def _sleeping_runners(database_url: str) -> int:
    rows = query(
        database_url,
        "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'migration-runner' "
        "AND wait_event = 'PgSleep'",
    )
    return int(rows[0][0])


def _poll(condition: Callable[[], bool], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "the state never came"
        time.sleep(0.02)


def test_the_termination_message_summarises_a_failure(
    database_url: str, migrations_dir: Path, tmp_path: Path
) -> None:
    write_migration(migrations_dir, "1_ok.up.sql", "SELECT 1;")
    write_migration(migrations_dir, "2_bad.up.sql", "SELECT nope;" + " " * 10_000 + "-- long")
    termination = tmp_path / "termination-log"
    run = run_entrypoint(
        "up", env=runner_env(database_url, migrations_dir, TERMINATION_LOG=str(termination))
    )
    assert run.code == ExitCode.MIGRATION_FAILED
    text = termination.read_text()
    assert len(text.encode()) <= 4096
    assert text.count("\n") == 1
    summary = json.loads(text)
    assert summary["outcome"] == "failed"
    assert summary["exit_code"] == 65
    assert summary["applied"] == [1]
    assert summary["failed_version"] == 2
    assert "42703" in summary["error"]
