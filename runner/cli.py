"""Command line: parse, configure, run one command, map the outcome to an exit code, report."""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import re
import signal
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import FrameType
from typing import IO, Any, NoReturn

from runner import __version__, commands, logs, stopping
from runner.config import VARIABLES, Settings, from_env, load_secret_files
from runner.errors import (
    Interrupted,
    RunnerError,
    UsageError,
    exit_code_for,
)
from runner.exit_codes import ExitCode

COMMANDS = {
    "up": "apply every pending migration (the default command)",
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
    "verify": "apply each migration up, down and up again on a scratch database; compare schemas",
    "drift": "replay the applied migrations on a scratch database; compare with the live schema",
    "lint": "check the files for locks, rewrites, breaking changes and conventions (no database)",
}
DEFAULT_COMMAND = "up"
# Commands that never connect.
OFFLINE = frozenset({"new"})
TERMINATION_MESSAGE_LIMIT = 4096
PROXY_QUIT_TIMEOUT = 3.0  # seconds; the pod is ending either way
# What a command runs: (its parsed arguments, settings, the run's report, stdout).
_Handler = Callable[[argparse.Namespace, Settings, "commands.RunReport", IO[str]], object]


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
        unknown = re.match(r"argument (?:command|COMMAND): invalid choice: '([^']*)'", message)
        if unknown:
            raise UsageError(
                f"unknown command {unknown.group(1)!r}; the commands are "
                f"{', '.join(COMMANDS)} (see --help)"
            )
        raise UsageError(f"{self.prog}: {message} (see {self.prog} --help)")


def _count(text: str) -> int:
    if not (text.isascii() and text.isdigit()) or int(text) < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number of 1 or more, got {text!r}")
    return int(text)


def _version(text: str) -> int:
    if not (text.isascii() and text.isdigit()):
        raise argparse.ArgumentTypeError(f"expected a version (digits), got {text!r}")
    return int(text)


def _settings_flags() -> _Parser:
    """Every setting as a flag, shared by every command."""
    flags = _Parser(add_help=False)
    group = flags.add_argument_group("settings (each also an environment variable)")
    for variable in VARIABLES:
        if variable.is_switch:
            group.add_argument(
                variable.flag,
                dest=variable.name,
                action="store_const",
                const="true",
                help=variable.help_text,
            )
        else:
            group.add_argument(
                variable.flag,
                dest=variable.name,
                action=_StoreValue,
                metavar="VALUE",
                help=variable.help_text,
            )
    return flags


def _up(parser: argparse.ArgumentParser) -> _Handler:
    parser.add_argument(
        "--single-transaction", action="store_true", help="all pending migrations in one"
    )
    return lambda a, settings, report, out: commands.up(
        settings, report, single_transaction=a.single_transaction
    )


def _down(parser: argparse.ArgumentParser) -> _Handler:
    how_many = parser.add_mutually_exclusive_group()
    how_many.add_argument("count", nargs="?", type=_count, metavar="N", help="default 1")
    how_many.add_argument("--all", action="store_true", help="every applied migration")
    return lambda a, settings, report, out: commands.down(
        settings, report, None if a.all else a.count or 1
    )


def _goto(parser: argparse.ArgumentParser) -> _Handler:
    parser.add_argument("target", type=_version, metavar="VERSION")
    return lambda a, settings, report, out: commands.goto(settings, report, a.target)


def _status(parser: argparse.ArgumentParser) -> _Handler:
    parser.add_argument("--json", action="store_true", help="print JSON")
    return lambda a, settings, report, out: commands.status(settings, report, out, as_json=a.json)


def _plan(parser: argparse.ArgumentParser) -> _Handler:
    parser.add_argument("--json", action="store_true", help="print JSON")
    parser.add_argument(
        "--locks",
        action="store_true",
        help="per pending statement: the table lock it takes, what that blocks, rewrites, "
        "scans, and the table's estimated rows and size",
    )
    return lambda a, settings, report, out: commands.show_plan(
        settings, report, out, as_json=a.json, locks=a.locks
    )


def _validate(parser: argparse.ArgumentParser) -> _Handler:
    parser.add_argument("--offline", action="store_true", help="check the files only, no database")
    return lambda a, settings, report, out: commands.validate(settings, report, offline=a.offline)


