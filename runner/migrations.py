"""Reading the migration directory: the I/O edge in front of the planner."""

from __future__ import annotations

import hashlib
from pathlib import Path

from runner.errors import ConfigError, UnreadableMigration
from runner.planner import MigrationFile


def load(directory: Path) -> list[MigrationFile]:
    """Every *.sql file directly in `directory`, with the sha256 of its bytes.

    Other files (README, .keep) and subdirectories are ignored; hidden files too.
    """
    if not directory.is_dir():
        raise ConfigError("MIGRATIONS_DIR", f"{directory} does not exist or is not a directory")
    files = []
    for path in sorted(directory.iterdir()):
        if path.name.startswith(".") or path.suffix != ".sql" or not path.is_file():
            continue
        try:
            content = path.read_bytes()
        except OSError as error:
            raise UnreadableMigration(
                f"{path.name}: cannot read it: {error.strerror}", file=path.name
            ) from None
        file = MigrationFile(
            filename=path.name, checksum=hashlib.sha256(content).hexdigest(), content=content
        )
        file.text()  # refuse undecodable files before anything connects
        files.append(file)
    return files
