"""Running migration files against the database: transactional, no-transaction, and all in one.

A transactional migration goes to the server as one simple-protocol query: BEGIN, its
timeouts, the file as written, a session reset, the tracking row, COMMIT. One round trip, and
the row commits with the schema change or not at all. The session commits asynchronously while
the run goes on; `finish()` makes every commit durable before the run reports success.

The runner's own work between two migrations (its log lines) is done while the server runs the
next one: a migration's `migration.applied` line is written once the next migration's query has
left, and `finish()` writes the last one.
"""

from __future__ import annotations

import enum
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import psycopg
import tenacity
from psycopg import sql
from psycopg.pq.abc import PGresult

from runner import db, durability, indexes, locate, logs, retry, sqlscript, stopping
from runner.blockers import BlockerProbe
from runner.config import Settings
from runner.errors import (
    DatabaseUnreachable,
    DdlLockTimeout,
    MigrationFailed,
    NeedsNoTransaction,
    UnsupportedStatement,
)
from runner.locate import Where
from runner.planner import FileShape, Migration, MigrationFile
from runner.sqlscript import CopyData, Statement
from runner.tracking import STARTED_SETTING, TrackingTable

LOCK_NOT_AVAILABLE = "55P03"
QUERY_CANCELED = "57014"
BATCH = 1 << 20  # characters of statements sent in one query when a file is streamed
# Consecutive small transactional migrations go to the server together, each still in its own
# transaction with its row: batches of 1, 2, 4, ... up to this many, and this many characters.
MOST_TOGETHER = 64
TOGETHER_CHARACTERS = 256 * 1024
_COMMIT_TAG = b"COMMIT"

# Back to the session the runner connected with, before each write of a migration's row (and
# before a migration when the last one did not end with it), whatever the last file did to it:
# role, settings, temporary tables, prepared statements, cursors, listeners, cached plans and
# sequence values. Not DISCARD ALL, which would also release the migration lock. Every statement
# here may run inside a transaction block.
ROLE_RESET = "SET SESSION AUTHORIZATION DEFAULT"
SETTINGS_RESET = (
    "RESET ALL; DEALLOCATE ALL; CLOSE ALL; UNLISTEN *; DISCARD PLANS; DISCARD TEMP; "
    f"DISCARD SEQUENCES; {durability.ASYNCHRONOUS}"
)
SESSION_RESET = f"{ROLE_RESET}; {SETTINGS_RESET}"
SESSION_RESET_STATEMENTS = SESSION_RESET.count(";") + 1
SETTINGS_RESET_STATEMENTS = SETTINGS_RESET.count(";") + 1
# Before a migration's row, which comes before RESET ALL: a file's own timeouts (a
# `SET statement_timeout = 1`, say) must not cut the row's statement short.
_NO_TIMEOUTS = (
    "SELECT set_config('statement_timeout', '0', true), set_config('lock_timeout', '0', true)"
)
_COMMIT = sql.SQL("COMMIT")
_ROLLBACK = sql.SQL("ROLLBACK")
_IDLE = psycopg.pq.TransactionStatus.IDLE


class Direction(enum.Enum):
    UP = "up"
    DOWN = "down"