def _new(parser: argparse.ArgumentParser) -> _Handler:
    parser.add_argument("name", metavar="NAME", help="snake_case, e.g. add_orders")

    def run(a: argparse.Namespace, settings: Settings, report: Any, out: IO[str]) -> None:
        from runner import authoring

        authoring.new(settings, a.name, out)

    return run


def _baseline(parser: argparse.ArgumentParser) -> _Handler:
    parser.add_argument("target", type=_version, metavar="VERSION")
    return lambda a, settings, report, out: commands.baseline(settings, report, a.target)


def _repair(parser: argparse.ArgumentParser) -> _Handler:
    parser.add_argument(
        "--update-checksums", action="store_true", help="accept edited applied files"
    )
    parser.add_argument(
        "--version",
        dest="only_version",
        type=_version,
        metavar="N",
        help="repair this version only",
    )
    return lambda a, settings, report, out: commands.repair(
        settings, report, update_checksums=a.update_checksums, only_version=a.only_version
    )


def _lint(parser: argparse.ArgumentParser) -> _Handler:
    from runner import gates

    parser.add_argument("files", nargs="*", metavar="FILE", help="report on these files only")
    parser.add_argument("--format", choices=gates.LINT_FORMATS, default="text", help="default text")
    which = parser.add_mutually_exclusive_group()
    which.add_argument(
        "--since", type=_version, metavar="VERSION", help="report on versions above VERSION"
    )
    which.add_argument(
        "--pending", action="store_true", help="report on what `up` would run (reads the database)"
    )
    return lambda a, settings, report, out: gates.lint_migrations(
        settings, out, paths=a.files, output_format=a.format, since=a.since, pending=a.pending
    )


def _scratch_gate(name: str) -> Callable[[argparse.ArgumentParser], _Handler]:
    """verify and drift: a gate that works on a scratch database."""

    def define(parser: argparse.ArgumentParser) -> _Handler:
        from runner import gates

        gate = gates.verify_down_files if name == "verify" else gates.find_drift
        parser.add_argument("--json", action="store_true", help="print JSON")
        parser.add_argument(
            "--keep", action="store_true", help="keep the scratch database for inspection"
        )

        def run(a: argparse.Namespace, settings: Settings, report: Any, out: IO[str]) -> None:
            gate(settings, out, keep=a.keep, as_json=a.json)

        return run

    return define


# Each command's own flags, and what it runs; the order of COMMANDS is the order of --help.
_DEFINITIONS: dict[str, Callable[[argparse.ArgumentParser], _Handler]] = {
    "up": _up,
    "down": _down,
    "goto": _goto,
    "status": _status,
    "plan": _plan,
    "validate": _validate,
    "new": _new,
    "baseline": _baseline,
    "repair": _repair,
    "adopt": lambda parser: lambda a, settings, report, out: commands.adopt(settings, report),
    "await": lambda parser: (
        lambda a, settings, report, out: commands.await_schema(settings, report)
    ),
    "wait": lambda parser: lambda a, settings, report, out: commands.wait_only(settings),
    "verify": _scratch_gate("verify"),
    "drift": _scratch_gate("drift"),
    "lint": _lint,
}


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """One subcommand each, with its own flags and --help; the settings' flags on all.
    `only`: the command given, the one subcommand worth building (it takes a few
    milliseconds each, which every init container would pay)."""
    parser = _Parser(
        prog="migration-runner",
        description="Apply PostgreSQL migrations exactly once. Flags win over the environment.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands_ = parser.add_subparsers(
        dest="command", metavar="COMMAND", parser_class=_Parser, required=True
    )
    shared = [_settings_flags()]
    for name in COMMANDS:
        if only is not None and name != only:
            continue
        command = commands_.add_parser(
            name, parents=shared, help=COMMANDS[name], description=COMMANDS[name]
        )
        command.set_defaults(run=_DEFINITIONS[name](command))
    return parser


