"""The pure planner: from files on disk and rows applied to what runs. No I/O here."""

from __future__ import annotations

import io
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from functools import cached_property
from pathlib import Path

from runner import placeholders
from runner.errors import (
    BadMigrationName,
    ChecksumMismatch,
    DownWithoutUp,
    DuplicateVersion,
    HalfApplied,
    MigrationSetError,
    MissingDownFile,
    MissingMigration,
    NeedsAttention,
    OutOfOrder,
    UnknownVersion,
    UnreadableMigration,
    UnsupportedStatement,
)
from runner.sqlscript import (
    CHUNK,
    IGNORED_META_COMMANDS,
    RETRY_SAFE,
    TRANSACTION_CONTROL,
    CopyData,
    Kind,
    ScriptSyntaxError,
    Statement,
    needs_reading,
    read_units,
)

FILE_NAME = re.compile(
    r"(?P<version>[0-9]+)_(?P<name>[A-Za-z0-9_\-.]+)\.(?P<direction>up|down)\.sql"
)
APPLIED = "applied"
MAX_VERSION = 2**63 - 1  # the tracking table's bigint
NO_TRANSACTION = "-- migrate:no-transaction"
SEAM = 256  # characters of one chunk looked at again with the next


@dataclass(frozen=True)
class FileShape:
    """How a file runs, from reading every statement of it."""

    wrapper: tuple[Statement, Statement] | None = None  # its own BEGIN and COMMIT, ignored
    has_copy: bool = False  # COPY ... FROM stdin with inline data
    retry_safe: bool = False  # every statement may run again after a failure (RETRY_SAFE)
    guards: tuple[Statement, ...] = ()  # pg_dump's \restrict lines, not sent (see sqlscript)

    @property
    def skipped(self) -> tuple[Statement, ...]:
        """What is in the file but not sent to the server."""
        return (*(self.wrapper or ()), *self.guards)


PLAIN_SHAPE = FileShape()


@dataclass(frozen=True)
class MigrationFile:
    """A .sql file as found on disk: its name and the sha256 of its bytes. A small file keeps
    its bytes (`content`); a large one (content None) is read from `path` as it runs. Its text
    is read with `values` put in for its placeholders (None: as written); the checksum stays
    that of the bytes."""

    filename: str
    checksum: str
    content: bytes | None = field(default=b"", repr=False, compare=False)
    path: Path | None = field(default=None, repr=False, compare=False)
    values: Mapping[str, str] | None = field(default=None, repr=False, compare=False)

    def text(self) -> str:
        """The whole SQL: UTF-8, a leading byte-order mark dropped; undecodable files refused.
        For a small file; a large one is read with `reader()`."""
        return self._text

    # Decoded once: the planner, the lock wait and the applier all ask for it.
    @cached_property
    def _text(self) -> str:
        if self.content is None:
            with self.reader() as read:
                return read(-1)
        try:
            text = self.content.decode("utf-8")
        except UnicodeDecodeError as error:
            line = self.content.count(b"\n", 0, error.start) + 1
            raise UnreadableMigration(
                f"{self.filename}: line {line}: not valid UTF-8 (byte {error.start})",
                file=self.filename,
            ) from None
        if "\x00" in text:
            line = text.count("\n", 0, text.index("\x00")) + 1
            raise UnreadableMigration(
                f"{self.filename}: line {line}: contains a NUL character", file=self.filename
            )
        return placeholders.expand(text.removeprefix("\ufeff"), self.values)

    @contextmanager
    def reader(self) -> Iterator[Callable[[int], str]]:
        """`read(n)`: the next n characters of the SQL, "" at the end."""
        if self.content is not None:
            yield io.StringIO(self.text(), newline="").read
            return
        assert self.path is not None
        try:
            with self.path.open(encoding="utf-8-sig", newline="") as handle:
                read = handle.read
                yield read if self.values is None else placeholders.expanding(read, self.values)
        except OSError as error:
            raise UnreadableMigration(
                f"{self.filename}: cannot read it: {error.strerror}", file=self.filename
            ) from None

    @cached_property
    def no_transaction(self) -> bool:
        """True when the first line is `-- migrate:no-transaction`."""
        with self.reader() as read:
            first_line = read(200).split("\n", 1)[0]
        return first_line.strip().lower() == NO_TRANSACTION

    def _needs_reading(self) -> bool:
        """sqlscript.needs_reading over the whole file, a chunk at a time; the end of each
        chunk is looked at again with the next, so that nothing hides at a seam."""
        if self.content is not None:
            return needs_reading(self.text())
        seam = ""
        with self.reader() as read:
            while chunk := read(CHUNK):
                if needs_reading(seam + chunk):
                    return True
                seam = chunk[-SEAM:]
        return False

    @cached_property
    def shape(self) -> FileShape:
        """How the file runs; a file that cannot run as it is written is refused here, before
        anything runs (MigrationSetError)."""
        if not self._needs_reading():
            return PLAIN_SHAPE
        try:
            with self.reader() as read:
                return _shape(self, read_units(read))
        except ScriptSyntaxError as error:
            raise UnsupportedStatement(
                f"{self.filename}: {error}: the file cannot be split into statements",
                file=self.filename,
                line=error.line,
            ) from None


