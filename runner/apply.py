"""Running migration files against the database: transactional, no-transaction, and all in one.

A transactional migration goes to the server as one simple-protocol query: BEGIN, its
timeouts, the file as written, the tracking row, COMMIT. One round trip, and the row commits
with the schema change or not at all. The session commits asynchronously while the run goes
on; `finish()` makes every commit durable before the run reports success.
"""

from __future__ import annotations

import bisect
import logging
import re
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import psycopg
import tenacity
from psycopg.sql import Composed

from runner import db, logs, retry, sql, sqlscript
from runner.config import ConnectionSettings, Settings, TableName
from runner.errors import (
    DatabaseUnreachable,
    DdlLockTimeout,
    MigrationFailed,
    NeedsNoTransaction,
    UnsupportedStatement,
)
from runner.planner import FileShape, Migration, MigrationFile
from runner.sqlscript import CopyData, Statement

LOCK_NOT_AVAILABLE = "55P03"
QUERY_CANCELED = "57014"
BATCH = 1 << 20  # characters of statements sent in one query when a file is streamed
_COPY_LINE = re.compile(r"\bline (\d+)")


@dataclass(frozen=True)
class _Step:
    """One migration file in one direction."""

    migration: Migration
    file: MigrationFile
    direction: str  # "up" or "down"

    @property
    def fields(self) -> dict[str, Any]:
        return {
            "version": self.migration.version,
            "name": self.migration.name,
            "file": self.file.filename,
            "direction": self.direction,
        }


class _LockTimeoutRetry(Exception):
    """A try of a transactional migration hit lock_timeout and was rolled back."""

    def __init__(self, blockers: list[dict[str, Any]]) -> None:
        super().__init__("lock timeout")
        self.blockers = blockers


