"""What every workload is given: the options, the server, the temp dir, the tools' command lines,
and the list of correctness failures so far."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from bench.databases import Server
from bench.procs import Sample, clean_env, measure, progress

ROOT = Path(__file__).resolve().parent.parent
TOOL = "migration-runner"


@dataclass
class Context:
    args: argparse.Namespace
    server: Server
    root: Path  # temp dir: migration sets, logs, cwd of the tools
    python: str
    entrypoint: Path
    psql: str
    dbmate: str | None
    correctness: list[str] = field(default_factory=list)

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    def log(self, label: str) -> Path:
        return self.logs / f"{label}.log"

    def runner_argv(self) -> list[str]:
        return [self.python, str(self.entrypoint), "up"]

    def runner_env(self, database: str, migrations: Path, **extra: str) -> dict[str, str]:
        values = {
            "DATABASE_URL": self.server.url(database),
            "MIGRATIONS_DIR": str(migrations),
            "LOG_LEVEL": self.args.log_level,
        }
        values.update(extra)
        return clean_env(**values)

    def psql_argv(self, database: str, file: Path) -> list[str]:
        return [
            self.psql,
            "-X",
            "-q",
            "-1",
            "-v",
            "ON_ERROR_STOP=1",
            "-f",
            str(file),
            self.server.url(database),
        ]

    def dbmate_argv(self, database: str, migrations: Path) -> list[str]:
        assert self.dbmate is not None
        return [
            self.dbmate,
            "--url",
            self.server.dbmate_url(database),
            "--migrations-dir",
            str(migrations),
            "--no-dump-schema",
            "up",
        ]

    def run(self, argv: Sequence[str], env: dict[str, str], label: str) -> Sample:
        return measure(argv, env=env, cwd=self.root, log=self.log(label), timeout=self.args.timeout)

    def expect(self, ok: bool, message: str) -> None:
        if not ok:
            self.correctness.append(message)
            progress(f"  CORRECTNESS: {message}")


def rotated(items: list[str], shift: int) -> list[str]:
    """Each run measures the tools in another order, so that no tool always goes first."""
    shift %= len(items)
    return items[shift:] + items[:shift]
