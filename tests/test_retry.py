"""Retry policies: delays checked through the injected sleep, without sleeping."""

from __future__ import annotations

import psycopg
import pytest
import tenacity

from runner import retry, wait
from runner.config import ConnectionSettings
from runner.errors import AuthenticationFailed, DatabaseMissing, DatabaseUnreachable

pytestmark = pytest.mark.unit


def test_backoff_grows_with_jitter_and_stops_at_the_deadline() -> None:
    slept: list[float] = []
    policy = retry.backoff(
        deadline=10,
        retry=tenacity.retry_if_result(lambda ok: not ok),
        sleep=slept.append,
        initial=0.1,
        maximum=2.0,
    )
    with pytest.raises(tenacity.RetryError):
        policy(lambda: False)
    assert sum(slept) == pytest.approx(10)  # the last try happens at the deadline
    assert all(0 <= delay <= 2.0 for delay in slept)
    assert len(slept) >= 5  # never more than 2 s a sleep: many tries fit in 10 s
    ceilings = [min(2.0, 0.1 * 2**n) for n in range(len(slept))]
    assert all(delay <= ceiling for delay, ceiling in zip(slept, ceilings, strict=True))
    assert len(set(slept)) > 1  # jittered


def test_a_zero_deadline_tries_once() -> None:
    calls: list[int] = []
    policy = retry.backoff(
        deadline=0, retry=tenacity.retry_if_result(lambda ok: not ok), sleep=lambda s: None
    )
    with pytest.raises(tenacity.RetryError):
        policy(lambda: calls.append(1))
    assert calls == [1]


def _error(message: str) -> psycopg.OperationalError:
    return psycopg.OperationalError(message)


@pytest.mark.parametrize(
    "message",
    [
        'connection to server at "127.0.0.1", port 5432 failed: Connection refused',
        "failed to resolve host 'db': [Errno -2] Name or service not known",
        'could not translate host name "db" to address: Name or service not known',
        "connection failed: FATAL:  the database system is starting up",
        "connection failed: FATAL:  the database system is shutting down",
        "connection failed: FATAL:  sorry, too many clients already",
        "connection failed: server closed the connection unexpectedly",
        "connection failed: timeout expired",
    ],
)
def test_transient_failures_are_retried(message: str) -> None:
    assert isinstance(wait.classify(_error(message)), wait.TransientConnectError)


@pytest.mark.parametrize(
    ("message", "kind"),
    [
        ('failed: FATAL:  password authentication failed for user "app"', AuthenticationFailed),
        ('failed: FATAL:  role "app" does not exist', AuthenticationFailed),
        ('failed: FATAL:  no pg_hba.conf entry for host "10.0.0.1"', AuthenticationFailed),
        ('failed: FATAL:  database "shop" does not exist', DatabaseMissing),
    ],
)
def test_permanent_failures_are_not(message: str, kind: type[Exception]) -> None:
    assert isinstance(wait.classify(_error(message)), kind)


def test_waiting_retries_transient_failures_then_gives_up_with_the_last_error() -> None:
    slept: list[float] = []
    attempts: list[int] = []

    def refuse(settings: ConnectionSettings, connect_timeout: int) -> psycopg.Connection:
        attempts.append(connect_timeout)
        raise _error('connection to server at "db", port 5432 failed: Connection refused')

    settings = ConnectionSettings(params={"host": "db"}, connect_timeout=5, tcp_timeout=60)
    with pytest.raises(DatabaseUnreachable, match="Connection refused"):
        wait.wait_for_database(settings, deadline=3, sleep=slept.append, connect=refuse)
    assert len(attempts) == len(slept) + 1
    assert sum(slept) == pytest.approx(3, abs=0.05)  # less the first try's own time
    assert all(2 <= timeout <= 5 for timeout in attempts)


def test_waiting_fails_at_once_on_a_bad_password() -> None:
    slept: list[float] = []

    def reject(settings: ConnectionSettings, connect_timeout: int) -> psycopg.Connection:
        raise _error('failed: FATAL:  password authentication failed for user "app"')

    settings = ConnectionSettings(params={"host": "db"}, connect_timeout=5, tcp_timeout=60)
    with pytest.raises(AuthenticationFailed):
        wait.wait_for_database(settings, deadline=60, sleep=slept.append, connect=reject)
    assert slept == []