def _shape(file: MigrationFile, units: Iterator[Statement | CopyData]) -> FileShape:
    """Walk every statement once: refuse what cannot run, find the BEGIN/COMMIT wrapper."""
    control: list[Statement] = []
    guards: list[Statement] = []
    retry_safe = file.no_transaction
    first: Statement | None = None
    last: Statement | None = None
    has_copy = False
    block: Statement | None = None  # an open BEGIN of a no-transaction file
    for unit in units:
        statement = unit.statement if isinstance(unit, CopyData) else unit
        if (
            statement.kind is Kind.META_COMMAND
            and _meta_command(statement) in IGNORED_META_COMMANDS
        ):
            guards.append(statement)
            continue
        has_copy = has_copy or isinstance(unit, CopyData)
        first = first or statement
        last = statement
        retry_safe = retry_safe and statement.what in RETRY_SAFE
        refusal = _refusal(file, statement, block)
        if refusal:
            raise UnsupportedStatement(
                f"{file.filename}: line {statement.line}: {refusal}",
                file=file.filename,
                line=statement.line,
            )
        if statement.kind in TRANSACTION_CONTROL:
            control.append(statement)
            if file.no_transaction:
                block = statement if statement.kind in (Kind.BEGIN, Kind.BEGIN_WITH_MODES) else None
    if block is not None:
        raise UnsupportedStatement(
            f"{file.filename}: line {block.line}: this BEGIN has no COMMIT before the end of the "
            "file; end the block with COMMIT",
            file=file.filename,
            line=block.line,
        )
    wrapper = None
    if control and not file.no_transaction:
        if [s.kind for s in control] == [Kind.BEGIN, Kind.COMMIT] and (
            control[0] is first and control[1] is last
        ):
            wrapper = (control[0], control[1])
        else:
            # Name the first one that breaks the wrapper's form: not a BEGIN opening the file,
            # not a COMMIT closing it.
            breaking = [
                s
                for s in control
                if not (s is first and s.kind is Kind.BEGIN)
                and not (s is last and s.kind is Kind.COMMIT)
            ]
            wrong = breaking[0] if breaking else control[0]
            raise UnsupportedStatement(
                f"{file.filename}: line {wrong.line}: {_words(wrong)}: {_TRANSACTION_CONTROL}",
                file=file.filename,
                line=wrong.line,
            )
    if not (wrapper or has_copy or guards or (retry_safe and first)):
        return PLAIN_SHAPE
    return FileShape(
        wrapper=wrapper,
        has_copy=has_copy,
        retry_safe=retry_safe and first is not None,
        guards=tuple(guards),
    )


def _meta_command(statement: Statement) -> str:
    return statement.text.split(None, 1)[0]


_TRANSACTION_CONTROL = (
    "an ordinary migration runs in the runner's own transaction together with its tracking "
    "row, so transaction control inside it would commit or roll back part of the file behind "
    "the runner's back. Only one BEGIN as the first statement and one COMMIT as the last are "
    "allowed (and ignored). Split the file, or make it a no-transaction file (first line "
    f"'{NO_TRANSACTION}') whose BEGIN ... COMMIT blocks run as blocks"
)


