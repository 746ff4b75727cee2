"""Log lines: one JSON object each, stable fields, no secrets."""

from __future__ import annotations

import io
import json
import logging
from datetime import datetime

import pytest

from runner import logs

pytestmark = pytest.mark.unit


def test_one_json_object_per_line_with_the_stable_fields() -> None:
    stream = io.StringIO()
    logs.configure(log_format="json", level="INFO", stream=stream)
    logs.event(logging.INFO, "migration.applied", "applied\nit", version=3, name="add_x")
    logs.event(logging.DEBUG, "db.query", "not shown at INFO")
    lines = stream.getvalue().splitlines()
    assert len(lines) == 1
    entry = json.loads(lines[0])
    assert list(entry)[:4] == ["@timestamp", "log.level", "event", "message"]
    assert entry["event"] == "migration.applied"
    assert entry["log.level"] == "INFO"
    assert entry["message"] == "applied\nit"
    assert entry["version"] == 3
    assert entry["name"] == "add_x"
    stamp = datetime.fromisoformat(entry["@timestamp"])
    offset = stamp.utcoffset()
    assert offset is not None
    assert offset.total_seconds() == 0


def test_secrets_are_scrubbed_in_every_form() -> None:
    stream = io.StringIO()
    logs.configure(log_format="json", level="INFO", secrets=['pa"ss\\wörd'], stream=stream)
    logs.event(logging.ERROR, "x", 'raw pa"ss\\wörd', detail='pa"ss\\wörd')
    logs.event(logging.ERROR, "y", "url postgresql://app:other@db/x and password=other2 end")
    output = stream.getvalue()
    assert "wörd" not in output
    assert "other" not in output
    assert "postgresql://app:***@db/x" in output
    assert "password=*** end" in output


def test_text_format_for_people() -> None:
    stream = io.StringIO()
    logs.configure(log_format="text", level="INFO", stream=stream)
    logs.event(logging.INFO, "lock.acquired", "migration lock acquired", waited_ms=3)
    line = stream.getvalue().strip()
    assert "INFO" in line
    assert "[lock.acquired]" in line
    assert "waited_ms=3" in line


def test_a_line_separator_in_a_value_cannot_split_the_line() -> None:
    stream = io.StringIO()
    logs.configure(log_format="json", level="INFO", stream=stream)
    logs.event(logging.ERROR, "x", "bad name \x85 \u2028 \r\n end", file="\x85.up.sql")
    (line,) = stream.getvalue().splitlines()
    assert json.loads(line)["file"] == "\x85.up.sql"


@pytest.mark.parametrize("secret", ["a", "ap", "app", "ver", "1", "e"])
def test_short_secrets_are_redacted_only_as_whole_tokens(secret: str) -> None:
    stream = io.StringIO()
    logs.configure(log_format="json", level="INFO", secrets=[secret], stream=stream)
    logs.event(
        logging.INFO,
        "migration.applied",
        f"applied with {secret} in it",
        applied=[1],
        version=1,
        note=f"{secret}",
    )
    (line,) = stream.getvalue().splitlines()
    entry = json.loads(line)
    assert entry["event"] == "migration.applied"
    assert {"applied", "version", "note", "message"} <= set(entry)
    assert entry["note"] == "***"
    assert entry["message"] == "applied with *** in it"


def test_a_secret_never_changes_keys_or_event_names() -> None:
    stream = io.StringIO()
    logs.configure(log_format="json", level="INFO", secrets=["event", "applied"], stream=stream)
    logs.event(logging.INFO, "run.finished", "the applied event", applied=[1])
    entry = json.loads(stream.getvalue())
    assert entry["event"] == "run.finished"
    assert entry["applied"] == [1]
    assert entry["message"] == "the *** ***"


def test_text_lines_stay_one_line() -> None:
    stream = io.StringIO()
    logs.configure(log_format="text", level="INFO", stream=stream)
    logs.event(logging.ERROR, "x", "first\nsecond\r\nthird", detail="a\nb")
    assert len(stream.getvalue().splitlines()) == 1
