"""Waiting for PostgreSQL: transient failures are retried, permanent ones fail at once."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

import psycopg
from psycopg import sql

from runner import credentials, db, logs
from runner.config import ConnectionSettings
from runner.errors import (
    AuthenticationFailed,
    ConfigError,
    DatabaseMissing,
    DatabaseUnreachable,
)

# Whether this server can take writes at all.
_READ_ONLY = sql.SQL(
    "SELECT pg_is_in_recovery(), current_setting('default_transaction_read_only')::bool"
)

# libpq and server messages (PostgreSQL sends no SQLSTATE before a session exists, so the
# message is all there is). Matched case-insensitively; the server's lc_messages must be
# English for the permanent ones to be recognised; anything unrecognised is retried.
_AUTH = (
    "password authentication failed",  # 28P01
    "authentication failed",
    "no pg_hba.conf entry",  # 28000
    "pg_hba.conf rejects connection",  # 28000, a `reject` line
    "permission denied for database",  # 42501
    "must have connect privilege",
    "no password supplied",
    "password is required",
    "is not permitted to log in",
)
_CONFIG = (
    "server does not support ssl",
    "sslmode value",
    "certificate verify failed",
    "could not read root certificate",
    "root certificate file",
    "invalid sslmode",
    "does not match host name",  # verify-full: the certificate is for another name
    "requires a valid client certificate",  # pg_hba `cert` or clientcert=verify-*
    "certificate authentication failed",
    "could not read certificate",
    "could not load private key",
    "tlsv1 alert",  # the server rejected the client certificate during the handshake
    "sslv3 alert",
)


class TransientConnectError(Exception):
    """A connection attempt failed in a way that may pass: try again."""


def classify(error: psycopg.OperationalError) -> Exception:
    """The error to raise for a failed connection attempt: permanent ones are RunnerErrors,
    anything else is a TransientConnectError (refused, DNS, starting up, too many clients...)."""
    message = str(error)
    lowered = message.lower()
    if 'database "' in lowered and "does not exist" in lowered:  # 3D000
        return DatabaseMissing(f"the database does not exist: {_server_words(message)}")
    if any(marker in lowered for marker in _CONFIG):  # before _AUTH: "certificate auth... failed"
        return ConfigError("DB_SSL", f"TLS: {_server_words(message)}")
    if any(marker in lowered for marker in _AUTH) or (
        'role "' in lowered and "does not exist" in lowered  # 28000
    ):
        return AuthenticationFailed(f"authentication failed: {_server_words(message)}")
    return TransientConnectError(_server_words(message))


def _server_words(message: str) -> str:
    """libpq's message on one line, without the 'connection to server at ... failed:' prefix."""
    last = message.strip().splitlines()
    text = " ".join(line.strip() for line in last)
    _, sep, tail = text.rpartition(" failed: ")
    return tail if sep else text


def _refuse_read_only(conn: db.Connection) -> None:
    """Close and retry a connection to a server that cannot write."""
    try:
        row = db.execute(conn, _READ_ONLY).fetchone()
    except psycopg.OperationalError as error:
        conn.close()
        raise TransientConnectError(_server_words(str(error))) from None
    in_recovery, read_only = row if row else (False, False)
    if in_recovery or read_only:
        where = f"{conn.info.host}:{conn.info.port}"
        conn.close()
        why = (
            "a read-only standby (pg_is_in_recovery() is true)"
            if in_recovery
            else "read-only (default_transaction_read_only is on)"
        )
        raise TransientConnectError(
            f"the server at {where} is {why}: waiting for a primary "
            "(a failover may promote it; with several hosts in the URL, "
            "target_session_attrs=read-write picks the primary)"
        )


def wait_for_database(
    settings: ConnectionSettings,
    *,
    deadline: float,
    sleep: Callable[[float], Any] = time.sleep,
    connect: Callable[..., db.Connection] = db.connect,
    writable: bool = False,
) -> db.Connection:
    """Connect, retrying transient failures with jittered backoff until `deadline` seconds.
    `writable`: a server that only reads (a hot standby, default_transaction_read_only) is
    waited out like a server that is down: a failover may promote it."""
    target = settings.describe()
    started = time.monotonic()

    def attempt(left: float) -> db.Connection:
        # libpq treats timeouts under 2 s as 2 s
        timeout = max(2, min(settings.connect_timeout, round(left)))
        try:
            conn = connect(settings, connect_timeout=timeout)
        except psycopg.OperationalError as error:
            raise classify(error) from None
        except credentials.CredentialsUnavailable as error:
            raise TransientConnectError(str(error)) from None
        if writable:
            _refuse_read_only(conn)
        return conn

    # Nearly every run connects at the first try: only a failure pays for the retry machinery.
    try:
        conn, attempts = attempt(deadline), 1
    except TransientConnectError as failure:
        conn, attempts = _keep_trying(target, attempt, failure, deadline, started, sleep)
    reached = f"{conn.info.host}:{conn.info.port}"
    logs.event(
        logging.INFO,
        "db.connected",
        f"connected to {target}" + (f" at {reached}" if reached not in target else ""),
        target=target,
        host=conn.info.host,
        port=conn.info.port,
        attempts=attempts,
        duration_ms=round((time.monotonic() - started) * 1000),
        server_version=conn.info.server_version,
    )
    return conn


def _keep_trying(
    target: str,
    attempt: Callable[[float], db.Connection],
    failure: TransientConnectError,
    deadline: float,
    started: float,
    sleep: Callable[[float], Any],
) -> tuple[db.Connection, int]:
    """After a first failed try: jittered backoff until `deadline` seconds from `started`.
    Returns the connection and how many tries it took."""
    import tenacity

    from runner import retry

    def log_retry(state: tenacity.RetryCallState) -> None:
        error = state.outcome.exception() if state.outcome else None
        logs.event(
            logging.WARNING,
            "db.wait.attempt",
            f"database not ready: {error}",
            attempt=state.attempt_number,
            target=target,
            retry_in_s=round(state.upcoming_sleep, 3),
            error=str(error),
        )

    left = max(deadline - (time.monotonic() - started), 0.0)  # the first try took some
    policy = retry.backoff(
        deadline=left,
        retry=tenacity.retry_if_exception_type(TransientConnectError),
        sleep=sleep,
        initial=0.2,
        maximum=5.0,
        before_sleep=log_retry,
    )
    again = retry.failed_first(failure, attempt)
    connected: list[tuple[db.Connection, int]] = []
    try:
        for each in policy:
            with each:
                conn = again(retry.remaining(each.retry_state, left))
                connected.append((conn, each.retry_state.attempt_number))
    except tenacity.RetryError as gave_up:
        last = gave_up.last_attempt
        raise DatabaseUnreachable(
            f"database {target} not reachable within {deadline:g}s after "
            f"{last.attempt_number} attempts: {last.exception()}"
        ) from None
    return connected[0]
