"""The runner through a real PgBouncer (Debian's package, started on a free port by the tests):
transaction pooling is refused before any lock is taken; session pooling works like a direct
connection; MIGRATION_DATABASE_URL gives the runner a direct URL of its own."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from psycopg.conninfo import conninfo_to_dict

from runner.exit_codes import ExitCode
from tests.conftest import query, race_of_16, run_entrypoint, runner_env, write_migration
from tests.pgbouncer import PgBouncer, find_pgbouncer

pytestmark = pytest.mark.skipif(
    find_pgbouncer() is None,
    reason="pgbouncer is not installed (Debian: apt-get install pgbouncer; .ci/run does)",
)


@pytest.fixture(scope="module", params=["transaction", "statement"])
def transaction_pooler(server_url: str, request: pytest.FixtureRequest) -> Iterator[PgBouncer]:
    with PgBouncer(server_url, pool_mode=request.param, pool_size=4).start() as bouncer:
        yield bouncer


@pytest.fixture(scope="module")
def session_pooler(server_url: str) -> Iterator[PgBouncer]:
    with PgBouncer(server_url, pool_mode="session", pool_size=40).start() as bouncer:
        yield bouncer


def through(bouncer: PgBouncer, database_url: str) -> str:
    return bouncer.url(str(conninfo_to_dict(database_url)["dbname"]))


def advisory_locks(database_url: str) -> int:
    rows = query(database_url, "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'")
    return int(rows[0][0])


@pytest.mark.fault("PgBouncer in transaction or statement pooling")
def test_transaction_pooling_is_refused_with_78_and_leaves_no_lock(
    transaction_pooler: PgBouncer, database_url: str, migrations_dir: Path
) -> None:
    write_migration(migrations_dir, "1_a.up.sql", "CREATE TABLE a (id int);")
    env = runner_env(through(transaction_pooler, database_url), migrations_dir)
    runs = [run_entrypoint("up", env=env) for _ in range(2)]
    for refused in runs:
        assert refused.code == ExitCode.CONFIG, refused.stderr
        error = refused.finished["error"]
        assert "pool_mode=transaction or statement" in error
        assert "MIGRATION_DATABASE_URL" in error
        assert not any(e["event"] == "lock.acquired" for e in refused.events)
    assert advisory_locks(database_url) == 0
    assert query(database_url, "SELECT to_regclass('a') IS NULL") == [(True,)]


def test_readers_work_through_transaction_pooling(
    transaction_pooler: PgBouncer, database_url: str, migrations_dir: Path
) -> None:
    write_migration(migrations_dir, "1_a.up.sql", "CREATE TABLE a (id int);")
    assert run_entrypoint("up", env=runner_env(database_url, migrations_dir)).code == 0
    env = runner_env(through(transaction_pooler, database_url), migrations_dir)
    for args in (("status",), ("plan",), ("await",), ("validate",)):
        read = run_entrypoint(*args, env=env)
        assert read.code == 0, (args, read.stderr)


def test_the_runner_s_own_direct_url_goes_past_the_pooler(
    transaction_pooler: PgBouncer, database_url: str, migrations_dir: Path
) -> None:
    write_migration(migrations_dir, "1_a.up.sql", "CREATE TABLE a (id int);")
    env = runner_env(through(transaction_pooler, database_url), migrations_dir)
    env["MIGRATION_DATABASE_URL"] = database_url
    applied = run_entrypoint("up", env=env)
    assert applied.code == 0, applied.stderr
    assert applied.finished["applied"] == [1]
    assert not any(e["event"] == "db.pooler_session" for e in applied.events)


@pytest.mark.fault("16 runners at once through PgBouncer session pooling")
def test_session_pooling_passes_the_16_runner_race(
    session_pooler: PgBouncer, database_url: str, migrations_dir: Path
) -> None:
    runs = race_of_16(
        migrations_dir, runner_env(through(session_pooler, database_url), migrations_dir)
    )
    rows = query(database_url, "SELECT version FROM schema_migrations ORDER BY 1")
    assert [row[0] for row in rows] == [1, 2, 3, 4, 5]
    assert any(e["event"] == "db.pooler_session" for run in runs for e in run.events)
    assert advisory_locks(database_url) == 0
