"""The database utilities for application code: pool, logged execution, transactions."""

from __future__ import annotations

import io
import json
import logging
import time

import psycopg
import pytest

from runner import db, logs
from runner.config import from_env


def test_execute_logs_the_statement_and_duration_but_never_the_parameters(
    database_url: str,
) -> None:
    stream = io.StringIO()
    logs.configure(log_format="json", level="DEBUG", stream=stream)
    settings = from_env({"DATABASE_URL": database_url})
    assert settings.connection is not None
    with db.connect(settings.connection) as conn:
        row = db.execute(conn, "SELECT %(secret)s::text", {"secret": "card-4242"}).fetchone()
    assert row == ("card-4242",)
    entry = json.loads(stream.getvalue().splitlines()[-1])
    assert entry["event"] == "db.query"
    assert entry["statement"] == "SELECT %(secret)s::text"
    assert entry["duration_ms"] >= 0
    assert "card-4242" not in stream.getvalue()
    logging.getLogger(logs.LOGGER_NAME).handlers.clear()


def test_the_transaction_helper_commits_or_rolls_back(database_url: str) -> None:
    settings = from_env({"DATABASE_URL": database_url})
    assert settings.connection is not None
    with db.connect(settings.connection) as conn:
        conn.execute("CREATE TABLE t (id int)")
        with db.transaction(conn):
            conn.execute("INSERT INTO t VALUES (1)")

        def insert_then_fail() -> None:
            with db.transaction(conn):
                conn.execute("INSERT INTO t VALUES (2)")
                conn.execute("SELECT 1 / 0")

        with pytest.raises(psycopg.errors.DivisionByZero):
            insert_then_fail()
        assert conn.execute("SELECT id FROM t").fetchall() == [(1,)]


def test_the_pool_serves_application_connections(database_url: str) -> None:
    settings = from_env({"DATABASE_URL": database_url})
    assert settings.connection is not None
    with db.create_pool(settings, min_size=1, max_size=2) as pool:
        with pool.connection() as conn:
            row = conn.execute("SELECT current_setting('application_name')").fetchone()
        assert row is not None
        assert row[0] != "migration-runner"
    with db.create_pool(settings, max_size=1, application_name="shop-api") as pool:
        with pool.connection() as conn:
            row = conn.execute("SELECT current_setting('application_name')").fetchone()
        assert row == ("shop-api",)


def test_the_readme_usage_works_as_written(database_url: str) -> None:
    settings = from_env({"DATABASE_URL": database_url})
    with db.connect(settings) as conn:
        conn.execute("CREATE TABLE users (email text)")
    with db.create_pool(settings, application_name="shop-api") as pool, pool.connection() as conn:
        db.execute(conn, "INSERT INTO users (email) VALUES (%s)", ["a@example.com"])
    with db.connect(settings) as conn, db.transaction(conn):
        db.execute(
            conn,
            "UPDATE users SET email = %(new)s WHERE email = %(old)s",
            {"new": "b@example.com", "old": "a@example.com"},
        )
    with db.connect(settings) as conn:
        assert db.execute(conn, "SELECT email FROM users").fetchall() == [("b@example.com",)]


def test_a_signal_between_sending_a_script_and_waiting_for_it_cancels_it(
    database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On a loaded machine the runner may be descheduled right after the query left and meet
    the signal before psycopg waits on it, where psycopg's own cancel does not reach. The
    statement must still be cancelled and the connection left usable, so that the runner can
    read what committed."""
    settings = from_env({"DATABASE_URL": database_url})
    with db.connect(settings.database) as conn:
        waits = 0
        real_wait = conn.wait

        def signal_before_the_first_wait(*args: object, **kwargs: object) -> object:
            nonlocal waits
            waits += 1
            if waits == 1:
                raise KeyboardInterrupt
            return real_wait(*args, **kwargs)  # type: ignore[arg-type]

        monkeypatch.setattr(conn, "wait", signal_before_the_first_wait)
        started = time.monotonic()
        with pytest.raises(KeyboardInterrupt):
            db.run_script(conn, "CREATE TABLE t (id int); SELECT pg_sleep(30)")
        assert time.monotonic() - started < 10
        monkeypatch.undo()
        assert conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
        assert conn.execute("SELECT to_regclass('t') IS NULL").fetchone() == (True,)