class Applier:
    """Applies and reverts migrations on the runner's one connection."""

    def __init__(
        self,
        conn: db.Connection,
        settings: Settings,
        *,
        table: TableName,
        applied_by: str,
        sleep: Callable[[float], Any] = time.sleep,
    ) -> None:
        self.conn = conn
        self.table = table
        self.applied_by = applied_by
        self.sleep = sleep
        self.lock_timeout_ms = round(settings.ddl_lock_timeout * 1000)
        self.statement_timeout_ms = round(settings.statement_timeout * 1000)
        self.lock_retries = settings.ddl_lock_retries
        self.statement_timeout = settings.statement_timeout
        self._probe = _BlockerProbe(settings.connection) if self.lock_timeout_ms else None
        self._wrote = False
        self.applied: list[int] = []  # versions committed by this run, in order
        self.reverted: list[int] = []
        self._running: _Step | None = None  # whose NOTICEs the server is sending
        self.in_flight: str | None = None  # what a signal left of the migration it stopped
        db.execute(conn, sql.SET_ASYNCHRONOUS_COMMIT)
        conn.add_notice_handler(self._notice)

    # -- public -------------------------------------------------------------------------------

    def up(self, migration: Migration) -> None:
        self._run(_Step(migration, migration.up, "up"))

    def down(self, migration: Migration) -> None:
        assert migration.down is not None
        self._run(_Step(migration, migration.down, "down"))

    def up_all_in_one(self, migrations: Sequence[Migration]) -> None:
        """Every migration in one transaction: all or nothing."""
        for migration in migrations:
            if migration.up.no_transaction:
                raise NeedsNoTransaction(
                    f"{migration.up.filename} runs outside a transaction "
                    "(-- migrate:no-transaction), so it cannot join --single-transaction",
                    file=migration.up.filename,
                    version=migration.version,
                )
        steps = [_Step(migration, migration.up, "up") for migration in migrations]
        for step in steps:
            step.file.shape  # noqa: B018 (refused before anything runs)
        for step in steps:
            logs.event(
                logging.INFO,
                "migration.started",
                f"applying {step.file.filename}",
                **step.fields,
                single_transaction=True,
            )
        started = time.perf_counter()
        try:
            self._with_lock_retries(steps[0], lambda: self._single_transaction(steps))
        except KeyboardInterrupt:
            committed = self._committed_anyway(steps[0])
            if committed:
                self.applied.extend(step.migration.version for step in steps)
            self._note_in_flight(steps[0], committed)
            raise
        finally:
            self._running = None
        self.applied.extend(step.migration.version for step in steps)
        duration = round((time.perf_counter() - started) * 1000)
        for step in steps:
            logs.event(
                logging.INFO,
                "migration.applied",
                f"applied {step.file.filename}",
                **step.fields,
                checksum=step.file.checksum,
                duration_ms=duration,
                single_transaction=True,
            )

    def finish(self) -> None:
        """Make every asynchronous commit of this run durable: a synchronous commit flushes
        the WAL up to itself, and so every commit before it."""
        db.execute(self.conn, sql.RESET_SYNCHRONOUS_COMMIT)
        if self._wrote:
            with db.transaction(self.conn):
                db.execute(self.conn, sql.ASSIGN_TRANSACTION_ID)

    def finish_quietly(self) -> None:
        """finish() on the way out of a failed run; the connection may be gone by then."""
        try:
            self._rollback()
            self.finish()
        except psycopg.Error:
            pass

    def close(self) -> None:
        if self._probe:
            self._probe.close()

    # -- one migration ------------------------------------------------------------------------

    def _run(self, step: _Step) -> None:
        logs.event(
            logging.INFO, "migration.started", f"running {step.file.filename}", **step.fields
        )
        started = time.perf_counter()
        self._running = step
        try:
            if step.file.no_transaction:
                statements = self._no_transaction(step)
            else:
                statements = self._with_lock_retries(step, lambda: self._transactional(step))
        except KeyboardInterrupt:
            committed = self._committed_anyway(step)
            if committed:
                self._done(step)
            self._note_in_flight(step, committed)
            raise
        finally:
            self._running = None
        self._done(step)
        logs.event(
            logging.INFO,
            "migration.applied" if step.direction == "up" else "migration.reverted",
            f"{'applied' if step.direction == 'up' else 'reverted'} {step.file.filename}",
            **step.fields,
            checksum=step.file.checksum,
            statements=statements,
            duration_ms=round((time.perf_counter() - started) * 1000),
        )

    def _done(self, step: _Step) -> None:
        done = self.applied if step.direction == "up" else self.reverted
        done.append(step.migration.version)

    def _committed_anyway(self, step: _Step) -> bool | None:
        """After a signal: did the migration commit before the cancel reached the server?
        The whole file travels in one query with its COMMIT, so a late signal finds it
        committed. The tracking row decides; None when the server does not answer."""
        try:
            self._rollback()
            row = db.execute(
                self.conn, sql.select_status(self.table), {"version": step.migration.version}
            ).fetchone()
        except psycopg.Error:
            return None
        applied = row is not None and row[0] == "applied"
        return applied if step.direction == "up" else row is None

    def _note_in_flight(self, step: _Step, committed: bool | None) -> None:
        """What the signal left of the migration it stopped, for the run's last words."""
        version = step.migration.version
        if committed:
            self.in_flight = f"migration {version} had already committed, with its row"
        elif committed is None:
            self.in_flight = (
                f"migration {version} may have committed: the server did not answer after the "
                "signal; the next run reads the tracking table"
            )
        elif step.file.no_transaction:
            self.in_flight = f"migration {version} stopped half-way: " + (
                _left_outside_a_transaction(step).replace("before this one", "it finished")
            )
        else:
            self.in_flight = f"migration {version} was rolled back and nothing of it remains"

    def _with_lock_retries(self, step: _Step, attempt: Callable[[], int]) -> int:
        def log_retry(state: tenacity.RetryCallState) -> None:
            failure = state.outcome.exception() if state.outcome else None
            blockers = failure.blockers if isinstance(failure, _LockTimeoutRetry) else []
            logs.event(
                logging.WARNING,
                "migration.lock_timeout",
                f"{step.file.filename} waited more than DDL_LOCK_TIMEOUT for a lock and was "
                f"rolled back; retrying in {state.upcoming_sleep:.1f}s",
                **step.fields,
                attempt=state.attempt_number,
                retry_in_s=round(state.upcoming_sleep, 3),
                blockers=blockers,
            )

        policy = retry.backoff(
            attempts=self.lock_retries + 1,
            retry=tenacity.retry_if_exception_type(_LockTimeoutRetry),
            sleep=self.sleep,
            initial=0.5,
            maximum=10.0,
            before_sleep=log_retry,
        )
        try:
            return int(policy(attempt))
        except tenacity.RetryError as gave_up:
            last = gave_up.last_attempt.exception()
            blockers = last.blockers if isinstance(last, _LockTimeoutRetry) else []
            who = ", ".join(f"pid {b['pid']} ({b['application_name']})" for b in blockers)
            raise DdlLockTimeout(
                f"{step.file.filename} could not get its locks within DDL_LOCK_TIMEOUT "
                f"({self.lock_timeout_ms} ms) in {self.lock_retries + 1} tries"
                + (f"; blocked by {who}" if who else "")
                + "; everything it did was rolled back",
                version=step.migration.version,
            ) from None

    def _transactional(self, step: _Step) -> int:
        done = self._body(step, self._opening(), self._closing(step, commit=True))
        self._wrote = True
        return done

    def _single_transaction(self, steps: Sequence[_Step]) -> int:
        self._own(steps[0], self._opening())
        done = 0
        for step in steps:
            self._running = step
            done += self._body(step, _Own("", 0), self._closing(step, commit=False))
        db.execute(self.conn, sql.COMMIT)
        self._wrote = True
        return done

    def _opening(self) -> _Own:
        timeouts = sql.set_local_timeouts(self.lock_timeout_ms, self.statement_timeout_ms)
        text = f"BEGIN;\n{sql.SESSION_RESET};\n{timeouts.as_string(self.conn)};\n"
        return _Own(text, 1 + sql.SESSION_RESET_STATEMENTS + 1)

    def _closing(self, step: _Step, *, commit: bool) -> _Own:
        record = self._record(step).as_string(self.conn)
        text = f"\n;\n{sql.SESSION_RESET};\n{record};" + ("\nCOMMIT;" if commit else "")
        return _Own(text, sql.SESSION_RESET_STATEMENTS + 1 + int(commit))

    def _body(self, step: _Step, opening: _Own, closing: _Own) -> int:
        """Run the file between `opening` and `closing`, our own statements: one query for a
        small file; batches, and COPY data streamed, for the rest. Returns its statement count."""
        shape = step.file.shape
        if shape.wrapper:
            begin, commit = shape.wrapper
            logs.event(
                logging.WARNING,
                "migration.transaction_wrapper_ignored",
                f"{step.file.filename}: its own BEGIN (line {begin.line}) and COMMIT (line "
                f"{commit.line}) are ignored: it runs in the runner's transaction with its row",
                **step.fields,
                begin_line=begin.line,
                commit_line=commit.line,
            )
        if step.file.content is not None and not shape.has_copy:
            text = _blanked(step.file.text(), shape.skipped)

            def locate(failure: db.ScriptError) -> Where:
                return _where_in_text(text, failure, len(opening.text), opening.statements)

            ran = self._send(step, opening.text + text + closing.text, locate)
            return ran - opening.statements - closing.statements
        if opening.text:
            self._own(step, opening)
        done = self._stream(step, shape)
        self._own(step, closing)
        return done

    def _stream(self, step: _Step, shape: FileShape) -> int:
        ignored = {statement.offset for statement in shape.skipped}
        batch: list[Statement] = []
        size = done = 0
        try:
            with step.file.reader() as read:
                for unit in sqlscript.read_units(read):
                    if isinstance(unit, CopyData):
                        done += self._batch(step, batch) + self._copy(step, unit, in_block=True)
                        batch, size = [], 0
                    elif unit.offset not in ignored:
                        batch.append(unit)
                        size += len(unit.text)
                        if size >= BATCH:
                            done += self._batch(step, batch)
                            batch, size = [], 0
        except sqlscript.ScriptSyntaxError as error:  # the file changed since it was read
            raise UnsupportedStatement(
                f"{step.file.filename}: {error}", file=step.file.filename, line=error.line
            ) from None
        return done + self._batch(step, batch)

    def _batch(self, step: _Step, statements: Sequence[Statement]) -> int:
        """Several statements of a streamed file in one query."""
        if not statements:
            return 0
        starts = []
        query = ""
        for statement in statements:
            starts.append(len(query))
            query += statement.text + ";\n"

        def locate(failure: db.ScriptError) -> Where:
            position = failure.error.diag.statement_position
            if position and position.isdigit():
                at = int(position) - 1
                index = bisect.bisect_right(starts, at) - 1
                return _where_in_statement(statements[index], at - starts[index])
            if 0 <= failure.statement_index < len(statements):
                return statements[failure.statement_index].line, None
            return None, None

        return self._send(step, query, locate)

    def _copy(self, step: _Step, unit: CopyData, *, in_block: bool) -> int:
        """COPY ... FROM stdin with the file's inline data, streamed as it is read."""
        try:
            with self.conn.cursor() as cursor, cursor.copy(unit.statement.text) as copy:
                for piece in unit.pieces:
                    copy.write(piece)
        except psycopg.Error as error:
            if self._connection_lost(error):
                raise self._lost(step, error) from None
            if in_block:
                self._rollback()
            line = unit.statement.line
            found = _COPY_LINE.search(error.diag.context or "")
            if found:  # "COPY t, line 3": the third line of data, which starts on the next
                line += int(found.group(1))
            raise self._failure(step, error, (line, None), rolled_back=in_block) from None
        return 1

    def _own(self, step: _Step, own: _Own) -> None:
        """Our own statements around a file: a failure there names no line of it."""
        self._send(step, own.text, lambda failure: (None, None))

    def _send(self, step: _Step, query: str, locate: Callable[[db.ScriptError], Where]) -> int:
        """Run `query` in the migration's transaction; a failure rolls it back and names the
        file's line that `locate` finds for it. Returns how many statements ran."""
        if self._probe:
            self._probe.arm(self.conn.info.backend_pid, self.lock_timeout_ms / 1000)
        try:
            ran = db.run_script(self.conn, query)
        except db.ScriptError as failure:
            blockers = self._probe.disarm() if self._probe else []
            error = failure.error
            if self._connection_lost(error):
                raise self._lost(step, error) from None
            self._rollback()
            if error.sqlstate == LOCK_NOT_AVAILABLE and self.lock_timeout_ms:
                raise _LockTimeoutRetry(blockers) from None
            raise self._failure(step, error, locate(failure), rolled_back=True) from None
        except psycopg.OperationalError as error:
            if self._probe:
                self._probe.disarm()
            raise self._lost(step, error) from None
        if self._probe:
            self._probe.disarm()
        return ran

    def _notice(self, diagnostic: psycopg.errors.Diagnostic) -> None:
        """A NOTICE or WARNING the server sent while a migration ran (RAISE NOTICE, say)."""
        step = self._running
        if step is None:
            return
        severity = diagnostic.severity_nonlocalized or diagnostic.severity or "NOTICE"
        message = diagnostic.message_primary or ""
        logs.event(
            logging.WARNING if severity == "WARNING" else logging.INFO,
            "migration.notice",
            f"{step.file.filename}: {severity}: {message}",
            **step.fields,
            severity=severity,
            sqlstate=diagnostic.sqlstate,
            notice=message,
            detail=diagnostic.message_detail,
            hint=diagnostic.message_hint,
        )

    def _record(self, step: _Step) -> Composed:
        if step.direction == "down":
            return sql.delete_row_literal(self.table, step.migration.version)
        return sql.insert_applied_literal(
            self.table,
            version=step.migration.version,
            name=step.migration.name,
            checksum=step.file.checksum,
            applied_by=self.applied_by,
        )

    def _rollback(self) -> None:
        if self.conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
            db.execute(self.conn, sql.ROLLBACK)

    def _reset_session(self) -> None:
        db.run_script(self.conn, sql.SESSION_RESET)

    # -- no transaction -----------------------------------------------------------------------

    def _no_transaction(self, step: _Step) -> int:
        """Statement by statement, in autocommit; a file's own BEGIN ... COMMIT blocks run as
        written. The row says `running` until the last one succeeds; a failure or a death
        leaves it `running` or `failed` for a person."""
        version = step.migration.version
        self._reset_session()
        db.execute(self.conn, sql.set_statement_timeout(self.statement_timeout_ms))
        left = None
        if step.direction == "up":
            found = db.execute(self.conn, sql.select_status(self.table), {"version": version})
            left = found.fetchone()
        if left is not None:
            # The planner lets a failed row through only when every statement is safe to rerun.
            logs.event(
                logging.WARNING,
                "migration.retrying",
                f"{step.file.filename} was left {left[0]} by an earlier run; every statement "
                "in it is safe to run again, so this run retries it",
                **step.fields,
                previous_status=left[0],
            )
            self._set_status(version, "running", 0)
        elif step.direction == "up":
            db.execute(
                self.conn,
                sql.insert_row(self.table),
                {
                    "status": "running",
                    "version": version,
                    "name": step.migration.name,
                    "checksum": step.file.checksum,
                    "applied_by": self.applied_by,
                },
            )
        else:
            self._set_status(version, "running", 0)
        started = time.perf_counter()
        done = 0
        skipped = {statement.offset for statement in step.file.shape.skipped}
        try:
            with step.file.reader() as read:
                for unit in sqlscript.read_units(read):
                    if isinstance(unit, CopyData):
                        in_block = self.conn.info.transaction_status != _IDLE
                        done += self._copy(step, unit, in_block=in_block)
                        continue
                    if unit.offset not in skipped:
                        self._no_transaction_statement(step, unit)
                        done += 1
        except psycopg.OperationalError as error:
            raise self._lost(step, error) from None
        except BaseException as stopped:
            if not isinstance(stopped, DatabaseUnreachable):  # a lost session stays `running`
                self._mark_failed(version)
            raise
        elapsed = round((time.perf_counter() - started) * 1000)
        self._reset_session()
        if step.direction == "up":
            self._set_status(version, "applied", elapsed)
        else:
            db.execute(self.conn, sql.delete_row(self.table), {"version": version})
        self._wrote = True
        return done

    def _no_transaction_statement(self, step: _Step, statement: Statement) -> None:
        index = sqlscript.concurrent_index(statement.text)
        if index:
            self._drop_invalid_index(step, *index)
        try:
            db.run_script(self.conn, statement.text)
        except db.ScriptError as failure:
            if self._connection_lost(failure.error):
                raise self._lost(step, failure.error) from None
            raise self._failed_statement(step, statement, failure.error) from None
        if index:
            self._check_index_valid(step, statement, *index)

    def _set_status(self, version: int, status: str, elapsed_ms: int) -> None:
        db.execute(
            self.conn,
            sql.set_status(self.table),
            {"version": version, "status": status, "execution_ms": elapsed_ms},
        )

    def _mark_failed(self, version: int) -> None:
        """Best effort: the row already says `running`, which a later run also refuses."""
        try:
            self._rollback()
            self._reset_session()
            self._set_status(version, "failed", 0)
        except (psycopg.Error, KeyboardInterrupt):
            logs.event(
                logging.WARNING,
                "migration.mark_failed_failed",
                f"could not mark migration {version} failed; it stays running",
                version=version,
            )

    def _drop_invalid_index(self, step: _Step, name: str, table: str) -> None:
        row = db.execute(self.conn, sql.INDEX_VALIDITY, {"name": name, "table": table}).fetchone()
        if row is None or row[1]:
            return
        schema = str(row[0])
        db.execute(self.conn, sql.drop_index_concurrently(schema, name))
        logs.event(
            logging.WARNING,
            "index.invalid_dropped",
            f"dropped invalid index {schema}.{name} left by an earlier failed "
            "CREATE INDEX CONCURRENTLY",
            **step.fields,
            index=f"{schema}.{name}",
        )

    def _check_index_valid(self, step: _Step, statement: Statement, name: str, table: str) -> None:
        row = db.execute(self.conn, sql.INDEX_VALIDITY, {"name": name, "table": table}).fetchone()
        if row is not None and row[1]:
            return
        raise MigrationFailed(
            f"migration {step.migration.version} failed at {step.file.filename} line "
            f"{statement.line}: index {name} is not valid after CREATE INDEX CONCURRENTLY; the "
            "next try drops and rebuilds it",
            version=step.migration.version,
            file=step.file.filename,
            sqlstate=None,
            line=statement.line,
        )

    # -- errors -------------------------------------------------------------------------------

    def _failed_statement(
        self, step: _Step, statement: Statement, error: psycopg.Error
    ) -> MigrationFailed:
        position = error.diag.statement_position
        where: Where = (statement.line, statement.column)
        if position and position.isdigit():
            where = _where_in_statement(statement, int(position) - 1)
        return self._failure(step, error, where, rolled_back=False)

    def _failure(
        self, step: _Step, error: psycopg.Error, where: Where, *, rolled_back: bool
    ) -> MigrationFailed:
        """The server's own words (with its DETAIL, HINT and CONTEXT) at the file's line."""
        diag = error.diag
        message = _one_line(diag.message_primary or str(error))
        if error.sqlstate == QUERY_CANCELED and self.statement_timeout:
            message += f" (STATEMENT_TIMEOUT is {self.statement_timeout:g}s)"
        told = {
            "DETAIL": diag.message_detail,
            "HINT": diag.message_hint,
            "CONTEXT": diag.context,
        }
        for label, text in told.items():
            if text:
                message += f"; {label}: {_one_line(text)}"
        line, column = where
        place = step.file.filename
        if line:
            place += f" line {line}" + (f" column {column}" if column else "")
        outcome = (
            "its transaction was rolled back and nothing of it remains"
            if rolled_back
            else _left_outside_a_transaction(step)
        )
        return MigrationFailed(
            f"migration {step.migration.version} failed at {place}: "
            f"{error.sqlstate or 'no SQLSTATE'}: {message}; {outcome}",
            version=step.migration.version,
            file=step.file.filename,
            sqlstate=error.sqlstate,
            line=line,
            column=column,
            detail=_one_line(diag.message_detail or "") or None,
            hint=_one_line(diag.message_hint or "") or None,
            context=_one_line(diag.context or "") or None,
        )

    def _connection_lost(self, error: psycopg.Error) -> bool:
        """The server ended the session (terminated, shutting down, crashed) or the network
        dropped it: not the migration's fault, and whether it committed is for the next run's
        read of the tracking table to say."""
        state = error.sqlstate or ""
        return self.conn.broken or self.conn.closed or state.startswith(("08", "57P"))

    def _lost(self, step: _Step, error: psycopg.Error) -> DatabaseUnreachable:
        return DatabaseUnreachable(
            f"connection lost while running {step.file.filename}: "
            f"{' '.join(str(error).split())}; run again: the tracking table tells whether it "
            "committed"
        )