def _words(statement: Statement) -> str:
    return " ".join(statement.text.split()[:4])


def _refusal(file: MigrationFile, statement: Statement, block: Statement | None) -> str:
    """Why `statement` cannot run in this file, or ""."""
    kind = statement.kind
    if kind is Kind.META_COMMAND:
        command = _meta_command(statement)
        return (
            f"{command} is a psql meta-command, not SQL: the runner sends SQL to the server and "
            "has no psql to run it; write out the SQL it stands for"
        )
    if kind is Kind.COPY_TO_STDOUT:
        return (
            f"{_words(statement)}: COPY ... TO STDOUT sends rows to the client, and a migration "
            "has nowhere to put them; remove it"
        )
    if kind is Kind.PREPARE_TRANSACTION:
        return (
            "PREPARE TRANSACTION leaves a prepared transaction holding its locks until someone "
            "commits it: a migration cannot use two-phase commit"
        )
    if not file.no_transaction:
        if kind is Kind.NON_TRANSACTIONAL:
            return (
                f"{statement.what} cannot run inside a transaction; put it in a file of its own "
                f"whose first line is '{NO_TRANSACTION}'"
            )
        if kind is Kind.BEGIN_WITH_MODES:
            return (
                f"{_words(statement)}: the runner opens the migration's transaction itself, so "
                "transaction modes cannot be set here; make it a no-transaction file (first "
                f"line '{NO_TRANSACTION}') where BEGIN ... COMMIT blocks run as written"
            )
        return ""
    if kind in (Kind.BEGIN, Kind.BEGIN_WITH_MODES) and block is not None:
        return f"BEGIN inside the block opened at line {block.line}; COMMIT that one first"
    if kind in (Kind.COMMIT, Kind.ROLLBACK, Kind.CHAIN) and block is None:
        return f"{_words(statement)} without a BEGIN before it in this file"
    if kind is Kind.NON_TRANSACTIONAL and block is not None:
        return (
            f"{statement.what} cannot run inside the BEGIN ... COMMIT block opened at line "
            f"{block.line}"
        )
    return ""


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    up: MigrationFile
    down: MigrationFile | None = None


@dataclass(frozen=True)
class AppliedMigration:
    """A row of the tracking table."""

    version: int
    name: str
    checksum: str
    status: str = APPLIED
    applied_at: datetime | None = None
    execution_ms: int | None = None
    applied_by: str | None = None


@dataclass(frozen=True)
class Plan:
    migrations: tuple[Migration, ...]
    applied: tuple[AppliedMigration, ...]
    pending: tuple[Migration, ...]
    retrying: frozenset[int] = frozenset()  # pending versions whose failed row is retried

    @property
    def highest_applied(self) -> int | None:
        return max((row.version for row in self.applied), default=None)


def parse_files(files: Sequence[MigrationFile], *, strict: bool = True) -> list[Migration]:
    """Pair up and down files by version, sorted by version; raise on the first bad file
    (not strict: leave the bad ones out)."""
    migrations, problems = _parse(files)
    if problems and strict:
        raise problems[0]
    return migrations


