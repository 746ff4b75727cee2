"""The exit-code contract. README.md, k8s/ and the Helm chart mirror it; tests keep them equal."""

from __future__ import annotations

from collections.abc import Iterable
from enum import IntEnum


class ExitCode(IntEnum):
    """Process exit status, in the BSD sysexits tradition, and what an orchestrator should do."""

    OK = 0  # applied, or nothing pending: go on
    CHECK_FAILED = 1  # a quality gate found something: lint errors, verify mismatch, drift: fail
    USAGE = 64  # unknown command or flag: fail
    MIGRATION_FAILED = 65  # a migration's SQL failed and its transaction rolled back: fail
    INVALID_MIGRATIONS = (
        66  # bad names, duplicates, edited or missing applied files, out of order: fail
    )
    NEEDS_ATTENTION = 67  # tracking table of unknown shape, half-applied migration: fail
    DB_UNREACHABLE = 69  # database not reachable within DB_WAIT_TIMEOUT: retry
    INTERNAL = 70  # a bug: fail
    # 75, EX_TEMPFAIL: the migration lock, a migration's table locks (after DDL_LOCK_RETRIES)
    # or, for `await`, the schema did not come in time: retry
    TEMPORARY_FAILURE = 75
    AUTH_FAILED = 77  # authentication or permission denied: fail
    CONFIG = 78  # configuration error: fail
    INTERRUPTED = 130  # SIGINT; in-flight migration rolled back: retry
    TERMINATED = 143  # SIGTERM or SIGHUP; in-flight migration rolled back: retry

    @property
    def retryable(self) -> bool:
        """True when running the job again, unchanged, may succeed."""
        return self in RETRYABLE


RETRYABLE = frozenset(
    {ExitCode.DB_UNREACHABLE, ExitCode.TEMPORARY_FAILURE, ExitCode.INTERRUPTED, ExitCode.TERMINATED}
)

# A fleet run exits with the code of its most severe target, first in this order. A code that
# needs a person outranks one that a retry may clear; among those, the one whose cause reaches
# furthest first: a bug, then the run's own setup (usage, configuration, credentials), then a
# database that a person must look at, then the migration set, then one migration's SQL.
# Among the retryable: a lock or deadline outranks an unreachable server, and a signal comes
# last, since it says only that the run was stopped.
SEVERITY: tuple[ExitCode, ...] = (
    ExitCode.INTERNAL,
    ExitCode.USAGE,
    ExitCode.CONFIG,
    ExitCode.AUTH_FAILED,
    ExitCode.NEEDS_ATTENTION,
    ExitCode.INVALID_MIGRATIONS,
    ExitCode.MIGRATION_FAILED,
    ExitCode.CHECK_FAILED,
    ExitCode.TEMPORARY_FAILURE,
    ExitCode.DB_UNREACHABLE,
    ExitCode.TERMINATED,
    ExitCode.INTERRUPTED,
)


def most_severe(codes: Iterable[ExitCode]) -> ExitCode:
    """The code a run of many targets exits with: OK when every one is OK."""
    failed = set(codes) - {ExitCode.OK}
    return min(failed, key=SEVERITY.index, default=ExitCode.OK)
