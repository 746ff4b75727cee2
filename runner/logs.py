"""One JSON object per line on stderr, with a stable `event` name; secrets scrubbed."""

from __future__ import annotations

import json
import logging
import re
import sys
from collections.abc import Iterable
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


class Redactor:
    """Removes passwords: the known secret values, and any URL or key=value password."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        forms: set[str] = set()
        for secret in secrets:
            if secret:
                escaped = json.dumps(secret, ensure_ascii=False)[1:-1]
                forms.update({secret, escaped, json.dumps(secret)[1:-1]})
        self._forms = sorted(forms, key=len, reverse=True)

    def __call__(self, text: str) -> str:
        for form in self._forms:
            text = text.replace(form, "***")
        text = _URL_PASSWORD.sub(r"\g<head>***@", text)
        return _KEYWORD_PASSWORD.sub(r"\g<head>***", text)


_HEAD = ("@timestamp", "log.level", "event", "message")


class _JsonLines(JsonFormatter):
    def __init__(self, redact: Redactor) -> None:
        super().__init__(
            "%(levelname)s %(message)s",
            rename_fields={"levelname": "log.level"},
            timestamp="@timestamp",
        )
        self._redact = redact

    def add_fields(
        self, log_data: dict[str, Any], record: logging.LogRecord, message_dict: dict[str, Any]
    ) -> None:
        super().add_fields(log_data, record, message_dict)
        fields = log_data.pop("fields", None) or {}
        head = {key: log_data.pop(key) for key in _HEAD if key in log_data}
        rest = dict(log_data)
        log_data.clear()
        log_data.update(head, **rest, **fields)

    def format(self, record: logging.LogRecord) -> str:
        return self._redact(super().format(record))


class _TextLines(logging.Formatter):
    """For people at a terminal: time, level, event, message, then key=value fields."""

    def __init__(self, redact: Redactor) -> None:
        super().__init__("%(asctime)s %(levelname)-7s %(message)s", "%H:%M:%S")
        self._redact = redact

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        extras = {k: v for k, v in record.__dict__.items() if k not in _STANDARD_FIELDS}
        event = extras.pop("event", None)
        extras.update(extras.pop("fields", None) or {})
        fields = " ".join(f"{k}={json.dumps(v, default=str)}" for k, v in extras.items())
        text = f"{line} [{event}]" if event else line
        return self._redact(f"{text} {fields}".rstrip())


def configure(
    *, log_format: str, level: str, secrets: Iterable[str] = (), stream: IO[str] | None = None
) -> Redactor:
    """Send the runner's records to `stream` (stderr) in the chosen format."""
    redact = Redactor(secrets)
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


def event(level: int, event_name: str, message: str, /, **fields: Any) -> None:
    """Log one event: `event_name` is the stable id that machines match on."""
    # Fields travel in one attribute: names such as `name` would clash with LogRecord's own.
    logger.log(level, message, extra={"event": event_name, "fields": fields})