_IDLE = psycopg.pq.TransactionStatus.IDLE


@dataclass(frozen=True)
class _Own:
    """The runner's own statements before or after a file's, sent in the same query."""

    text: str
    statements: int


def _blanked(text: str, skipped: Sequence[Statement]) -> str:
    """The file with what is not sent (its own BEGIN and COMMIT, pg_dump's \\restrict lines)
    blanked out, lines and columns kept."""
    for statement in skipped:
        end = statement.offset + len(statement.text)
        text = text[: statement.offset] + re.sub(r"[^\n]", " ", statement.text) + text[end:]
    return text


Where = tuple[int | None, int | None]  # line and column in the file, 1-based


def _left_outside_a_transaction(step: _Step) -> str:
    """What a no-transaction migration that stopped half-way leaves, and what comes next."""
    if step.file.shape.retry_safe:
        return (
            "it ran outside a transaction: statements before this one stay applied, an index "
            "it was building may be left invalid, and the next run drops that and retries the "
            "file by itself"
        )
    return (
        "it ran outside a transaction: statements before this one stay applied, and the "
        "migration is recorded as failed until a person checks it and runs "
        f"`migration-runner repair --version {step.migration.version}`"
    )


def _where_in_text(text: str, failure: db.ScriptError, prefix_length: int, ours: int) -> Where:
    """Where in `text` a failure of opening + text + closing points."""
    position = failure.error.diag.statement_position
    if position and position.isdigit() and 0 <= int(position) - 1 - prefix_length < len(text):
        offset = int(position) - 1 - prefix_length
        return sqlscript.line_of(text, offset), offset - text.rfind("\n", 0, offset)
    index = failure.statement_index - ours
    if index >= 0:
        statements = sqlscript.split(text)
        if index < len(statements):
            return statements[index].line, statements[index].column
    return None, None


