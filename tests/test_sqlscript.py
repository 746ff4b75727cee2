"""The statement splitter (PostgreSQL's own lexer, through pglast) and what it says of each
statement: no database needed."""

from __future__ import annotations

import hypothesis.strategies as st
import pytest
from hypothesis import example, given, settings

from runner.sqlscript import (
    CopyData,
    Kind,
    ScriptSyntaxError,
    classify,
    line_of,
    read_units,
    split,
)

pytestmark = pytest.mark.unit


def lines(script: str) -> list[int]:
    return [statement.line for statement in split(script)]


def test_plain_statements_and_their_lines() -> None:
    assert lines("SELECT 1;\n\nSELECT 2;\nSELECT 3") == [1, 3, 4]


def test_comments_and_empty_statements_are_left_out() -> None:
    script = "-- a; b\n/* c; /* nested; */ d; */\n;;\nSELECT 1; -- e;\n"
    assert [s.text for s in split(script)] == ["SELECT 1"]
    assert lines(script) == [4]
    assert split("-- only a comment\n/* and another */") == []


def test_quotes_and_identifiers_hide_semicolons() -> None:
    script = "SELECT 'a;''b', E'c\\';d', \"e;f\";\nSELECT 2;"
    assert lines(script) == [1, 2]


def test_dollar_quoted_bodies_hide_semicolons() -> None:
    script = (
        "CREATE FUNCTION f() RETURNS int LANGUAGE plpgsql AS $body$\nBEGIN\n  RETURN 1;\n"
        "END;\n$body$;\nDO $$ BEGIN PERFORM 1; END $$;\nSELECT $1;"
    )
    assert lines(script) == [1, 6, 7]


def test_begin_atomic_bodies_hide_semicolons() -> None:
    script = (
        "CREATE OR REPLACE FUNCTION g() RETURNS int LANGUAGE sql\nBEGIN ATOMIC\n"
        "  SELECT CASE WHEN true THEN 1 END;\n  SELECT 2;\nEND;\nSELECT 3;"
    )
    assert lines(script) == [1, 6]


def test_a_statement_that_does_not_begin_with_a_keyword_is_kept_for_the_server() -> None:
    """The lexer's own split leaves out `SELEC 1` (a typo), which would then never run: it
    must reach the server and fail there."""
    text = "CREATE TABLE a ();\nSELEC 1;\n-- c\nfoo $$x;y$$; /* z */ SELECT 2;\nVACUM"
    statements = split(text)
    assert [(s.text, s.line, s.column) for s in statements] == [
        ("CREATE TABLE a ()", 1, 1),
        ("SELEC 1", 2, 1),
        ("foo $$x;y$$", 4, 1),
        ("SELECT 2", 4, 22),
        ("VACUM", 5, 1),
    ]
    assert [unit[3] for unit in read_in_pieces(text, 3)] == [s.text for s in statements]


def test_line_of_offset() -> None:
    assert line_of("a\nb\nc", 0) == 1
    assert line_of("a\nb\nc", 4) == 3


# -- reading in pieces ---------------------------------------------------------------------------

FRAGMENTS = [
    "SELECT 1;",
    "SELEC 1;",
    "SELECT 'a;b', E'c\\';d', \"e;f\";",
    "-- note; here\n",
    "/* block; /* nested; */ */",
    "CREATE FUNCTION f() RETURNS int LANGUAGE plpgsql AS $f$ BEGIN RETURN 1; END $f$;",
    "CREATE FUNCTION g() RETURNS int LANGUAGE sql BEGIN ATOMIC SELECT 1; SELECT 2; END;",
    "COPY t (a, b) FROM stdin;\n1\tO'Brien\n2\t\\N\n\\.\n",
    "INSERT INTO t VALUES ('é', 'ß');",
    "BEGIN;",
    "COMMIT;",
    "\\restrict 0YTM8y2Pyberr3j2uaAWcZBE\n",
    "\n",
    "  ",
]


def read_in_pieces(text: str, size: int) -> list[tuple[str, int, int, str]]:
    pieces = iter([text[i : i + size] for i in range(0, len(text), size)])
    found = []
    for unit in read_units(lambda _n: next(pieces, "")):
        if isinstance(unit, CopyData):
            found.append(("copy", unit.statement.offset, unit.statement.line, "".join(unit.pieces)))
        else:
            found.append((unit.kind.value, unit.offset, unit.line, unit.text))
    return found


