"""The one error hierarchy; each class carries the exit code that reports it."""

from __future__ import annotations

from signal import SIGINT
from typing import ClassVar

from runner.exit_codes import ExitCode


class RunnerError(Exception):
    """Base of every error the runner reports to its user; each class carries its exit code."""

    event = "run.error"
    exit_code: ClassVar[ExitCode] = ExitCode.INTERNAL

    def fields(self) -> dict[str, object]:
        """Structured fields for the log line and the termination message."""
        return {}


class CheckFailed(RunnerError):
    """A quality gate found something: lint errors, a verify mismatch, drift. Its findings were
    printed; this is the run's one-line verdict."""

    event = "check.failed"
    exit_code = ExitCode.CHECK_FAILED


class UsageError(RunnerError):
    """Unknown command or flag."""

    exit_code = ExitCode.USAGE


class ConfigError(RunnerError):
    """A setting is missing or has a wrong value."""

    exit_code = ExitCode.CONFIG

    def __init__(self, variable: str, problem: str) -> None:
        super().__init__(f"{variable}: {problem}")
        self.variable = variable
        self.problem = problem

    def fields(self) -> dict[str, object]:
        return {"variable": self.variable}


class UnstableSession(ConfigError):
    """The connection goes through a pooler that moves the session between server processes."""

    def __init__(self, message: str) -> None:
        RunnerError.__init__(self, message)
        self.variable = "MIGRATION_DATABASE_URL"


class DatabaseUnreachable(RunnerError):
    """The database did not accept a connection before the deadline."""

    exit_code = ExitCode.DB_UNREACHABLE


class DatabaseMissing(RunnerError):
    """The configured database does not exist on the server."""

    exit_code = ExitCode.CONFIG


class AuthenticationFailed(RunnerError):
    """Bad password, unknown role, or permission denied."""

    exit_code = ExitCode.AUTH_FAILED


class PermissionDenied(AuthenticationFailed):
    """The runner's role lacks a privilege for the runner's own work (not a migration's)."""


class LockTimeout(RunnerError):
    """Another runner held the migration lock for longer than MIGRATION_LOCK_TIMEOUT."""

    exit_code = ExitCode.TEMPORARY_FAILURE


class DdlLockTimeout(RunnerError):
    """A migration could not get its table locks within DDL_LOCK_TIMEOUT, DDL_LOCK_RETRIES times;
    everything it did was rolled back."""

    exit_code = ExitCode.TEMPORARY_FAILURE

    def __init__(self, message: str, *, version: int) -> None:
        super().__init__(message)
        self.version = version

    def fields(self) -> dict[str, object]:
        return {"version": self.version}


class AwaitTimeout(RunnerError):
    """`await`: the schema did not reach the image's versions before AWAIT_TIMEOUT."""

    exit_code = ExitCode.TEMPORARY_FAILURE


class MigrationSetError(RunnerError):
    """The migration files, or their relation to what is applied, are unsafe to act on."""

    exit_code = ExitCode.INVALID_MIGRATIONS

    def __init__(self, message: str, *, file: str | None = None, version: int | None = None):
        super().__init__(message)
        self.file = file
        self.version = version

    def fields(self) -> dict[str, object]:
        found = {"file": self.file, "version": self.version}
        return {key: value for key, value in found.items() if value is not None}


class BadMigrationName(MigrationSetError):
    """A .sql file whose name is not {digits}_{name}.up.sql or .down.sql."""


class DuplicateVersion(MigrationSetError):
    """Two files of one direction share a version."""


class DownWithoutUp(MigrationSetError):
    """A .down.sql file has no .up.sql file of the same version."""


class UnreadableMigration(MigrationSetError):
    """A migration file cannot be read or is not valid UTF-8."""


class NoMigrations(MigrationSetError):
    """MIGRATIONS_DIR holds no migration file."""


class ChecksumMismatch(MigrationSetError):
    """An applied migration's file changed since it was applied."""


