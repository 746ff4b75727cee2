"""The statement splitter (PostgreSQL's own lexer, through pglast) and what it says of each
statement: no database needed."""

from __future__ import annotations

from runner.sqlscript import line_of, split


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


def test_line_of_offset() -> None:
    assert line_of("a\nb\nc", 0) == 1
    assert line_of("a\nb\nc", 4) == 3
