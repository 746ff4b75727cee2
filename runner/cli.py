"""Command line: parse, configure, run one command, map the outcome to an exit code, report."""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import signal
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import FrameType
from typing import IO, Any, NoReturn

import psycopg

from runner import __version__, commands, logs
from runner.config import VARIABLES, Settings, from_env, load_secret_files
from runner.errors import (
    DatabaseUnreachable,
    Interrupted,
    RunnerError,
    UsageError,
    exit_code_for,
)
from runner.exit_codes import ExitCode

COMMANDS = {
    "up": "apply every pending migration (default); --single-transaction: all or nothing",
    "down": "roll back the newest N applied migrations (default 1; --all for every one)",
    "goto": "up or down to exactly VERSION (0: before the first)",
    "status": "list applied and pending migrations with checksums",
    "plan": "show what `up` would run, without running it",
    "validate": "check the migration set (exit 66 on any problem), change nothing",
    "new": "create the next NAME.up.sql / .down.sql pair",
    "baseline": "record every migration up to VERSION as applied, without running them",
    "repair": "clear failed migrations; --update-checksums accepts edited applied files",
    "adopt": "take over golang-migrate's or dbmate's schema_migrations",
    "await": "read-only: wait until every migration in the image is applied",
    "wait": "only wait until the database accepts connections",
}
# Commands that take an argument, and what it is.
ARGUMENTS = {"down": "N", "goto": "VERSION", "new": "NAME", "baseline": "VERSION"}
# Flags that belong to some commands only.
COMMAND_FLAGS = {
    "json": ("status", "plan"),
    "offline": ("validate",),
    "all": ("down",),
    "single_transaction": ("up",),
    "update_checksums": ("repair",),
}
TERMINATION_MESSAGE_LIMIT = 4096


class _StoreValue(argparse.Action):
    """Stores the value as given. argparse drops a value of `--` (`--db-ssl=--`) and passes an
    empty list, which would skip the setting's validation."""

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: str | Sequence[Any] | None,
        option_string: str | None = None,
    ) -> None:
        setattr(namespace, self.dest, values if isinstance(values, str) else "--")


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        unknown = re.match(r"argument command: invalid choice: '([^']*)'", message)
        if unknown:
            raise UsageError(
                f"unknown command {unknown.group(1)!r}; the commands are "
                f"{', '.join(COMMANDS)} (see --help)"
            )
        raise UsageError(f"{message} (see --help)")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="migration-runner",
        description="Apply PostgreSQL migrations exactly once. Flags win over the environment.",
        epilog="commands: " + "; ".join(f"{name}: {text}" for name, text in COMMANDS.items()),
    )
    parser.add_argument("command", nargs="?", default="up", choices=list(COMMANDS))
    parser.add_argument("argument", nargs="?", help="down: N; goto, baseline: VERSION; new: NAME")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("--json", action="store_true", help="status, plan: print JSON")
    parser.add_argument(
        "--offline", action="store_true", help="validate: check the files only, no database"
    )
    parser.add_argument("--all", action="store_true", help="down: every applied migration")
    parser.add_argument(
        "--single-transaction", action="store_true", help="up: all pending in one transaction"
    )
    parser.add_argument(
        "--update-checksums", action="store_true", help="repair: accept edited applied files"
    )
    for variable in VARIABLES:
        if variable.is_switch:
            parser.add_argument(
                variable.flag,
                dest=variable.name,
                action="store_const",
                const="true",
                help=f"{variable.help} [{variable.name}]",
            )
        else:
            parser.add_argument(
                variable.flag,
                dest=variable.name,
                action=_StoreValue,
                metavar="VALUE",
                help=f"{variable.help} [{variable.name}]",
            )
    return parser


def environment_with_flags(
    arguments: argparse.Namespace, environ: Mapping[str, str]
) -> dict[str, str]:
    """The environment, overridden by the flags given; a flag also clears its `_FILE` twin."""
    merged = dict(environ)
    for variable in VARIABLES:
        value = getattr(arguments, variable.name)
        if value is None:
            continue
        merged[variable.name] = value
        twin = variable.name.removesuffix("_FILE")
        if twin != variable.name:
            merged.pop(twin, None)
        else:
            merged.pop(f"{variable.name}_FILE", None)
    return merged


class _Signals:
    """SIGTERM, SIGHUP and SIGINT become KeyboardInterrupt, which psycopg answers by cancelling the
    running statement; the transaction then rolls back and the connection closes."""

    received: int | None = None
    _previous: dict[int, Any]

    def install(self) -> None:
        self._previous = {
            number: signal.signal(number, self._handle)
            for number in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
        }

    def restore(self) -> None:
        """Put back the handlers found, for callers of main() in a longer-lived process."""
        for number, handler in getattr(self, "_previous", {}).items():
            signal.signal(number, handler)

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.received is not None:
            return  # already stopping; a second signal must not interrupt the rollback
        self.received = signum
        raise KeyboardInterrupt