class MissingMigration(MigrationSetError):
    """A version is applied in the database but its file is not on disk."""


class OutOfOrder(MigrationSetError):
    """A pending version is lower than the highest applied one."""


class MissingDownFile(MigrationSetError):
    """A migration to roll back has no .down.sql file."""


class UnknownVersion(MigrationSetError):
    """A version given on the command line is not a migration on disk."""


class UnsupportedStatement(MigrationSetError):
    """A statement cannot run where it is written: transaction control in an ordinary file, a
    psql meta-command, COPY TO STDOUT, COPY FROM stdin without its data, and the like."""

    def __init__(self, message: str, *, file: str, line: int | None = None) -> None:
        super().__init__(message, file=file)
        self.line = line

    def fields(self) -> dict[str, object]:
        return {**super().fields(), "line": self.line}


class UnknownPlaceholder(UnsupportedStatement):
    """A `${...}` in a file that is not on the run's placeholder allow-list."""


class NeedsNoTransaction(MigrationSetError):
    """An ordinary (transactional) file holds a statement that cannot run in a transaction."""


class NeedsAttention(RunnerError):
    """The database is in a state that a person must look at before the runner goes on."""

    exit_code = ExitCode.NEEDS_ATTENTION


class ForeignTrackingTable(NeedsAttention):
    """A table with the tracking table's name exists but has another shape."""


class HalfApplied(NeedsAttention):
    """A migration is recorded as running or failed (it ran outside a transaction)."""

    def __init__(self, message: str, *, version: int) -> None:
        super().__init__(message)
        self.version = version

    def fields(self) -> dict[str, object]:
        return {"version": self.version}


class MigrationFailed(RunnerError):
    """A migration's SQL failed; its transaction was rolled back."""

    exit_code = ExitCode.MIGRATION_FAILED

    event = "migration.failed"

    def __init__(
        self,
        message: str,
        *,
        version: int,
        file: str,
        sqlstate: str | None,
        line: int | None,
        column: int | None = None,
        detail: str | None = None,
        hint: str | None = None,
        context: str | None = None,
    ) -> None:
        super().__init__(message)
        self.version = version
        self.file = file
        self.sqlstate = sqlstate
        self.line = line
        self.column = column
        self.detail = detail
        self.hint = hint
        self.context = context

    def fields(self) -> dict[str, object]:
        found = {
            "version": self.version,
            "file": self.file,
            "sqlstate": self.sqlstate,
            "line": self.line,
            "column": self.column,
            "detail": self.detail,
            "hint": self.hint,
            "context": self.context,
        }
        return {k: v for k, v in found.items() if v is not None or k in ("sqlstate", "line")}


class Interrupted(RunnerError):
    """A signal stopped the run; the migration in flight was rolled back."""

    def __init__(self, signal_number: int, in_flight: str | None = None) -> None:
        super().__init__(
            f"stopped by signal {signal_number}; "
            + (in_flight or "no migration was running, or it was rolled back")
        )
        self.signal_number = signal_number


class FleetFailed(RunnerError):
    """A run over many targets in which some failed, were stopped, or never started: it exits
    with the most severe of their codes (exit_codes.SEVERITY)."""

    def __init__(self, message: str, *, code: ExitCode) -> None:
        super().__init__(message)
        self.code = code


def exit_code_for(error: BaseException) -> ExitCode:
    """The exit status that reports `error`; anything unforeseen is a bug (70)."""
    if isinstance(error, Interrupted):
        # SIGINT is 130; SIGTERM and SIGHUP (a closed terminal, a stopped supervisor) are 143.
        return ExitCode.INTERRUPTED if error.signal_number == SIGINT else ExitCode.TERMINATED
    if isinstance(error, FleetFailed):
        return error.code
    if isinstance(error, RunnerError):
        return error.exit_code
    return ExitCode.INTERNAL
