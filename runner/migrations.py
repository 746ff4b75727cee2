"""Reading the migration directory: the I/O edge in front of the planner.

Nothing that looks like a migration is skipped in silence: a file that cannot be read is an
error naming it, and so is an empty directory (unless allowed)."""

from __future__ import annotations

import codecs
import hashlib
import os
from pathlib import Path

from runner.errors import ConfigError, NoMigrations, UnreadableMigration
from runner.planner import MigrationFile

# Files up to this size are kept in memory and may go to the server in one query; larger ones
# are read again, a piece at a time, when they run.
SMALL_FILE = 1 << 20
BLOCK = 1 << 20


def load(directory: Path) -> list[MigrationFile]:
    """Every *.sql file directly in `directory` (in any letter case, which the planner then
    refuses with the right name), with the sha256 of its bytes.

    Other files (README, .keep), subdirectories and hidden files are left alone."""
    if not directory.is_dir():
        raise ConfigError("MIGRATIONS_DIR", f"{directory} does not exist or is not a directory")
    files = []
    for name in sorted(os.listdir(directory)):
        if name.startswith(".") or not name.lower().endswith(".sql"):
            continue
        path = directory / name
        if path.is_dir():
            continue
        files.append(_read(path))
    return files


def require_some(files: list[MigrationFile], directory: Path, *, allow_empty: bool) -> None:
    """An empty directory is most often a volume or ConfigMap mounted at the wrong place."""
    if not files and not allow_empty:
        raise NoMigrations(
            f"no migration files in {directory}: is the right volume or ConfigMap mounted "
            "there? (ALLOW_EMPTY=true or --allow-empty accepts an empty directory)"
        )


def _read(path: Path) -> MigrationFile:
    try:
        size = path.stat().st_size
        if size <= SMALL_FILE:
            content = path.read_bytes()
            file = MigrationFile(
                filename=path.name, checksum=hashlib.sha256(content).hexdigest(), content=content
            )
            file.text()  # refuse undecodable files before anything connects
            return file
        return MigrationFile(
            filename=path.name, checksum=_checked_checksum(path), content=None, path=path
        )
    except OSError as error:
        raise UnreadableMigration(f"{path.name}: {_why(path, error)}", file=path.name) from None


def _why(path: Path, error: OSError) -> str:
    if path.is_symlink():
        target = os.readlink(path)
        if error.errno == 40:  # ELOOP
            return f"a symbolic link loop ({path.name} -> {target})"
        if not path.exists():
            return f"a symbolic link to {target}, which does not exist"
    return f"cannot read it: {error.strerror}"


def _checked_checksum(path: Path) -> str:
    """sha256 of a large file, read a block at a time, refusing what is not UTF-8 text."""
    digest = hashlib.sha256()
    decoder = codecs.getincrementaldecoder("utf-8")()
    lines = 0
    read = 0
    with path.open("rb") as handle:
        while block := handle.read(BLOCK):
            digest.update(block)
            try:
                decoder.decode(block)
            except UnicodeDecodeError as error:
                line = lines + block.count(b"\n", 0, error.start) + 1
                raise UnreadableMigration(
                    f"{path.name}: line {line}: not valid UTF-8 (byte {read + error.start})",
                    file=path.name,
                ) from None
            nul = block.find(b"\x00")
            if nul >= 0:
                line = lines + block.count(b"\n", 0, nul) + 1
                raise UnreadableMigration(
                    f"{path.name}: line {line}: contains a NUL character", file=path.name
                )
            lines += block.count(b"\n")
            read += len(block)
    try:
        decoder.decode(b"", final=True)
    except UnicodeDecodeError:
        raise UnreadableMigration(
            f"{path.name}: line {lines + 1}: not valid UTF-8 (it ends inside a character)",
            file=path.name,
        ) from None
    return digest.hexdigest()