def find_problems(
    files: Sequence[MigrationFile],
    applied: Sequence[AppliedMigration],
    *,
    allow_out_of_order: bool = False,
    retry: bool = True,
    ignore_future: bool = False,
) -> list[MigrationSetError | NeedsAttention]:
    """Every reason not to run, in a stable order: files first, then the database's rows.
    `retry`: a failed or interrupted migration that is safe to run again is no problem.
    `ignore_future`: nor are versions applied above the highest file (see future_versions)."""
    migrations, problems = _parse(files)
    by_version = {migration.version: migration for migration in migrations}
    file_problems: list[MigrationSetError | NeedsAttention] = list(problems)
    retrying = retryable(migrations, applied) if retry else frozenset()
    future = set(future_versions(migrations, applied)) if ignore_future else set()
    for row in sorted(applied, key=lambda row: row.version):
        migration = by_version.get(row.version)
        if row.version in retrying or row.version in future:
            continue
        if row.status != APPLIED:
            file_problems.append(
                HalfApplied(
                    f"migration {row.version} ({row.name}) is recorded as {row.status}: it ran "
                    "outside a transaction and may be half-applied; a person must check the "
                    "schema (finish or undo what it did), then run `migration-runner repair "
                    f"--version {row.version}` so that it runs again",
                    version=row.version,
                )
            )
        elif migration is None:
            file_problems.append(
                MissingMigration(
                    f"migration {row.version} ({row.name}) is applied in the database but has no "
                    "file on disk: the database is newer than these migrations (an older image?)",
                    version=row.version,
                )
            )
        elif migration.up.checksum != row.checksum:
            file_problems.append(
                ChecksumMismatch(
                    f"{migration.up.filename} was edited after it was applied: its sha256 is "
                    f"{migration.up.checksum}, the database recorded {row.checksum}; add a new "
                    "migration instead of editing an applied one, or, if the edit changes "
                    "nothing that ran, accept it with `migration-runner repair "
                    f"--update-checksums --version {row.version}`",
                    file=migration.up.filename,
                    version=row.version,
                )
            )
    highest = max((row.version for row in applied), default=None)
    applied_versions = {row.version for row in applied}
    if highest is not None and not allow_out_of_order:
        file_problems.extend(
            OutOfOrder(
                f"{migration.up.filename} is pending but version {highest} is already applied; "
                "renumber it above the highest applied version, or run with --allow-out-of-order",
                file=migration.up.filename,
                version=migration.version,
            )
            for migration in migrations
            if migration.version < highest and migration.version not in applied_versions
        )
    return file_problems


def plan(
    files: Sequence[MigrationFile],
    applied: Sequence[AppliedMigration],
    *,
    allow_out_of_order: bool = False,
    ignore_future: bool = False,
) -> Plan:
    """What `up` runs: every up file not yet applied, in version order."""
    problems = find_problems(
        files, applied, allow_out_of_order=allow_out_of_order, ignore_future=ignore_future
    )
    if problems:
        raise problems[0]
    migrations = _parse(files)[0]
    retrying = retryable(migrations, applied)
    applied_versions = {row.version for row in applied} - retrying
    pending = tuple(m for m in migrations if m.version not in applied_versions)
    _refuse_contents([migration.up for migration in pending])
    return Plan(
        migrations=tuple(migrations),
        applied=tuple(sorted(applied, key=lambda row: row.version)),
        pending=pending,
        retrying=retrying,
    )


def future_versions(
    migrations: Sequence[Migration], applied: Sequence[AppliedMigration]
) -> list[int]:
    """Versions applied in the database above the highest file here: a newer release's, seen
    by an older one (an application rolled back). A lower version without its file is not
    one of them: that file was deleted."""
    highest = max((migration.version for migration in migrations), default=-1)
    return [row.version for row in applied if row.status == APPLIED and row.version > highest]


def retryable(
    migrations: Sequence[Migration], applied: Sequence[AppliedMigration]
) -> frozenset[int]:
    """Versions recorded as failed or running whose unchanged no-transaction file holds only
    statements that are safe to run again (RETRY_SAFE): the next `up` retries them itself."""
    by_version = {migration.version: migration for migration in migrations}
    found = set()
    for row in applied:
        migration = by_version.get(row.version)
        if row.status == APPLIED or migration is None or migration.up.checksum != row.checksum:
            continue
        try:
            if migration.up.no_transaction and migration.up.shape.retry_safe:
                found.add(row.version)
        except MigrationSetError:
            continue
    return frozenset(found)


@dataclass(frozen=True)
class GotoPlan:
    """What `goto` runs: up files in version order, or down files newest first."""

    up: tuple[Migration, ...]
    down: tuple[Migration, ...]


