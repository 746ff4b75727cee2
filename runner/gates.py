"""The quality gates' commands: lint (rules on PostgreSQL's parse of each file, knowing how it
runs), verify (up, down, up again on a scratch database) and drift (the live schema against its
applied migrations replayed). Each prints its findings on stdout and ends the run with
CheckFailed (exit 1) when it found something."""

from __future__ import annotations

import dataclasses
import json
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import IO

from runner import __version__, commands
from runner.config import Settings
from runner.errors import CheckFailed, UsageError
from runner.exit_codes import ExitCode
from runner.planner import MigrationFile, parse_files

LINT_FORMATS = ("text", "json", "sarif", "github")


def lint_migrations(
    settings: Settings,
    out: IO[str],
    *,
    paths: Sequence[str],
    output_format: str,
    since: int | None,
    pending: bool,
) -> None:
    """Lint MIGRATIONS_DIR (every file of it is context); report on `paths` only when given,
    on versions above `since`, or on what `up` would run now (`pending`: reads the database)."""
    from runner import lint  # pglast's parser: only for this command

    config = lint.load_config(Path.cwd(), settings.lint_choices)
    files = commands.checked_files(settings)
    only = _chosen(settings, files, paths=paths, since=since, pending=pending)
    findings = lint.lint(files, config, only=only)
    shown = [
        dataclasses.replace(finding, file=_shown_path(settings.migrations_dir, finding.file))
        for finding in findings
    ]
    if output_format == "json":
        out.write(lint.render_json(shown) + "\n")
    elif output_format == "sarif":
        out.write(lint.render_sarif(shown, __version__) + "\n")
    elif output_format == "github":
        out.write(lint.render_github(shown))
    else:
        reported = len(only) if only is not None else len(files)
        out.write(lint.render_text(shown) or f"no findings in {reported} file(s)\n")
    errors = [finding for finding in findings if finding.level == "error"]
    if errors:
        raise CheckFailed(
            f"lint: {len(errors)} error(s) and {len(findings) - len(errors)} warning(s) in "
            f"{len({f.file for f in findings})} file(s)"
        )


def _chosen(
    settings: Settings,
    files: Sequence[MigrationFile],
    *,
    paths: Sequence[str],
    since: int | None,
    pending: bool,
) -> set[str] | None:
    """The file names to report on; None: all of them."""
    if paths:
        known = {file.filename for file in files}
        named = {Path(path).name for path in paths}
        unknown = sorted(named - known)
        if unknown:
            raise UsageError(
                f"lint: {', '.join(unknown)} is not a migration file of MIGRATIONS_DIR "
                f"({settings.migrations_dir})"
            )
        return named
    if since is not None:
        return {
            file.filename
            for migration in parse_files(files, strict=False)
            if migration.version > since
            for file in (migration.up, migration.down)
            if file is not None
        }
    if pending:
        todo = commands.pending_migrations(settings, files, time.sleep)
        return {
            file.filename
            for migration in todo
            for file in (migration.up, migration.down)
            if file is not None
        }
    return None


def _shown_path(directory: Path, filename: str) -> str:
    """The file as the repository names it, for annotations and SARIF: relative to the
    working directory when it lies under it."""
    path = (directory / filename).absolute()
    return os.path.relpath(path) if path.is_relative_to(Path.cwd()) else str(path)


def verify_down_files(settings: Settings, out: IO[str], *, keep: bool, as_json: bool) -> None:
    from runner import verify  # the catalog reader: only for this command

    files = commands.read_files(settings)
    result = verify.verify(settings, files, keep=keep, scratch_url=settings.verify_database_url)
    out.write(json.dumps(result.as_dict()) + "\n" if as_json else result.render())
    if result.exit_code != ExitCode.OK and result.mismatch:
        raise CheckFailed(result.mismatch.message)


def find_drift(settings: Settings, out: IO[str], *, keep: bool, as_json: bool) -> None:
    from runner import verify

    files = commands.read_files(settings)
    result = verify.drift(settings, files, keep=keep, scratch_url=settings.verify_database_url)
    out.write(json.dumps(result.as_dict()) + "\n" if as_json else result.render())
    if result.exit_code != ExitCode.OK:
        raise CheckFailed(
            f"drift: {len(result.differences)} difference(s) between the live schema and its "
            f"{len(result.replayed)} applied migration(s)"
        )