@dataclass(frozen=True)
class _Step:
    """One migration file in one direction."""

    migration: Migration
    file: MigrationFile
    direction: Direction

    @property
    def up(self) -> bool:
        return self.direction is Direction.UP

    @property
    def fields(self) -> dict[str, Any]:
        return {
            "version": self.migration.version,
            "name": self.migration.name,
            "file": self.file.filename,
            "direction": self.direction.value,
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
        table: TrackingTable,
        settings: Settings,
        *,
        applied_by: str,
        sleep: Callable[[float], Any] = time.sleep,
    ) -> None:
        self.conn = table.conn
        self.table = table
        self.applied_by = applied_by
        self.sleep = sleep
        self.lock_timeout_ms = round(settings.ddl_lock_timeout * 1000)
        self.statement_timeout_ms = round(settings.statement_timeout * 1000)
        self.lock_retries = settings.ddl_lock_retries
        self.statement_timeout = settings.statement_timeout
        self._probe = BlockerProbe(settings.connection) if self.lock_timeout_ms else None
        self._wrote = False
        # Whether the session is as the reset leaves it: true after a migration that ended
        # with the reset and committed; false at first and after anything failed.
        self._clean = False
        self._openings: dict[bool, _Own] = {}
        self.applied: list[int] = []  # versions committed by this run, in order
        self.reverted: list[int] = []
        self._running: _Step | None = None  # whose NOTICEs the server is sending
        # Versions whose `migration.started` is out and whose outcome is not.
        self._announced: set[int] = set()
        # Of a batch in flight: its steps, and the results come back so far.
        self._together: tuple[Sequence[_Step], list[PGresult]] | None = None
        self.in_flight: str | None = None  # what a signal left of the migration it stopped
        durability.commit_asynchronously(self.conn)
        self.conn.add_notice_handler(self._notice)

    # -- public -------------------------------------------------------------------------------

    def up(self, migration: Migration) -> None:
        self._run(_Step(migration, migration.up, Direction.UP))

    def up_each(self, migrations: Sequence[Migration]) -> None:
        """Each migration in its own transaction with its row, in order. Runs of small
        transactional files go to the server in one query each, a batch of BEGIN ... COMMIT
        blocks, in batches that grow from one: a failure stops at its block, everything before
        it committed and recorded, nothing after it run."""
        size = 1
        done = 0
        while done < len(migrations):
            steps = _together(migrations[done:], size)
            if len(steps) < 2:
                self.up(migrations[done])
                done += 1
            else:
                done += self._up_together(steps)
            size = min(size * 2, MOST_TOGETHER)

    def down(self, migration: Migration) -> None:
        assert migration.down is not None
        self._run(_Step(migration, migration.down, Direction.DOWN))

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
        steps = [_Step(migration, migration.up, Direction.UP) for migration in migrations]
        for step in steps:
            step.file.shape  # noqa: B018 (refused before anything runs)
        stopping.check()
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
        logs.write_due()
        if self._wrote:
            durability.flush(self.conn)

    def finish_quietly(self) -> None:
        """finish() on the way out of a failed run; the connection may be gone by then."""
        logs.write_due()
        try:
            self._rollback()
            self.finish()
        except psycopg.Error:
            pass

    def close(self) -> None:
        logs.write_due()
        if self._probe:
            self._probe.close()

    # -- one migration ------------------------------------------------------------------------

    def _run(self, step: _Step, *, timed_out: _LockTimeoutRetry | None = None) -> None:
        """`timed_out`: its try in a batch hit the lock timeout; this is the retry."""
        stopping.check()  # a fleet target's thread, which no signal reaches, stops here
        self._announce(step)
        started = time.perf_counter()
        self._running = step
        try:
            if step.file.no_transaction:
                logs.write_due()
                statements = self._no_transaction(step)
            else:
                statements = self._with_lock_retries(
                    step, lambda: self._transactional(step), timed_out=timed_out
                )
        except BaseException as stopped:
            logs.write_due()
            if isinstance(stopped, KeyboardInterrupt):
                committed = self._committed_anyway(step)
                if committed:
                    self._done(step)
                self._note_in_flight(step, committed)
            raise
        finally:
            self._running = None
            self._announced.discard(step.migration.version)
        self._done(step)
        logs.later(
            logging.INFO,
            "migration.applied" if step.up else "migration.reverted",
            f"{'applied' if step.up else 'reverted'} {step.file.filename}",
            **step.fields,
            checksum=step.file.checksum,
            statements=statements,
            duration_ms=round((time.perf_counter() - started) * 1000),
        )

    def _announce(self, step: _Step, **fields: Any) -> None:
        """`migration.started`, once: a migration of a batch that a lock timeout or a syntax
        error stopped is sent again, and not announced again."""
        if step.migration.version in self._announced:
            return
        self._announced.add(step.migration.version)
        logs.later(
            logging.INFO,
            "migration.started",
            f"running {step.file.filename}",
            **step.fields,
            **fields,
        )

    def _done(self, step: _Step) -> None:
        done = self.applied if step.up else self.reverted
        done.append(step.migration.version)

    def _committed_anyway(self, step: _Step) -> bool | None:
        """After a signal: did the migration commit before the cancel reached the server?
        The whole file travels in one query with its COMMIT, so a late signal finds it
        committed. The tracking row decides; None when the server does not answer."""
        try:
            self._rollback()
            status = self.table.status_of(step.migration.version)
        except psycopg.Error:
            return None
        return status == "applied" if step.up else status is None

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

    def _with_lock_retries(
        self,
        step: _Step,
        attempt: Callable[[], int],
        *,
        timed_out: _LockTimeoutRetry | None = None,
    ) -> int:
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

        # Nearly every migration gets its locks at once: only a first lock timeout pays for
        # the retry machinery, which then takes that failure for its own first attempt.
        if timed_out is None:
            try:
                return attempt()
            except _LockTimeoutRetry as failure:
                timed_out = failure

        policy = retry.backoff(
            attempts=self.lock_retries + 1,
            retry=tenacity.retry_if_exception_type(_LockTimeoutRetry),
            sleep=self.sleep,
            initial=0.5,
            maximum=10.0,
            before_sleep=log_retry,
        )
        try:
            return int(policy(retry.failed_first(timed_out, attempt)))
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
        self._clean = True  # its closing reset committed with it
        return done

    def _single_transaction(self, steps: Sequence[_Step]) -> int:
        self._own(steps[0], self._opening())
        done = 0
        for step in steps:
            self._running = step
            done += self._body(step, _Own("", 0), self._closing(step, commit=False))
        db.execute(self.conn, _COMMIT)
        self._wrote = True
        self._clean = True
        return done

    def _opening(self, *, reset: bool | None = None) -> _Own:
        """BEGIN, the reset unless the session is known to be clean, the timeouts. Whatever
        follows may fail and leave the session as it was mid-file: not clean until it commits."""
        reset = not self._clean if reset is None else reset
        self._clean = False
        if reset in self._openings:
            return self._openings[reset]
        timeouts = sql.SQL(
            "SELECT set_config('lock_timeout', {lock}, true), "
            "set_config('statement_timeout', {statement}, true), "
            "set_config({started}, date_part('epoch', clock_timestamp())::text, true)"
        ).format(
            started=sql.Literal(STARTED_SETTING),
            lock=sql.Literal(f"{self.lock_timeout_ms}ms"),
            statement=sql.Literal(f"{self.statement_timeout_ms}ms"),
        )
        if reset:
            opening = _Own(
                f"BEGIN;\n{SESSION_RESET};\n{timeouts.as_string(self.conn)};\n",
                1 + SESSION_RESET_STATEMENTS + 1,
            )
        else:
            opening = _Own(f"BEGIN;\n{timeouts.as_string(self.conn)};\n", 2)
        self._openings[reset] = opening  # the same each time
        return opening

    def _closing(self, step: _Step, *, commit: bool, returning: bool = False) -> _Own:
        """The role back to the runner's, no timeouts, the row (with its execution_ms back
        when `returning`), the rest of the reset, COMMIT. The row comes before RESET ALL, which
        would clear the start its opening recorded; of what else a file may set, only its
        timeouts could change what the row's statement does (it names its table and functions
        with their schemas)."""
        record = self._record(step).as_string(self.conn)
        if returning:
            record += " RETURNING execution_ms"
        text = f"\n;\n{ROLE_RESET};\n{_NO_TIMEOUTS};\n{record};\n{SETTINGS_RESET};" + (
            "\nCOMMIT;" if commit else ""
        )
        return _Own(text, 3 + SETTINGS_RESET_STATEMENTS + int(commit))

    def _body(self, step: _Step, opening: _Own, closing: _Own) -> int:
        """Run the file between `opening` and `closing`, our own statements: one query for a
        small file; batches, and COPY data streamed, for the rest. Returns its statement count."""
        shape = step.file.shape
        _note_wrapper(step)
        if step.file.content is not None and not shape.has_copy:
            text = locate.blanked(step.file.text(), shape.skipped)

            def where(failure: db.ScriptError) -> Where:
                return _in_file(text, failure, len(opening.text), opening.statements)

            ran = self._send(step, opening.text + text + closing.text, where)
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

        def where(failure: db.ScriptError) -> Where:
            at = locate.position(failure.error.diag.statement_position)
            return locate.in_batch(statements, starts, at, failure.statement_index)

        return self._send(step, query, where)

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
            where = locate.in_copy_data(unit.statement, error.diag.context)
            raise self._failure(step, error, where, rolled_back=in_block) from None
        return 1

    def _own(self, step: _Step, own: _Own) -> None:
        """Our own statements around a file: a failure there names no line of it."""
        self._send(step, own.text, lambda failure: locate.NOWHERE)

    def _send(self, step: _Step, query: str, where: Callable[[db.ScriptError], Where]) -> int:
        """Run `query` in the migration's transaction; a failure rolls it back and names the
        file's line that `where` finds for it. Returns how many statements ran. The log lines
        due are written while the server runs it."""
        if self._probe:
            self._probe.arm(self.conn.info.backend_pid, self.lock_timeout_ms / 1000)
        try:
            ran = db.run_script(self.conn, query, meanwhile=logs.write_due)
        except db.ScriptError as failure:
            blockers = self._probe.disarm() if self._probe else []
            error = failure.error
            if self._connection_lost(error):
                raise self._lost(step, error) from None
            self._rollback()
            if error.sqlstate == LOCK_NOT_AVAILABLE and self.lock_timeout_ms:
                raise _LockTimeoutRetry(blockers) from None
            raise self._failure(step, error, where(failure), rolled_back=True) from None
        except psycopg.OperationalError as error:
            if self._probe:
                self._probe.disarm()
            raise self._lost(step, error) from None
        if self._probe:
            self._probe.disarm()
        return ran

    def _notice(self, diagnostic: psycopg.errors.Diagnostic) -> None:
        """A NOTICE or WARNING the server sent while a migration ran (RAISE NOTICE, say). In a
        batch, the COMMITs come back so far tell whose: every block opens with a BEGIN, whose
        result libpq hands over before it reads any notice that follows it."""
        step = self._running
        if self._together is not None:
            steps, results = self._together
            step = steps[min(_commits(results), len(steps) - 1)]
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

    def _record(self, step: _Step) -> sql.Composed:
        if step.up:
            return self.table.record_statement(step.migration, self.applied_by)
        return self.table.delete_statement(step.migration.version)

    def _rollback(self) -> None:
        if self.conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
            db.execute(self.conn, _ROLLBACK)

    def _reset_session(self) -> None:
        db.run_script(self.conn, SESSION_RESET)

    # -- several at once ----------------------------------------------------------------------

    def _up_together(self, steps: Sequence[_Step]) -> int:
        """`steps` in one query, each its own BEGIN ... COMMIT block with its row. Returns how
        many migrations it settled: all of them, or those before a block that hit the lock
        timeout and that block, retried alone."""
        stopping.check()
        blocks: list[_Block] = []
        query = ""
        for position, step in enumerate(steps):
            # After a block that committed, its reset has cleaned the session.
            opening = self._opening(reset=None if position == 0 else False)
            text = locate.blanked(step.file.text(), step.file.shape.skipped)
            self._announce(step, batch=len(steps))
            _note_wrapper(step)
            closing = self._closing(step, commit=True, returning=True)
            blocks.append(_Block(step, len(query) + len(opening.text), opening, text, closing))
            query += opening.text + text + closing.text
        results: list[PGresult] = []
        self._together = (steps, results)
        failure: db.ScriptError | None = None
        blockers: list[dict[str, Any]] = []
        if self._probe:
            self._probe.arm(self.conn.info.backend_pid, self.lock_timeout_ms / 1000)
        try:
            db.run_script(self.conn, query, meanwhile=logs.write_due, into=results)
        except db.ScriptError as failed:
            failure = failed
        except KeyboardInterrupt:
            self._together_interrupted(blocks, results)
            raise
        except psycopg.OperationalError as error:
            committed = self._record_together(blocks, results)
            raise self._lost(steps[min(committed, len(steps) - 1)], error) from None
        finally:
            self._together = None
            if self._probe:
                blockers = self._probe.disarm()
            logs.write_due()
        if failure is not None:
            return self._together_failed(blocks, results, failure, blockers)
        self._record_together(blocks, results)
        self._clean = True
        return len(steps)

    def _together_failed(
        self,
        blocks: Sequence[_Block],
        results: Sequence[PGresult],
        failure: db.ScriptError,
        blockers: list[dict[str, Any]],
    ) -> int:
        """A block failed: those before it committed; it rolled back; none after it ran."""
        committed = self._record_together(blocks, results)
        block = blocks[committed]
        error = failure.error
        if self._connection_lost(error):
            raise self._lost(block.step, error) from None
        self._rollback()
        if failure.statement_index == 0:  # not even BEGIN ran: the server could not parse it
            for each in blocks:  # alone, each in its own query: the error names its line
                self._run(each.step)
            return len(blocks)
        if error.sqlstate == LOCK_NOT_AVAILABLE and self.lock_timeout_ms:
            self._run(block.step, timed_out=_LockTimeoutRetry(blockers))
            return committed + 1
        before = _statements_before_block(results) + block.opening.statements
        where = _in_file(block.text, failure, block.offset, before)
        raise self._failure(block.step, error, where, rolled_back=True) from None

    def _together_interrupted(self, blocks: Sequence[_Block], results: Sequence[PGresult]) -> None:
        """After a signal: the blocks whose COMMIT came back are applied; the next one may have
        committed before the cancel reached it, which its row tells."""
        committed = self._record_together(blocks, results)
        if committed == len(blocks):
            self._note_in_flight(blocks[-1].step, True)
            return
        step = blocks[committed].step
        landed = self._committed_anyway(step)
        if landed:
            self._done(step)
        self._note_in_flight(step, landed)

    def _record_together(self, blocks: Sequence[_Block], results: Sequence[PGresult]) -> int:
        """Each block whose COMMIT came back is applied, with the duration its row holds.
        Returns how many."""
        committed = 0
        ran = 0
        for index, result in enumerate(results):
            if result.status == psycopg.pq.ExecStatus.FATAL_ERROR:
                break
            if result.command_status != _COMMIT_TAG:
                ran += 1
                continue
            block = blocks[committed]
            # The row's INSERT ... RETURNING execution_ms, before the settings' reset.
            row = results[index - SETTINGS_RESET_STATEMENTS - 1]
            self._done(block.step)
            self._announced.discard(block.step.migration.version)
            self._wrote = True
            logs.later(
                logging.INFO,
                "migration.applied",
                f"applied {block.step.file.filename}",
                **block.step.fields,
                checksum=block.step.file.checksum,
                statements=ran - block.opening.statements - (block.closing.statements - 1),
                duration_ms=int(row.get_value(0, 0) or 0) if row.ntuples else 0,
                batch=len(blocks),
            )
            committed += 1
            ran = 0
        return committed

    # -- no transaction -----------------------------------------------------------------------

    def _no_transaction(self, step: _Step) -> int:
        """Statement by statement, in autocommit; a file's own BEGIN ... COMMIT blocks run as
        written. The row says `running` until the last one succeeds; a failure or a death
        leaves it `running` or `failed` for a person."""
        version = step.migration.version
        self._clean = False
        self._reset_session()
        # Explicit (0: off), so that a role's own default cannot cut a long index build short.
        db.execute(
            self.conn,
            sql.SQL("SELECT set_config('statement_timeout', {}, false)").format(
                sql.Literal(f"{self.statement_timeout_ms}ms")
            ),
        )
        left = self.table.status_of(version) if step.up else None
        if left is not None:
            # The planner lets a failed row through only when every statement is safe to rerun.
            logs.event(
                logging.WARNING,
                "migration.retrying",
                f"{step.file.filename} was left {left} by an earlier run; every statement "
                "in it is safe to run again, so this run retries it",
                **step.fields,
                previous_status=left,
            )
            self.table.mark(version, "running", 0)
        elif step.up:
            self.table.insert(step.migration, status="running", applied_by=self.applied_by)
        else:
            self.table.mark(version, "running", 0)
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
        if step.up:
            self.table.mark(version, "applied", elapsed)
        else:
            self.table.delete(version)
        self._wrote = True
        self._clean = True
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

    def _mark_failed(self, version: int) -> None:
        """Best effort: the row already says `running`, which a later run also refuses."""
        try:
            self._rollback()
            self._reset_session()
            self.table.mark(version, "failed", 0)
        except (psycopg.Error, KeyboardInterrupt):
            logs.event(
                logging.WARNING,
                "migration.mark_failed_failed",
                f"could not mark migration {version} failed; it stays running",
                version=version,
            )

    def _drop_invalid_index(self, step: _Step, name: str, table: str) -> None:
        dropped = indexes.drop_if_invalid(self.conn, name, table)
        if dropped:
            logs.event(
                logging.WARNING,
                "index.invalid_dropped",
                f"dropped invalid index {dropped} left by an earlier failed "
                "CREATE INDEX CONCURRENTLY",
                **step.fields,
                index=dropped,
            )

    def _check_index_valid(self, step: _Step, statement: Statement, name: str, table: str) -> None:
        if indexes.is_valid(self.conn, name, table):
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
        at = locate.position(error.diag.statement_position)
        where = (
            (statement.line, statement.column) if at is None else locate.in_statement(statement, at)
        )
        return self._failure(step, error, where, rolled_back=False)

    def _failure(
        self, step: _Step, error: psycopg.Error, where: Where, *, rolled_back: bool
    ) -> MigrationFailed:
        """The server's own words (with its DETAIL, HINT and CONTEXT) at the file's line."""
        diag = error.diag
        message = locate.one_line(diag.message_primary or str(error))
        if error.sqlstate == QUERY_CANCELED and self.statement_timeout:
            message += f" (STATEMENT_TIMEOUT is {self.statement_timeout:g}s)"
        told = {
            "DETAIL": diag.message_detail,
            "HINT": diag.message_hint,
            "CONTEXT": diag.context,
        }
        for label, text in told.items():
            if text:
                message += f"; {label}: {locate.one_line(text)}"
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
            detail=locate.one_line(diag.message_detail or "") or None,
            hint=locate.one_line(diag.message_hint or "") or None,
            context=locate.one_line(diag.context or "") or None,
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


