"""The pure planner: from files on disk and rows applied to what runs. No I/O here."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime

from runner.errors import (
    BadMigrationName,
    ChecksumMismatch,
    DownWithoutUp,
    DuplicateVersion,
    HalfApplied,
    MigrationSetError,
    MissingMigration,
    NeedsAttention,
    OutOfOrder,
)

FILE_NAME = re.compile(
    r"(?P<version>[0-9]+)_(?P<name>[A-Za-z0-9][A-Za-z0-9_\-]*)\.(?P<direction>up|down)\.sql"
)
APPLIED = "applied"


@dataclass(frozen=True)
class MigrationFile:
    """A .sql file as found on disk: its name, the sha256 of its bytes, and the bytes."""

    filename: str
    checksum: str
    content: bytes = field(default=b"", repr=False, compare=False)


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