def _with_command(argv: Sequence[str]) -> list[str]:
    """`up` when no command is given (flags alone, or nothing)."""
    arguments = list(argv)
    if not arguments or (
        arguments[0].startswith("-") and arguments[0] not in ("-h", "--help", "--version")
    ):
        return [DEFAULT_COMMAND, *arguments]
    return arguments


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
        stopping.request(signum)  # a fleet's threads, which no signal reaches
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
        given = _with_command(sys.argv[1:] if argv is None else argv)
        only = given[0] if given[0] in COMMANDS else None
        arguments = build_parser(only).parse_args(given)
        report.command = arguments.command
        merged = load_secret_files(environment_with_flags(arguments, environ))
        needs_database = arguments.command not in OFFLINE and not (
            (arguments.command == "validate" and arguments.offline)
            or (arguments.command == "lint" and not arguments.pending)
        )
        settings = from_env(merged, require_database=needs_database, terminal=terminal)
        logs.configure(
            log_format=settings.log_format, level=settings.log_level, secrets=settings.secrets
        )
        if settings.fleet is None:
            arguments.run(arguments, settings, report, out)
        else:
            from runner import fleet  # its threads and targets, for fleets only

            fleet.run(arguments, settings, report, out)  # arguments.run, per target
        out.flush()  # here, where a closed pipe is caught, not at exit
    except KeyboardInterrupt:
        error = Interrupted(signals.received or signal.SIGINT, report.in_flight)
    except BrokenPipeError:
        # The reader of stdout went away (`status | head -1`): what it wanted, it has.
        _silence_stdout()
    except RunnerError as failure:
        error = failure
    except Exception as bug:
        error = bug
        logs.logger.exception("internal error", extra={"event": "run.crashed"})
    finally:
        signals.restore()
    code = exit_code_for(error) if error else ExitCode.OK
    _quit_proxy(settings.proxy_quit_url if settings else environ.get("PROXY_QUIT_URL", ""))
    _finish(code, error, report, settings)
    return int(code)


def exit_now(code: int) -> NoReturn:
    """End the process with `code` once everything it wrote is flushed, without the
    interpreter's teardown of the few hundred modules a run imports: 30 to 50 ms of a run that
    had nothing to do, which every init container pays. For the command line only: main()
    itself returns, for callers in a longer-lived process."""
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        # A reader that went away, or a stream already closed: nothing more can reach it.
        with contextlib.suppress(OSError, ValueError):
            stream.flush()
    os._exit(code)


def _quit_proxy(url: str | None) -> None:
    """Stop a proxy sidecar (cloud-sql-proxy's /quitquitquit), whatever the outcome: a Job whose
    sidecar keeps running never completes."""
    if not url or not url.startswith(("http://", "https://")):
        return
    import urllib.request  # here: 30 ms of imports that only this needs

    try:
        request = urllib.request.Request(url, data=b"", method="POST")  # noqa: S310 (http(s) only)
        with urllib.request.urlopen(request, timeout=PROXY_QUIT_TIMEOUT) as answer:  # noqa: S310
            status = answer.status
    except (OSError, ValueError) as failure:
        logs.event(
            logging.WARNING,
            "proxy.quit_failed",
            f"could not tell the proxy at PROXY_QUIT_URL to quit: {failure}",
            url=url,
        )
        return
    logs.event(logging.INFO, "proxy.quit", "told the proxy sidecar to quit", url=url, status=status)


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
    if report.fleet is not None:
        summary["fleet"] = report.fleet
    _write_termination_message(dict(summary), settings)  # may warn: before the last line
    logs.event(
        logging.INFO if code == ExitCode.OK else logging.ERROR,
        "run.finished",
        f"{report.command or 'migration-runner'} {summary['outcome']} with exit code {int(code)}",
        **summary,
        pending=report.pending,
    )


def _write_termination_message(summary: dict[str, object], settings: Settings | None) -> None:
    """Kubernetes shows this file as the container's termination message (4 KiB at most)."""
    if settings is None:
        return
    path = settings.termination_log
    if not settings.termination_log_explicit and not path.exists():
        return
    redact = logs.Redactor([*settings.secrets, *logs.minted_secrets()])
    text = json.dumps(redact.value(summary), default=str)
    while len(text.encode()) > TERMINATION_MESSAGE_LIMIT:
        error = str(summary.get("error") or "")
        applied = summary.get("applied")
        if len(error) > 200:
            summary["error"] = error[: len(error) // 2] + "…"
        elif isinstance(applied, list) and applied:
            summary["applied"] = applied[: len(applied) // 2]
            summary["applied_truncated"] = True
        elif not _trim_fleet(summary, len(text.encode()) - TERMINATION_MESSAGE_LIMIT):
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


def _trim_fleet(summary: dict[str, object], excess: int) -> bool:
    if "fleet" not in summary:
        return False
    from runner import fleet

    return fleet.trim(summary, excess)


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