def plan_down(
    files: Sequence[MigrationFile], applied: Sequence[AppliedMigration], count: int | None
) -> tuple[Migration, ...]:
    """The newest `count` applied migrations (all when None), newest first, each with its
    down file; refused before anything runs if one has none."""
    _refuse_problems(files, applied)
    by_version = {migration.version: migration for migration in _parse(files)[0]}
    newest_first = sorted((row.version for row in applied), reverse=True)
    chosen = [by_version[version] for version in newest_first[:count]]
    for migration in chosen:
        if migration.down is None:
            raise MissingDownFile(
                f"migration {migration.version} ({migration.up.filename}) has no .down.sql "
                "file: nothing was rolled back",
                file=migration.up.filename,
                version=migration.version,
            )
    _refuse_contents([migration.down for migration in chosen if migration.down is not None])
    return tuple(chosen)


def plan_goto(
    files: Sequence[MigrationFile],
    applied: Sequence[AppliedMigration],
    target: int,
    *,
    allow_out_of_order: bool = False,
) -> GotoPlan:
    """Up to `target` (inclusive) or down to it; 0 means before the first migration."""
    migrations = _parse(files)[0]
    if target != 0 and target not in {migration.version for migration in migrations}:
        raise UnknownVersion(f"no migration with version {target} on disk", version=target)
    applied_versions = {row.version for row in applied}
    above = sum(1 for version in applied_versions if version > target)
    if above:
        return GotoPlan(up=(), down=plan_down(files, applied, above))
    result = plan(files, applied, allow_out_of_order=allow_out_of_order)
    return GotoPlan(up=tuple(m for m in result.pending if m.version <= target), down=())


def _refuse_problems(files: Sequence[MigrationFile], applied: Sequence[AppliedMigration]) -> None:
    problems = find_problems(files, applied, allow_out_of_order=True, retry=False)
    if problems:
        raise problems[0]


def content_problems(files: Sequence[MigrationFile]) -> list[MigrationSetError]:
    """What in these files cannot run as written, one problem per file at most."""
    problems: list[MigrationSetError] = []
    for file in files:
        try:
            file.shape  # noqa: B018 (reading it is the check)
        except MigrationSetError as problem:
            problems.append(problem)
    return problems


def _refuse_contents(files: Sequence[MigrationFile]) -> None:
    problems = content_problems(files)
    if problems:
        raise problems[0]


def _bad_name(filename: str) -> BadMigrationName:
    message = (
        f"{filename}: expected {{version}}_{{name}}.up.sql or .down.sql, where version is "
        "digits and name is letters, digits, _, - or ."
    )
    cased = _SUFFIX.search(filename)
    if cased and FILE_NAME.fullmatch(fixed := filename[: cased.start()] + cased.group(0).lower()):
        message = f"{filename}: the suffix must be lowercase: rename it to {fixed}"
    return BadMigrationName(message, file=filename)


_SUFFIX = re.compile(r"\.(up|down)\.sql\Z", re.IGNORECASE)


def _parse(files: Sequence[MigrationFile]) -> tuple[list[Migration], list[MigrationSetError]]:
    problems: list[MigrationSetError] = []
    ups: dict[int, tuple[str, MigrationFile]] = {}
    downs: dict[int, tuple[str, MigrationFile]] = {}
    for file in sorted(files, key=lambda file: file.filename):
        match = FILE_NAME.fullmatch(file.filename)
        if match is None:
            problems.append(_bad_name(file.filename))
            continue
        version = int(match["version"])
        if version > MAX_VERSION:
            problems.append(
                BadMigrationName(
                    f"{file.filename}: version {match['version']} is larger than {MAX_VERSION}, "
                    "the largest the tracking table can record",
                    file=file.filename,
                )
            )
            continue
        seen = ups if match["direction"] == "up" else downs
        if version in seen:
            problems.append(
                DuplicateVersion(
                    f"{file.filename} and {seen[version][1].filename} have the same version "
                    f"{version}",
                    file=file.filename,
                    version=version,
                )
            )
            continue
        seen[version] = (match["name"], file)
    for version, (_, down) in sorted(downs.items()):
        if version not in ups:
            problems.append(
                DownWithoutUp(
                    f"{down.filename} has no .up.sql file of version {version} beside it",
                    file=down.filename,
                    version=version,
                )
            )
    migrations = [
        Migration(version=version, name=name, up=up, down=downs.get(version, ("", None))[1])
        for version, (name, up) in sorted(ups.items())
    ]
    return migrations, problems
