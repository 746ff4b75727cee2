"""Where in a file a server error points: pure, no database."""

from __future__ import annotations

import pytest

from runner import locate, sqlscript

pytestmark = pytest.mark.unit

TEXT = "CREATE TABLE a (id int);\n\nINSERT INTO a\n  VALUES (1/0);\n"


def test_the_server_position_becomes_the_file_line_and_column() -> None:
    offset = TEXT.index("1/0")
    assert locate.in_text(TEXT, offset=offset, statement_index=-1) == (4, 11)


def test_without_a_position_the_failing_statement_start_is_named() -> None:
    assert locate.in_text(TEXT, offset=None, statement_index=1) == (3, 1)
    assert locate.in_text(TEXT, offset=None, statement_index=7) == locate.NOWHERE
    assert locate.in_text(TEXT, offset=len(TEXT) + 5, statement_index=-1) == locate.NOWHERE


def test_a_position_in_a_batch_names_the_statement_it_falls_in() -> None:
    statements = sqlscript.split(TEXT)
    starts, query = [], ""
    for statement in statements:
        starts.append(len(query))
        query += statement.text + ";\n"
    offset = query.index("1/0")
    assert locate.in_batch(statements, starts, offset, -1) == (4, 11)
    assert locate.in_batch(statements, starts, None, 1) == (3, None)


def test_copy_context_names_the_bad_data_line() -> None:
    copy = sqlscript.split("SELECT 1;\nSELECT 2;\n")[1]  # a statement on line 2
    assert locate.in_copy_data(copy, 'COPY a, line 3: "x"') == (5, None)
    assert locate.in_copy_data(copy, None) == (2, None)


def test_blanked_keeps_lines_and_columns() -> None:
    text = "BEGIN;\nCREATE TABLE a ();\nCOMMIT;\n"
    begin, _, commit = sqlscript.split(text)
    blank = locate.blanked(text, [begin, commit])
    assert blank == "     ;\nCREATE TABLE a ();\n      ;\n"
    assert len(blank) == len(text)


def test_position_reads_the_diagnostic_text() -> None:
    assert locate.position("12") == 11
    assert locate.position(None) is None
    assert locate.position("") is None
