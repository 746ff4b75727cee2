"""Writing new migration files: `new NAME`. Needs no database."""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import IO

from runner import logs, migrations
from runner.config import Settings
from runner.errors import ConfigError, UsageError
from runner.planner import parse_files

SNAKE_CASE = re.compile(r"[a-z][a-z0-9]*(_[a-z0-9]+)*")

UP_TEMPLATE = "-- {filename}: {name}\n-- Runs in one transaction with its tracking row.\n\n"
DOWN_TEMPLATE = "-- {filename}: undo {name}, exactly what the up file does, in reverse.\n\n"


def new(settings: Settings, name: str, out: IO[str]) -> None:
    """Create the next {version}_{name}.up.sql and .down.sql pair, version one above the
    highest on disk, six digits."""
    if not SNAKE_CASE.fullmatch(name):
        raise UsageError(
            f"migration name {name!r}: expected snake_case (lowercase letters, digits and "
            "single underscores, starting with a letter), e.g. add_orders_table"
        )
    directory = settings.migrations_dir
    existing = parse_files(migrations.load(directory))
    version = max((m.version for m in existing), default=0) + 1
    created: list[Path] = []
    for direction, template in (("up", UP_TEMPLATE), ("down", DOWN_TEMPLATE)):
        path = directory / f"{version:06d}_{name}.{direction}.sql"
        try:
            with path.open("x", encoding="utf-8") as handle:
                handle.write(template.format(filename=path.name, name=name.replace("_", " ")))
        except OSError as error:
            for made in created:
                made.unlink(missing_ok=True)
            raise ConfigError(
                "MIGRATIONS_DIR", f"cannot create {path}: {error.strerror or error}"
            ) from None
        created.append(path)
        out.write(f"{path}\n")
    logs.event(
        logging.INFO,
        "migration.created",
        f"created {created[0].name} and its down file",
        version=version,
        files=[str(path) for path in created],
    )