def _where_in_statement(statement: Statement, offset: int) -> Where:
    """The file's line and column of a character of `statement`."""
    before = statement.text[:offset]
    newlines = before.count("\n")
    if newlines:
        return statement.line + newlines, offset - before.rfind("\n")
    return statement.line, statement.column + offset


def _one_line(text: str) -> str:
    return " ".join(text.split())


class _BlockerProbe:
    """Notes who blocks the runner's session when a migration waits on a lock for long.

    A session blocked on a lock cannot ask pg_blocking_pids() itself, so a helper thread with
    its own connection looks shortly before lock_timeout fires. It connects as soon as it is
    first armed, not when it must look; each arming has a number, and a look that finishes
    after its arming was disarmed is dropped instead of being taken for the next one's."""

    def __init__(self, settings: ConnectionSettings | None) -> None:
        self._settings = settings
        self._condition = threading.Condition()
        self._armed: tuple[int, int, float] | None = None  # (arming, pid, when to look)
        self._arming = 0
        self._seen: list[dict[str, Any]] = []
        self._thread: threading.Thread | None = None
        self._conn: db.Connection | None = None
        self._closed = False

    def arm(self, pid: int, lock_timeout: float) -> None:
        with self._condition:
            self._arming += 1
            self._armed = (self._arming, pid, time.monotonic() + lock_timeout * 0.8)
            self._seen = []
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._watch, args=(lock_timeout,), daemon=True
                )
                self._thread.start()
            self._condition.notify()

    def disarm(self) -> list[dict[str, Any]]:
        with self._condition:
            self._arming += 1
            self._armed = None
            return list(self._seen)

    def close(self) -> None:
        with self._condition:
            self._closed = True
            self._armed = None
            self._condition.notify()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def _watch(self, lock_timeout: float) -> None:
        self._connect(lock_timeout)
        while True:
            with self._condition:
                while not self._closed and (
                    self._armed is None or time.monotonic() < self._armed[2]
                ):
                    wait = None if self._armed is None else self._armed[2] - time.monotonic()
                    self._condition.wait(wait)
                if self._closed:
                    break
                assert self._armed is not None
                arming, pid, _ = self._armed
                self._armed = None
            seen = self._look(pid)
            with self._condition:
                if arming == self._arming:
                    self._seen = seen
        if self._conn is not None:
            self._conn.close()

    def _connect(self, lock_timeout: float) -> None:
        if self._settings is None:
            return
        try:
            # libpq waits at least 2 s; the look comes at 80% of lock_timeout.
            self._conn = db.connect(self._settings, connect_timeout=max(2, round(lock_timeout)))
        except psycopg.Error as error:
            self._failed(error)

    def _look(self, pid: int) -> list[dict[str, Any]]:
        if self._conn is None:
            return []
        try:
            rows = db.execute(self._conn, sql.BLOCKERS, {"pid": pid}).fetchall()
        except psycopg.Error as error:
            self._failed(error)
            return []
        return [
            {
                "pid": pid,
                "application_name": app,
                "state": state,
                "transaction_age_s": age,
                "query": query,
            }
            for pid, app, state, age, query in rows
        ]

    @staticmethod
    def _failed(error: psycopg.Error) -> None:
        logs.event(
            logging.WARNING,
            "lock.probe_failed",
            "could not look up who blocks the migration; lock timeouts will name no blocker: "
            + " ".join(str(error).split()),
            error=" ".join(str(error).split()),
        )
