"""Placeholders in migration files: `${schema}` (a schema target's schema) and the names that
MIGRATION_PLACEHOLDERS declares, nothing else.

A file is expanded where its text is read (`MigrationFile.text()` and `.reader()`), so that the
statements the runner inspects before running them (a `CREATE INDEX CONCURRENTLY`, a `COPY`)
are the ones the server gets. Its checksum stays that of the file as written: one checksum for
every target. Any other `${...}` refuses the migration set before anything runs (66)."""

from __future__ import annotations

import re
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from dataclasses import replace
from typing import TYPE_CHECKING

from runner.errors import UnknownPlaceholder

if TYPE_CHECKING:
    from runner.planner import MigrationFile

SCHEMA = "schema"
# `${` up to the next `}` on its line; group 2 is empty when there is none.
_PLACEHOLDER = re.compile(r"\$\{([^}\n]*)(\}?)")


def expand(text: str, values: Mapping[str, str] | None) -> str:
    """`text` with each `${name}` that has a value replaced by it (None: no placeholders)."""
    if values is None or "${" not in text:
        return text
    return _PLACEHOLDER.sub(
        lambda found: values.get(found[1], found[0]) if found[2] else found[0], text
    )


def expanding(read: Callable[[int], str], values: Mapping[str, str]) -> Callable[[int], str]:
    """`read`, expanded whole lines at a time: a placeholder never spans two lines."""
    held = ""

    def read_expanded(size: int) -> str:
        nonlocal held
        if size < 0:
            text, held = held + read(-1), ""
            return expand(text, values)
        while chunk := read(size):
            held += chunk
            cut = held.rfind("\n") + 1
            if cut:
                text, held = held[:cut], held[cut:]
                return expand(text, values)
        text, held = held, ""
        return expand(text, values)

    return read_expanded


def applied(
    files: Sequence[MigrationFile], values: Mapping[str, str] | None
) -> list[MigrationFile]:
    """The files as a target with these values sees them; refused first if one holds a
    placeholder without a value. None: no placeholders, the files as written."""
    if values is None:
        return list(files)
    check(files, values)
    return [replace(file, values=dict(values)) for file in files]


def check(files: Sequence[MigrationFile], allowed: Collection[str], *, why: str = "") -> None:
    """Refuse (66, naming the file and line) the first `${...}` whose name is not allowed."""
    for file in files:
        for number, line in _lines(file):
            for found in _PLACEHOLDER.finditer(line):
                name, closed = found[1], found[2]
                if closed and name in allowed:
                    continue
                known = ", ".join(f"${{{known}}}" for known in sorted(allowed)) or "none"
                problem = (
                    f"{found[0]!r} has no closing '}}' on its line"
                    if not closed
                    else why or f"${{{name}}} is not a placeholder of this run"
                )
                raise UnknownPlaceholder(
                    f"{file.filename}: line {number}: {problem} (placeholders known here: "
                    f"{known}; MIGRATION_PLACEHOLDERS declares more as name=value pairs)",
                    file=file.filename,
                    line=number,
                )


def _lines(file: MigrationFile) -> Iterator[tuple[int, str]]:
    """The file's lines as written, numbered from 1, read a piece at a time."""
    number = 0
    rest = ""
    with file.reader() as read:
        while chunk := read(1 << 20):
            lines = (rest + chunk).split("\n")
            rest = lines.pop()
            for line in lines:
                number += 1
                yield number, line
    yield number + 1, rest
