"""The pure planner: from files on disk and rows applied to what runs. No I/O here."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from functools import cached_property

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
    NeedsNoTransaction,
    OutOfOrder,
    UnknownVersion,
    UnreadableMigration,
)
from runner.sqlscript import non_transactional_statement

FILE_NAME = re.compile(
    r"(?P<version>[0-9]+)_(?P<name>[A-Za-z0-9_\-]+)\.(?P<direction>up|down)\.sql"
)
APPLIED = "applied"
MAX_VERSION = 2**63 - 1  # the tracking table's bigint
NO_TRANSACTION = "-- migrate:no-transaction"


@dataclass(frozen=True)
class MigrationFile:
    """A .sql file as found on disk: its name, the sha256 of its bytes, and the bytes."""

    filename: str
    checksum: str
    content: bytes = field(default=b"", repr=False, compare=False)

    def text(self) -> str:
        """The SQL: UTF-8, a leading byte-order mark dropped; undecodable files refused."""
        return self._text

    # Decoded once: the planner, the lock wait and the applier all ask for it.
    @cached_property
    def _text(self) -> str:
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
        return text.removeprefix("\ufeff")

    @cached_property
    def no_transaction(self) -> bool:
        """True when the first line is `-- migrate:no-transaction`."""
        first_line = self.text().split("\n", 1)[0]
        return first_line.strip().lower() == NO_TRANSACTION


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

    @property
    def highest_applied(self) -> int | None:
        return max((row.version for row in self.applied), default=None)


def parse_files(files: Sequence[MigrationFile]) -> list[Migration]:
    """Pair up and down files by version, sorted by version; raise on the first bad file."""
    migrations, problems = _parse(files)
    if problems:
        raise problems[0]
    return migrations


def find_problems(
    files: Sequence[MigrationFile],
    applied: Sequence[AppliedMigration],
    *,
    allow_out_of_order: bool = False,
) -> list[MigrationSetError | NeedsAttention]:
    """Every reason not to run, in a stable order: files first, then the database's rows."""
    migrations, problems = _parse(files)
    by_version = {migration.version: migration for migration in migrations}
    file_problems: list[MigrationSetError | NeedsAttention] = list(problems)
    file_problems.extend(_transaction_problems(migrations))
    for row in sorted(applied, key=lambda row: row.version):
        migration = by_version.get(row.version)
        if row.status != APPLIED:
            file_problems.append(
                HalfApplied(
                    f"migration {row.version} ({row.name}) is recorded as {row.status}: it ran "
                    "outside a transaction and may be half-applied; a person must check the "
                    "schema, then repair the tracking table",
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
                    "migration instead of editing an applied one",
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
) -> Plan:
    """What `up` runs: every up file not yet applied, in version order."""
    problems = find_problems(files, applied, allow_out_of_order=allow_out_of_order)
    if problems:
        raise problems[0]
    migrations = _parse(files)[0]
    applied_versions = {row.version for row in applied}
    return Plan(
        migrations=tuple(migrations),
        applied=tuple(sorted(applied, key=lambda row: row.version)),
        pending=tuple(m for m in migrations if m.version not in applied_versions),
    )


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
    problems = find_problems(files, applied, allow_out_of_order=True)
    if problems:
        raise problems[0]


def _transaction_problems(migrations: Sequence[Migration]) -> list[MigrationSetError]:
    problems: list[MigrationSetError] = []
    for migration in migrations:
        for file in (migration.up, migration.down):
            try:
                if file is None or file.no_transaction:
                    continue
                statement = non_transactional_statement(file.text())
            except UnreadableMigration as unreadable:
                problems.append(unreadable)
                continue
            if statement is not None:
                words = " ".join(statement.text.split()[:4])
                problems.append(
                    NeedsNoTransaction(
                        f"{file.filename}: line {statement.line}: {words} cannot run inside a "
                        f"transaction; put it in a file of its own whose first line is "
                        f"'{NO_TRANSACTION}'",
                        file=file.filename,
                        version=migration.version,
                    )
                )
    return problems


def _parse(files: Sequence[MigrationFile]) -> tuple[list[Migration], list[MigrationSetError]]:
    problems: list[MigrationSetError] = []
    ups: dict[int, tuple[str, MigrationFile]] = {}
    downs: dict[int, tuple[str, MigrationFile]] = {}
    for file in sorted(files, key=lambda file: file.filename):
        match = FILE_NAME.fullmatch(file.filename)
        if match is None:
            problems.append(
                BadMigrationName(
                    f"{file.filename}: expected {{version}}_{{name}}.up.sql or .down.sql, where "
                    "version is digits and name is letters, digits, _ or -",
                    file=file.filename,
                )
            )
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