def main(
    argv: Sequence[str] | None = None,
    environ: Mapping[str, str] | None = None,
    stdout: IO[str] | None = None,
) -> int:
    environ = os.environ if environ is None else environ
    out = stdout or sys.stdout
    terminal = sys.stderr.isatty()
    logs.configure(log_format=_early_format(environ, terminal), level="INFO")
    signals = _Signals()
    report = commands.RunReport(command="")
    settings: Settings | None = None
    error: BaseException | None = None
    try:
        signals.install()
        arguments = build_parser().parse_args(argv)
        report.command = arguments.command
        _check_arguments(arguments)
        merged = load_secret_files(environment_with_flags(arguments, environ))
        needs_database = arguments.command != "new" and not (
            arguments.command == "validate" and arguments.offline
        )
        settings = from_env(merged, require_database=needs_database, terminal=terminal)
        logs.configure(
            log_format=settings.log_format, level=settings.log_level, secrets=settings.secrets
        )
        _run(arguments, settings, report, out)
        out.flush()  # here, where a closed pipe is caught, not at exit
    except KeyboardInterrupt:
        error = Interrupted(signals.received or signal.SIGINT)
    except BrokenPipeError:
        # The reader of stdout went away (`status | head -1`): what it wanted, it has.
        _silence_stdout()
    except RunnerError as failure:
        error = failure
    except psycopg.OperationalError as lost:  # the server went away between two statements
        error = DatabaseUnreachable(
            f"connection to the database lost: {' '.join(str(lost).split())}; run again: the "
            "tracking table tells what committed"
        )
    except Exception as bug:
        error = bug
        logs.logger.exception("internal error", extra={"event": "run.crashed"})
    finally:
        signals.restore()
    code = exit_code_for(error) if error else ExitCode.OK
    _finish(code, error, report, settings)
    return int(code)


def _check_arguments(arguments: argparse.Namespace) -> None:
    command = arguments.command
    for flag, allowed in COMMAND_FLAGS.items():
        if getattr(arguments, flag) and command not in allowed:
            option = "--" + flag.replace("_", "-")
            raise UsageError(f"{option} goes with {' or '.join(allowed)}, not {command}")
    wanted = ARGUMENTS.get(command)
    value = arguments.argument
    if value is not None and wanted is None:
        raise UsageError(f"{command} takes no argument, got {value!r}")
    if command in ("goto", "baseline", "new") and value is None:
        raise UsageError(f"{command} needs {wanted}")
    if command == "down" and value is not None and arguments.all:
        raise UsageError("down takes N or --all, not both")
    if (
        command in ("goto", "baseline", "down")
        and value is not None
        and not (value.isascii() and value.isdigit())
    ):
        raise UsageError(f"{command}: {wanted} must be a whole number, got {value!r}")
    if command == "down" and value is not None and int(value) < 1:
        raise UsageError("down: N must be 1 or more")


def _run(
    arguments: argparse.Namespace, settings: Settings, report: commands.RunReport, out: IO[str]
) -> None:
    command = arguments.command
    value = arguments.argument
    if command == "up":
        commands.up(settings, report, single_transaction=arguments.single_transaction)
    elif command == "down":
        count = None if arguments.all else int(value or 1)
        commands.down(settings, report, count)
    elif command == "goto":
        commands.goto(settings, report, int(value))
    elif command == "baseline":
        commands.baseline(settings, report, int(value))
    elif command == "repair":
        commands.repair(settings, report, update_checksums=arguments.update_checksums)
    elif command == "adopt":
        commands.adopt(settings, report)
    elif command == "await":
        commands.await_schema(settings, report)
    elif command == "new":
        commands.new(settings, value, out)
    elif command == "status":
        commands.status(settings, report, out, as_json=arguments.json)
    elif command == "plan":
        commands.show_plan(settings, report, out, as_json=arguments.json)
    elif command == "validate":
        commands.validate(settings, report, offline=arguments.offline)
    else:
        commands.wait_only(settings)


def _finish(
    code: ExitCode,
    error: BaseException | None,
    report: commands.RunReport,
    settings: Settings | None,
) -> None:
    fields: dict[str, object] = {}
    if isinstance(error, RunnerError):
        fields = error.fields()
        logs.event(
            logging.ERROR, error.event, str(error), error_type=type(error).__name__, **fields
        )
    summary = {
        "outcome": "succeeded" if code == ExitCode.OK else "failed",
        "exit_code": int(code),
        "retryable": code.retryable,
        "command": report.command,
        "applied": report.applied,
        "reverted": report.reverted,
        "failed_version": fields.get("version"),
        "error": str(error) if error else None,
    }
    logs.event(
        logging.INFO if code == ExitCode.OK else logging.ERROR,
        "run.finished",
        f"{report.command or 'migration-runner'} {summary['outcome']} with exit code {int(code)}",
        **summary,
        pending=report.pending,
    )
    _write_termination_message(summary, settings)


def _write_termination_message(summary: dict[str, object], settings: Settings | None) -> None:
    """Kubernetes shows this file as the container's termination message (4 KiB at most)."""
    if settings is None:
        return
    path = settings.termination_log
    if not settings.termination_log_explicit and not path.exists():
        return
    redact = logs.Redactor(settings.secrets)
    text = json.dumps(redact.value(summary), default=str)
    while len(text.encode()) > TERMINATION_MESSAGE_LIMIT:
        error = str(summary.get("error") or "")
        applied = summary.get("applied")
        if len(error) > 200:
            summary["error"] = error[: len(error) // 2] + "…"
        elif isinstance(applied, list) and applied:
            summary["applied"] = applied[: len(applied) // 2]
            summary["applied_truncated"] = True
        else:
            break
        text = json.dumps(redact.value(summary), default=str)
    try:
        Path(path).write_text(text + "\n", encoding="utf-8")
    except OSError as failure:
        logs.event(
            logging.WARNING,
            "termination_log.unwritable",
            f"cannot write {path}: {failure.strerror}",
            path=str(path),
        )


def _early_format(environ: Mapping[str, str], terminal: bool) -> str:
    """The log format before settings are validated, so that a config error is already in it."""
    chosen = environ.get("LOG_FORMAT", "").strip().lower()
    if chosen in ("json", "text"):
        return chosen
    return "text" if terminal else "json"


def _silence_stdout() -> None:
    """Point stdout at /dev/null so that flushing it at exit cannot raise again."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError):
        pass