@settings(max_examples=200, deadline=None, derandomize=True)
@given(
    parts=st.lists(st.sampled_from(FRAGMENTS), min_size=1, max_size=12),
    size=st.integers(min_value=1, max_value=64),
)
@example(parts=["COPY t (a, b) FROM stdin;\n1\tO'Brien\n2\t\\N\n\\.\n", "SELECT 1;"], size=1)
def test_reading_in_pieces_finds_what_reading_at_once_finds(parts: list[str], size: int) -> None:
    text = "\n".join(parts)
    assert read_in_pieces(text, size) == read_in_pieces(text, len(text) + 1)


def test_offsets_and_lines_point_at_the_first_token() -> None:
    text = "-- header\n\n/* c */ SELECT 1;\nCOPY t FROM stdin;\nx\n\\.\nSELECT\n 2;"
    found = read_in_pieces(text, 5)
    assert found == [
        ("plain", 19, 3, "SELECT 1"),
        ("copy", 29, 4, "x\n"),
        ("plain", 53, 7, "SELECT\n 2"),
    ]
    for _kind, offset, _line, statement in (found[0], found[2]):
        assert text[offset:].startswith(statement)


def test_copy_data_without_its_end_marker_is_an_error() -> None:
    with pytest.raises(ScriptSyntaxError, match="no end to its data"):
        read_in_pieces("COPY t FROM stdin;\n1\n2\n", 3)


def test_an_unterminated_quote_names_its_line() -> None:
    with pytest.raises(ScriptSyntaxError, match="line 2: unterminated quoted string"):
        read_in_pieces("SELECT 1;\nSELECT 'abc;\n", 4)


@pytest.mark.parametrize(
    ("sql", "kind"),
    [
        ("BEGIN", Kind.BEGIN),
        ("START TRANSACTION", Kind.BEGIN),
        ("BEGIN ISOLATION LEVEL SERIALIZABLE", Kind.BEGIN_WITH_MODES),
        ("END", Kind.COMMIT),
        ("COMMIT AND CHAIN", Kind.CHAIN),
        ("ABORT", Kind.ROLLBACK),
        ("PREPARE TRANSACTION 'x'", Kind.PREPARE_TRANSACTION),
        ("SAVEPOINT a", Kind.PLAIN),
        ("ROLLBACK TO SAVEPOINT a", Kind.PLAIN),
        ("CREATE /* x */ UNIQUE INDEX CONCURRENTLY i ON t (a)", Kind.NON_TRANSACTIONAL),
        ("DROP INDEX CONCURRENTLY IF EXISTS i", Kind.NON_TRANSACTIONAL),
        ("REINDEX (CONCURRENTLY) TABLE t", Kind.NON_TRANSACTIONAL),
        ("REINDEX DATABASE d", Kind.NON_TRANSACTIONAL),
        ("REINDEX TABLE t", Kind.PLAIN),
        ("ALTER TABLE p DETACH PARTITION c CONCURRENTLY", Kind.NON_TRANSACTIONAL),
        ("ALTER TABLE p DETACH PARTITION c", Kind.PLAIN),
        ("VACUUM ANALYZE t", Kind.NON_TRANSACTIONAL),
        ("ANALYZE t", Kind.PLAIN),
        ("CREATE DATABASE d", Kind.NON_TRANSACTIONAL),
        ("ALTER SYSTEM SET work_mem = '1MB'", Kind.NON_TRANSACTIONAL),
        ("COPY t FROM stdin", Kind.COPY_FROM_STDIN),
        ("COPY t (a) FROM STDIN WITH (FORMAT csv)", Kind.COPY_FROM_STDIN),
        ("COPY t TO stdout", Kind.COPY_TO_STDOUT),
        ("COPY t FROM '/data/t.csv'", Kind.PLAIN),
        ("CREATE TABLE begin_end (commit int)", Kind.PLAIN),
        ("not sql at all", Kind.PLAIN),
    ],
)
def test_what_a_statement_is(sql: str, kind: Kind) -> None:
    assert classify(sql)[0] is kind


def test_a_meta_command_ends_with_its_line() -> None:
    text = "\\restrict 0YTMkey9\n\nSET a = 0;\n\\i x.sql\nSELECT 1;"
    assert read_in_pieces(text, 3) == [
        ("psql meta-command", 0, 1, "\\restrict 0YTMkey9"),
        ("plain", 20, 3, "SET a = 0"),
        ("psql meta-command", 31, 4, "\\i x.sql"),
        ("plain", 40, 5, "SELECT 1"),
    ]
