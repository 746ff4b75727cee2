"""One JSON object per line on stderr, with a stable `event` name; secrets scrubbed."""

from __future__ import annotations

import json
import logging
import re
import sys
import threading
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import IO, Any

from pythonjsonlogger.json import JsonFormatter

LOGGER_NAME = "runner"
_FOREIGN_LOGGERS = ("psycopg", "psycopg.pool", "py.warnings")
logger = logging.getLogger(LOGGER_NAME)

_URL_PASSWORD = re.compile(r"(?P<head>[a-z][a-z0-9+.\-]*://[^:/@\s]*:)[^@\s]*@", re.IGNORECASE)
_KEYWORD_PASSWORD = re.compile(r"(?P<head>password\s*=\s*)('(?:[^'\\]|\\.)*'|\S+)", re.IGNORECASE)
_STANDARD_FIELDS = frozenset(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {
    "message",
    "asctime",
}


SHORT_SECRET = 3  # a secret this short is replaced only where it stands as a whole token


class Redactor:
    """Removes passwords from values: the known secret values, and any URL or key=value
    password. Keys and event names are never touched (see `value`)."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        self._secrets: list[str] = []
        self.add(*secrets)

    def add(self, *secrets: str) -> None:
        """More values to remove: credentials minted while the run goes on (IAM tokens)."""
        self._secrets.extend(secret for secret in secrets if secret)
        long: set[str] = set()
        short: set[str] = set()
        for secret in self._secrets:
            forms = {secret, json.dumps(secret, ensure_ascii=False)[1:-1]}
            (short if len(secret) <= SHORT_SECRET else long).update(forms)
        self._forms = sorted(long, key=len, reverse=True)
        self._tokens = (
            re.compile(
                r"(?<![\w$])(?:"
                + "|".join(re.escape(form) for form in sorted(short, key=len, reverse=True))
                + r")(?![\w$])"
            )
            if short
            else None
        )

    def __call__(self, text: str) -> str:
        for form in self._forms:
            text = text.replace(form, "***")
        if self._tokens is not None:
            text = self._tokens.sub("***", text)
        # Most values hold neither a URL nor "password": skip the two scans for them.
        if "://" in text:
            text = _URL_PASSWORD.sub(r"\g<head>***@", text)
        if "password" in text.lower():
            text = _KEYWORD_PASSWORD.sub(r"\g<head>***", text)
        return text

    def value(self, value: Any) -> Any:
        """A log field's value with every string in it redacted; dict keys are kept."""
        if isinstance(value, str):
            return self(value)
        if isinstance(value, dict):
            return {key: self.value(item) for key, item in value.items()}
        if isinstance(value, (list, tuple)):
            return [self.value(item) for item in value]
        return value


_HEAD = ("@timestamp", "log.level", "event", "message")
_UNREDACTED = frozenset({"@timestamp", "log.level", "event"})


class _JsonLines(JsonFormatter):
    def __init__(self, redact: Redactor) -> None:
        super().__init__(
            "%(levelname)s %(message)s",
            rename_fields={"levelname": "log.level"},
            timestamp="@timestamp",
        )
        self.redact = redact

    def add_fields(
        self, log_data: dict[str, Any], record: logging.LogRecord, message_dict: dict[str, Any]
    ) -> None:
        super().add_fields(log_data, record, message_dict)
        fields = log_data.pop("fields", None) or {}
        head = {key: log_data.pop(key) for key in _HEAD if key in log_data}
        rest = dict(log_data)
        log_data.clear()
        log_data.update(head, **rest, **fields)
        for key, value in log_data.items():
            if key not in _UNREDACTED:
                log_data[key] = self.redact.value(value)


class _TextLines(logging.Formatter):
    """For people at a terminal: time, level, event, message, then key=value fields."""

    def __init__(self, redact: Redactor) -> None:
        super().__init__("%(asctime)s %(levelname)-7s %(message)s", "%H:%M:%S")
        self.redact = redact

    def format(self, record: logging.LogRecord) -> str:
        line = " ".join(self.redact(super().format(record)).split())  # one line, always
        extras = {k: v for k, v in record.__dict__.items() if k not in _STANDARD_FIELDS}
        event = extras.pop("event", None)
        extras.update(extras.pop("fields", None) or {})
        fields = " ".join(
            f"{k}={json.dumps(self.redact.value(v), default=str)}" for k, v in extras.items()
        )
        text = f"{line} [{event}]" if event else line
        return f"{text} {fields}".rstrip()


def configure(
    *, log_format: str, level: str, secrets: Iterable[str] = (), stream: IO[str] | None = None
) -> Redactor:
    """Send the runner's records to `stream` (stderr) in the chosen format."""
    redact = Redactor([*secrets, *_minted])
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(_JsonLines(redact) if log_format == "json" else _TextLines(redact))
    logger.handlers[:] = [handler]
    logger.setLevel(level)
    logger.propagate = False
    # psycopg's own warnings and Python's warnings go out as JSON lines too, never as text.
    logging.captureWarnings(True)
    for name in _FOREIGN_LOGGERS:
        foreign = logging.getLogger(name)
        foreign.handlers[:] = [handler]
        foreign.setLevel(logging.WARNING)
        foreign.propagate = False
    return redact


_minted: list[str] = []  # secrets made during the run, for every Redactor made after them


def add_secret(secret: str) -> None:
    """A secret made during the run (an IAM token, a password command's output): removed from
    every log line and from the termination message from now on."""
    if not secret or secret in _minted:
        return
    _minted.append(secret)
    for handler in logger.handlers:
        formatter = handler.formatter
        if isinstance(formatter, (_JsonLines, _TextLines)):
            formatter.redact.add(secret)


def minted_secrets() -> tuple[str, ...]:
    return tuple(_minted)


_target: ContextVar[str | None] = ContextVar("runner_target", default=None)


@contextmanager
def target(name: str) -> Iterator[None]:
    """Every event logged in the block, in this thread, carries `target`: the fleet target
    whose work it is ("": the fleet's own work, which has none)."""
    token = _target.set(name)
    try:
        yield
    finally:
        _target.reset(token)


def event(level: int, event_name: str, message: str, /, **fields: Any) -> None:
    """Log one event: `event_name` is the stable id that machines match on. Lines due from
    `later` are written first."""
    if _due.lines:
        write_due()
    _write(_target.get(), level, event_name, message, fields)


def later(level: int, event_name: str, message: str, /, **fields: Any) -> None:
    """An event whose line may wait until the next `write_due` or `event` of this thread, so
    that it can be written while the server works: the order of lines stays as logged."""
    _due.lines.append((_target.get(), level, event_name, message, fields))


def write_due() -> None:
    """Write this thread's lines from `later`, oldest first, each once."""
    while _due.lines:
        _write(*_due.lines.pop(0))


class _Due(threading.local):
    """Each thread's lines from `later` not yet written."""

    def __init__(self) -> None:
        self.lines: list[tuple[str | None, int, str, str, dict[str, Any]]] = []


_due = _Due()


def _write(
    name: str | None, level: int, event_name: str, message: str, fields: dict[str, Any]
) -> None:
    if name is not None:  # a fleet's run, where `target` names a target and nothing else
        if "target" in fields:  # db.connected's user@host/db: kept, under another key
            fields["connection"] = fields.pop("target")
        if name:
            fields = {"target": name, **fields}
    # Fields travel in one attribute: names such as `name` would clash with LogRecord's own.
    logger.log(level, message, extra={"event": event_name, "fields": fields})
