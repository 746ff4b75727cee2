"""What every fault test needs: a cluster of its own, a runner process it can watch and hurt,
and the invariants checked after each fault."""

from __future__ import annotations

import signal
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.conftest import Run, poll_until, query, run_entrypoint, runner_env
from tests.faultregistry import REGISTRY_KEY, FaultRegistry, Tally
from tests.pgcluster import TempCluster

__all__ = ["REGISTRY_KEY", "FaultRegistry", "Tally"]

APPLICATION = "migration-runner"


# -- databases ---------------------------------------------------------------------------------


@contextmanager
def started_cluster() -> Iterator[TempCluster]:
    with TempCluster() as cluster:
        cluster.init().start()
        yield cluster


@dataclass
class Database:
    """A database of its own on a cluster the test controls."""

    cluster: TempCluster
    name: str

    @property
    def url(self) -> str:
        return self.cluster.url(dbname=self.name)

    def url_via(self, port: int) -> str:
        return f"postgresql://postgres@127.0.0.1:{port}/{self.name}"

    def query(self, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        return query(self.url, sql, params)


@contextmanager
def fresh_database(cluster: TempCluster) -> Iterator[Database]:
    name = f"f_{uuid.uuid4().hex[:12]}"
    cluster.psql(f'CREATE DATABASE "{name}"')
    # TempCluster runs with synchronous_commit=off, which may lose an acknowledged commit in a
    # crash (restart -m immediate): in this database commits are durable, as in production.
    cluster.psql(f'ALTER DATABASE "{name}" SET synchronous_commit = on')
    try:
        yield Database(cluster, name)
    finally:
        if (cluster.data / "postmaster.pid").exists():
            cluster.psql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


# -- a runner process the test can watch -------------------------------------------------------


# -- a migration set whose state can be read back ----------------------------------------------


def write(directory: Path, filename: str, sql: str) -> None:
    (directory / filename).write_text(sql, encoding="utf-8")


SLOW_COMMIT = """CREATE TABLE t{v} (id int);
CREATE FUNCTION t{v}_slow_commit() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  PERFORM pg_sleep({seconds}); RETURN NULL;
END;
$$;
CREATE CONSTRAINT TRIGGER t{v}_slow AFTER INSERT ON t{v}
  DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION t{v}_slow_commit();
INSERT INTO t{v} VALUES (1);
"""


def migration_set(
    directory: Path,
    count: int = 3,
    *,
    slow: int | None = None,
    slow_commit: int | None = None,
    seconds: float = 2,
) -> list[int]:
    """Versions 1..count, each creating table t{v} (without IF NOT EXISTS: a migration that
    ran twice would fail). `slow` sleeps in its body, `slow_commit` sleeps in its COMMIT
    (a deferred constraint trigger)."""
    for v in range(1, count + 1):
        if v == slow_commit:
            sql = SLOW_COMMIT.format(v=v, seconds=seconds)
        elif v == slow:
            sql = f"CREATE TABLE t{v} (id int);\nSELECT pg_sleep({seconds});\n"
        else:
            sql = f"CREATE TABLE t{v} (id int);\n"
        write(directory, f"{v}_m{v}.up.sql", sql)
    return list(range(1, count + 1))


def recorded(db: Database) -> dict[int, str]:
    """version -> status of the tracking table; empty when it does not exist."""
    if db.query("SELECT to_regclass('schema_migrations')") == [(None,)]:
        return {}
    return {int(v): str(s) for v, s in db.query("SELECT version, status FROM schema_migrations")}


def present(db: Database, versions: list[int]) -> set[int]:
    return {v for v in versions if db.query(f"SELECT to_regclass('t{v}')") != [(None,)]}


def assert_consistent(db: Database, versions: list[int]) -> set[int]:
    """Every migration is applied and recorded, or absent and unrecorded; return the applied."""
    rows = recorded(db)
    assert set(rows.values()) <= {"applied"}, rows
    objects = present(db, versions)
    assert set(rows) == objects, f"recorded {sorted(rows)} but objects of {sorted(objects)}"
    # A prefix: a later migration never committed while an earlier one did not.
    assert sorted(objects) == versions[: len(objects)], sorted(objects)
    return objects


def assert_no_runner_left(db: Database, timeout: float = 20) -> None:
    """Once the runner's backend is gone, no advisory lock stays (the server may need a
    moment to notice a dead client)."""
    poll_until(
        lambda: (
            db.query(
                "SELECT count(*) FROM pg_locks l JOIN pg_database d ON d.oid = l.database "
                "WHERE l.locktype = 'advisory' AND d.datname = %s",
                (db.name,),
            )
            == [(0,)]
            and runner_backends(db) == []
        ),
        timeout,
        "an advisory lock or a runner backend stayed behind",
    )


def runner_backends(db: Database) -> list[tuple[Any, ...]]:
    return db.query(
        "SELECT pid, state, query FROM pg_stat_activity "
        "WHERE application_name = %s AND datname = %s",
        (APPLICATION, db.name),
    )


def assert_rerun_finishes(
    db: Database, migrations: Path, versions: list[int], before: set[int]
) -> Run:
    """A plain re-run exits 0 and applies exactly what was missing, once."""
    run = run_entrypoint("up", env=runner_env(db.url, migrations, DB_WAIT_TIMEOUT="20"))
    assert run.code == 0, run.stderr
    assert sorted(run.finished["applied"]) == sorted(set(versions) - before)
    assert recorded(db) == dict.fromkeys(versions, "applied")
    assert present(db, versions) == set(versions)
    assert_no_runner_left(db)
    return run


def assert_survived(
    db: Database, migrations: Path, versions: list[int], outcomes: list[set[int]]
) -> set[int]:
    """The fault suite's post-conditions after a fault: no runner session left; every
    migration applied and recorded, or neither; what was applied one of the `outcomes` the
    fault allows; and a plain re-run that finishes the job."""
    assert_no_runner_left(db)
    applied = assert_consistent(db, versions)
    assert applied in outcomes, applied
    assert_rerun_finishes(db, migrations, versions, applied)
    return applied


def active_statement(db: Database, needle: str) -> Callable[[], bool]:
    """True once a runner backend is running a statement containing `needle`."""

    def check() -> bool:
        return any(
            state == "active" and needle in (text or "") for _, state, text in runner_backends(db)
        )

    return check


def runner_pid(db: Database) -> int:
    """The runner's main session: the one holding the migration lock, else its only one."""
    holders = db.query(
        "SELECT a.pid FROM pg_stat_activity a JOIN pg_locks l ON l.pid = a.pid "
        "WHERE l.locktype = 'advisory' AND l.granted AND a.application_name = %s "
        "AND a.datname = %s",
        (APPLICATION, db.name),
    )
    if holders:
        return int(holders[0][0])
    rows = runner_backends(db)
    assert len(rows) == 1, rows
    return int(rows[0][0])


SIGNAL_EXIT = {signal.SIGTERM: 143, signal.SIGINT: 130, signal.SIGKILL: -signal.SIGKILL}