def _note_wrapper(step: _Step) -> None:
    """A file's own BEGIN and COMMIT around everything: skipped, and said so."""
    if not step.file.shape.wrapper:
        return
    begin, commit = step.file.shape.wrapper
    logs.later(
        logging.WARNING,
        "migration.transaction_wrapper_ignored",
        f"{step.file.filename}: its own BEGIN (line {begin.line}) and COMMIT (line "
        f"{commit.line}) are ignored: it runs in the runner's transaction with its row",
        **step.fields,
        begin_line=begin.line,
        commit_line=commit.line,
    )


def _together(migrations: Sequence[Migration], most: int) -> list[_Step]:
    """The small transactional migrations at the head of `migrations` that can go to the
    server in one query: at most `most`, and TOGETHER_CHARACTERS of text."""
    steps: list[_Step] = []
    size = 0
    for migration in migrations[:most]:
        file = migration.up
        if file.no_transaction or file.content is None or file.shape.has_copy:
            break
        size += len(file.content)
        if steps and size > TOGETHER_CHARACTERS:
            break
        steps.append(_Step(migration, file, Direction.UP))
    return steps


def _in_file(text: str, failure: db.ScriptError, starts_at: int, statements_before: int) -> Where:
    """Where in a file's `text`, sent inside a larger query at character `starts_at` after
    `statements_before` statements, a failure of that query points."""
    at = locate.position(failure.error.diag.statement_position)
    return locate.in_text(
        text,
        offset=None if at is None else at - starts_at,
        statement_index=failure.statement_index - statements_before,
    )


def _commits(results: Sequence[PGresult]) -> int:
    return sum(1 for result in results if result.command_status == _COMMIT_TAG)


def _statements_before_block(results: Sequence[PGresult]) -> int:
    """How many statements ran before the block being run: up to its predecessor's COMMIT."""
    for index in range(len(results) - 1, -1, -1):
        if results[index].command_status == _COMMIT_TAG:
            return index + 1
    return 0


@dataclass(frozen=True)
class _Block:
    """One migration's BEGIN ... COMMIT block in a batch; its file text starts at `offset`."""

    step: _Step
    offset: int
    opening: _Own
    text: str
    closing: _Own  # its COMMIT last


@dataclass(frozen=True)
class _Own:
    """The runner's own statements before or after a file's, sent in the same query."""

    text: str
    statements: int


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
