"""runner.catalog: snapshots of a schema keyed by name, and their differences."""

from __future__ import annotations

import json
from collections.abc import Iterator

import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict

from runner.catalog import (
    ADDED,
    CHANGED,
    KINDS,
    MISSING,
    Catalog,
    Difference,
    Properties,
    diff,
    diff_as_json,
    render_diff,
    snapshot,
    unexpected,
)
from tests.conftest import fresh_database


def snap(url: str, *exclude: str) -> Catalog:
    with psycopg.connect(url, autocommit=True) as conn:
        return snapshot(conn, exclude_tables=exclude)


def run_sql(url: str, statements: str) -> None:
    if statements:
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(statements.encode())


# -- diff, without a database -----------------------------------------------------------------


def catalog(**kinds: dict[str, Properties]) -> Catalog:
    return {kind: dict(kinds.get(kind, {})) for kind in KINDS}


TABLE_T: Catalog = catalog(
    schema={"public": {}},
    table={"public.t": {"kind": "table", "persistence": "permanent"}},
    column={
        "public.t.a": {"table": "public.t", "position": 1, "type": "integer", "not_null": True},
        "public.t.b": {"table": "public.t", "position": 2, "type": "text", "not_null": False},
    },
    constraint={"public.t.t_pkey": {"table": "public.t", "type": "primary key"}},
    index={"public.t_pkey": {"table": "public.t", "definition": "CREATE UNIQUE INDEX ..."}},
    sequence={"public.t_a_seq": {"type": "integer", "owned_by": "public.t.a"}},
)


@pytest.mark.unit
def test_equal_catalogs_have_no_differences() -> None:
    assert diff(TABLE_T, json.loads(json.dumps(TABLE_T))) == []
    assert render_diff([]) == ""


@pytest.mark.unit
def test_added_missing_and_changed_each_on_one_line() -> None:
    after = json.loads(json.dumps(TABLE_T))
    after["column"]["public.t.b"]["default"] = "'x'::text"
    after["column"]["public.t.b"]["not_null"] = True
    after["view"]["public.v"] = {"kind": "view", "definition": " SELECT 1;"}
    del after["index"]["public.t_pkey"]
    differences = diff(TABLE_T, after)
    assert differences == [
        Difference("column", "public.t.b", CHANGED, "not_null", False, True),
        Difference("column", "public.t.b", CHANGED, "default", None, "'x'::text"),
        Difference("index", "public.t_pkey", MISSING),
        Difference("view", "public.v", ADDED),
    ]
    assert render_diff(differences).splitlines() == [
        "changed column public.t.b: not_null: false -> true",
        "changed column public.t.b: default: null -> \"'x'::text\"",
        "missing index public.t_pkey",
        "added view public.v",
    ]


@pytest.mark.unit
def test_the_parts_of_a_missing_table_or_an_added_schema_are_not_listed_again() -> None:
    assert diff(TABLE_T, catalog(schema={"public": {}})) == [
        Difference("table", "public.t", MISSING)
    ]
    with_schema = json.loads(json.dumps(TABLE_T))
    with_schema["schema"]["app"] = {}
    with_schema["table"]["app.u"] = {"kind": "table"}
    with_schema["column"]["app.u.id"] = {"table": "app.u", "position": 1}
    with_schema["type"]["app.mood"] = {"kind": "enum", "labels": ["a"]}
    assert diff(TABLE_T, with_schema) == [Difference("schema", "app", ADDED)]


@pytest.mark.unit
def test_a_renamed_table_is_one_missing_and_one_added_table() -> None:
    renamed = json.loads(json.dumps(TABLE_T).replace("public.t", "public.renamed"))
    assert render_diff(diff(TABLE_T, renamed)).splitlines() == [
        "added table public.renamed",
        "missing table public.t",
    ]


@pytest.mark.unit
def test_long_values_are_cut_to_where_they_differ() -> None:
    body = "CREATE OR REPLACE FUNCTION public.f()\n RETURNS integer\n LANGUAGE sql\nAS $f$"
    before = catalog(function={"public.f()": {"definition": body + "SELECT 1" + "-" * 80 + "$f$"}})
    after = catalog(function={"public.f()": {"definition": body + "SELECT 2" + "-" * 80 + "$f$"}})
    (line,) = render_diff(diff(before, after)).splitlines()
    assert line.startswith("changed function public.f(): definition: ...")
    assert "SELECT 1" in line.split(" -> ")[0]
    assert "SELECT 2" in line.split(" -> ")[1]
    assert len(line) < 250
    (whole,) = diff_as_json(diff(before, after))
    assert whole["before"] == before["function"]["public.f()"]["definition"]


@pytest.mark.unit
def test_a_name_or_comment_with_line_breaks_stays_on_one_line() -> None:
    before = catalog(schema={"we\u2028ird\nname": {"comment": "a\u0085b"}})
    after = catalog(schema={"we\u2028ird\nname": {"comment": "a\rb"}})
    text = render_diff(diff(before, after)) + render_diff(diff(before, catalog()))
    assert len(text.splitlines()) == 2


@pytest.mark.unit
def test_the_json_form_has_whole_values_and_reads_back() -> None:
    before = catalog(type={"public.mood": {"kind": "enum", "labels": ["a", "b"]}})
    after = catalog(type={"public.mood": {"kind": "enum", "labels": ["b", "a"]}})
    document = json.loads(json.dumps(diff_as_json(diff(before, after))))
    assert document == [
        {
            "kind": "type",
            "name": "public.mood",
            "what": "changed",
            "property": "labels",
            "before": ["a", "b"],
            "after": ["b", "a"],
        }
    ]
    assert diff_as_json([Difference("table", "public.t", ADDED)]) == [
        {"kind": "table", "name": "public.t", "what": "added"}
    ]


@pytest.mark.unit
def test_a_kind_this_version_does_not_know_is_compared_too() -> None:
    assert diff({"policy": {"public.t.p": {}}}, {}) == [Difference("policy", "public.t.p", MISSING)]


# -- snapshots of a real database -------------------------------------------------------------

CASES = [
    # (id, set up, change, the differences as render_diff prints them)
    ("schema", "", "CREATE SCHEMA app", ["added schema app"]),
    (
        "schema comment",
        "CREATE SCHEMA app",
        "COMMENT ON SCHEMA app IS 'the app'",
        ['changed schema app: comment: null -> "the app"'],
    ),
    (
        "extension, without its own functions",
        "",
        'CREATE EXTENSION "uuid-ossp"',
        ["added extension uuid-ossp"],
    ),
    (
        "enum labels in order",
        "CREATE TYPE mood AS ENUM ('a', 'b')",
        "ALTER TYPE mood ADD VALUE 'c' BEFORE 'a'",
        ['changed type public.mood: labels: ["a", "b"] -> ["c", "a", "b"]'],
    ),
    (
        "domain",
        "CREATE DOMAIN positive AS int CHECK (VALUE > 0)",
        "ALTER DOMAIN positive SET NOT NULL; ALTER DOMAIN positive SET DEFAULT 1",
        [
            "changed type public.positive: not_null: false -> true",
            'changed type public.positive: default: null -> "1"',
        ],
    ),
    (
        "domain constraint, not validated",
        "CREATE DOMAIN positive AS int",
        "ALTER DOMAIN positive ADD CONSTRAINT small CHECK (VALUE < 10) NOT VALID",
        ["added constraint public.positive.small"],
    ),
    (
        "composite type",
        "CREATE TYPE pair AS (a int, b text)",
        "ALTER TYPE pair ADD ATTRIBUTE c bigint",
        [
            'changed type public.pair: attributes: ["a integer", "b text"] -> '
            '["a integer", "b text", "c bigint"]'
        ],
    ),
    (
        "range type, without its constructors",
        "",
        "CREATE TYPE floatrange AS RANGE (subtype = float8)",
        ["added type public.floatrange"],
    ),
    (
        "sequence",
        "CREATE SEQUENCE counter",
        "ALTER SEQUENCE counter INCREMENT 5 MAXVALUE 100 CYCLE",
        [
            "changed sequence public.counter: increment: 1 -> 5",
            "changed sequence public.counter: maximum: 9223372036854775807 -> 100",
            "changed sequence public.counter: cycle: false -> true",
        ],
    ),
    (
        "a partition, with its columns",
        "CREATE TABLE m (d date, v int) PARTITION BY RANGE (d)",
        "CREATE TABLE m_2024 PARTITION OF m FOR VALUES FROM ('2024-01-01') TO ('2025-01-01')",
        ["added table public.m_2024"],
    ),
    (
        "unlogged table and its storage options",
        "CREATE TABLE t (a int)",
        "ALTER TABLE t SET UNLOGGED; ALTER TABLE t SET (fillfactor = 70)",
        [
            'changed table public.t: persistence: "permanent" -> "unlogged"',
            'changed table public.t: options: null -> ["fillfactor=70"]',
        ],
    ),
    (
        "column type, nullability, default",
        "CREATE TABLE t (a int, b text)",
        "ALTER TABLE t ALTER a TYPE bigint, ALTER a SET NOT NULL, ALTER b SET DEFAULT 'x'",
        [
            'changed column public.t.a: type: "integer" -> "bigint"',
            "changed column public.t.a: not_null: false -> true",
            "changed column public.t.b: default: null -> \"'x'::text\"",
        ],
    ),
    (
        "identity and generated columns",
        "CREATE TABLE t (a int NOT NULL)",
        "ALTER TABLE t ALTER a ADD GENERATED BY DEFAULT AS IDENTITY; "
        "ALTER TABLE t ADD COLUMN twice int GENERATED ALWAYS AS (a * 2) STORED",
        [
            "added sequence public.t_a_seq",
            'changed column public.t.a: identity: null -> "by default"',
            "added column public.t.twice",
        ],
    ),
    (
        "column collation and comment",
        "CREATE TABLE t (name text)",
        "ALTER TABLE t ALTER name TYPE text COLLATE \"C\"; COMMENT ON COLUMN t.name IS 'n'",
        [
            'changed column public.t.name: collation: null -> "pg_catalog.C"',
            'changed column public.t.name: comment: null -> "n"',
        ],
    ),
    (
        "column order is not a difference: a re-added column cannot go back in its place",
        "CREATE TABLE t (a int, b int, c int)",
        "ALTER TABLE t DROP COLUMN b; ALTER TABLE t ADD COLUMN b int",
        [],
    ),
    (
        "constraint validated",
        "CREATE TABLE t (a int); ALTER TABLE t ADD CONSTRAINT positive CHECK (a > 0) NOT VALID",
        "ALTER TABLE t VALIDATE CONSTRAINT positive",
        [
            'changed constraint public.t.positive: definition: "CHECK ((a > 0)) NOT VALID" -> '
            '"CHECK ((a > 0))"',
            "changed constraint public.t.positive: validated: false -> true",
        ],
    ),
    (
        "foreign key",
        "CREATE TABLE p (id int PRIMARY KEY); CREATE TABLE c (p int)",
        "ALTER TABLE c ADD CONSTRAINT c_p FOREIGN KEY (p) REFERENCES p ON DELETE CASCADE",
        ["added constraint public.c.c_p"],
    ),
    (
        "index definition",
        "CREATE TABLE t (a int); CREATE INDEX t_a ON t (a)",
        "DROP INDEX t_a; CREATE INDEX t_a ON t (a DESC)",
        [
            "changed index public.t_a: definition: "
            '"CREATE INDEX t_a ON public.t USING btree (a)" -> '
            '"CREATE INDEX t_a ON public.t USING btree (a DESC)"'
        ],
    ),
    (
        "view and materialized view",
        "CREATE VIEW v AS SELECT 1 AS x",
        "CREATE OR REPLACE VIEW v AS SELECT 2 AS x; CREATE MATERIALIZED VIEW mv AS SELECT 1 AS y",
        [
            "added view public.mv",
            'changed view public.v: definition: " SELECT 1 AS x;" -> " SELECT 2 AS x;"',
        ],
    ),
    (
        "function body, overload, procedure, aggregate",
        "CREATE FUNCTION f() RETURNS int LANGUAGE sql AS 'SELECT 1'",
        "CREATE OR REPLACE FUNCTION f() RETURNS int LANGUAGE sql AS 'SELECT 2'; "
        "CREATE FUNCTION f(a int) RETURNS int LANGUAGE sql AS 'SELECT a'; "
        "CREATE PROCEDURE p() LANGUAGE sql AS 'SELECT 1'; "
        "CREATE AGGREGATE total(int) (SFUNC = int4pl, STYPE = int, INITCOND = '0')",
        [
            "changed function public.f(): definition: "
            '..."LANGUAGE sql\\nAS $function$SELECT 1$function$\\n" -> '
            '..."LANGUAGE sql\\nAS $function$SELECT 2$function$\\n"',
            "added function public.f(a integer)",
            "added function public.p()",
            "added function public.total(integer)",
        ],
    ),
    (
        "trigger disabled",
        "CREATE TABLE t (a int); "
        "CREATE FUNCTION touch() RETURNS trigger LANGUAGE plpgsql AS 'BEGIN RETURN NEW; END'; "
        "CREATE TRIGGER tr BEFORE UPDATE ON t FOR EACH ROW EXECUTE FUNCTION touch()",
        "ALTER TABLE t DISABLE TRIGGER tr",
        ['changed trigger public.t.tr: enabled: "origin" -> "disabled"'],
    ),
    (
        "comments on everything",
        "CREATE TABLE t (a int CONSTRAINT t_pkey PRIMARY KEY); CREATE TYPE mood AS ENUM ('a'); "
        "CREATE SEQUENCE s; CREATE VIEW v AS SELECT 1 AS x; "
        "CREATE FUNCTION touch() RETURNS trigger LANGUAGE plpgsql AS 'BEGIN RETURN NEW; END'; "
        "CREATE TRIGGER tr BEFORE UPDATE ON t FOR EACH ROW EXECUTE FUNCTION touch()",
        "COMMENT ON TABLE t IS '1'; COMMENT ON CONSTRAINT t_pkey ON t IS '2'; "
        "COMMENT ON INDEX t_pkey IS '3'; COMMENT ON TYPE mood IS '4'; "
        "COMMENT ON SEQUENCE s IS '5'; COMMENT ON VIEW v IS '6'; "
        "COMMENT ON FUNCTION touch() IS '7'; COMMENT ON TRIGGER tr ON t IS '8'; "
        "COMMENT ON EXTENSION plpgsql IS '9'",
        [
            'changed extension plpgsql: comment: "PL/pgSQL procedural language" -> "9"',
            'changed type public.mood: comment: null -> "4"',
            'changed sequence public.s: comment: null -> "5"',
            'changed table public.t: comment: null -> "1"',
            'changed constraint public.t.t_pkey: comment: null -> "2"',
            'changed index public.t_pkey: comment: null -> "3"',
            'changed view public.v: comment: null -> "6"',
            'changed function public.touch(): comment: null -> "7"',
            'changed trigger public.t.tr: comment: null -> "8"',
        ],
    ),
]


@pytest.mark.parametrize(
    ("setup", "change", "expected"), [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_each_kind_of_change_is_seen(
    database_url: str, setup: str, change: str, expected: list[str]
) -> None:
    run_sql(database_url, setup)
    before = snap(database_url)
    run_sql(database_url, change)
    assert render_diff(diff(before, snap(database_url))).splitlines() == expected


SCHEMA = """
CREATE EXTENSION "uuid-ossp";
CREATE SCHEMA app;
CREATE TYPE app.mood AS ENUM ('sad', 'ok', 'happy');
CREATE TABLE app.users (
    id uuid PRIMARY KEY DEFAULT uuid_generate_v4(),
    n serial,
    mood app.mood NOT NULL DEFAULT 'ok',
    email text UNIQUE
);
CREATE INDEX users_mood ON app.users (mood) WHERE mood <> 'sad';
CREATE VIEW app.happy AS SELECT id FROM app.users WHERE mood = 'happy';
CREATE FUNCTION app.f(m app.mood) RETURNS int LANGUAGE sql AS 'SELECT 1';
CREATE TABLE schema_migrations (version bigint PRIMARY KEY, note text);
"""


@pytest.fixture
def second_database(server_url: str) -> Iterator[str]:
    with fresh_database(server_url) as url:
        yield url


def test_two_databases_made_alike_compare_equal(database_url: str, second_database: str) -> None:
    run_sql(database_url, "CREATE TABLE pad (a int); DROP TABLE pad;" + SCHEMA)  # other OIDs
    run_sql(second_database, SCHEMA)
    first = snap(database_url, "public.schema_migrations")
    assert diff(first, snap(second_database, "public.schema_migrations")) == []
    assert json.loads(json.dumps(first)) == first
    assert first["column"]["app.users.mood"]["default"] == "'ok'::app.mood"
    assert first["column"]["app.users.id"]["default"] == "public.uuid_generate_v4()"


def test_the_excluded_table_leaves_nothing_of_itself(database_url: str) -> None:
    run_sql(database_url, SCHEMA)
    found = json.dumps(snap(database_url, "public.schema_migrations"))
    assert "schema_migrations" not in found
    assert "public.schema_migrations" in snap(database_url)["table"]


def test_extension_objects_are_left_out(database_url: str) -> None:
    run_sql(database_url, 'CREATE EXTENSION "uuid-ossp"')
    found = snap(database_url)
    assert found["function"] == {}
    assert found["extension"]["uuid-ossp"]["schema"] == "public"


def test_the_session_search_path_changes_nothing(database_url: str) -> None:
    run_sql(database_url, SCHEMA)
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("SET search_path = app, public")
        seen = snapshot(conn)
        with conn.transaction():
            conn.execute("SET LOCAL search_path = app")
            in_transaction = snapshot(conn)
            assert conn.execute("SHOW search_path").fetchone() == ("app",)
    assert diff(snap(database_url), seen) == []
    assert diff(seen, in_transaction) == []


def test_an_empty_database_is_recognised(database_url: str) -> None:
    assert unexpected(snap(database_url)) == []
    run_sql(database_url, "CREATE TABLE t (a int)")
    assert unexpected(snap(database_url)) == ["table public.t", "column public.t.a"]


def test_a_read_only_database_can_be_read(database_url: str) -> None:
    name = conninfo_to_dict(database_url)["dbname"]
    run_sql(database_url, f'ALTER DATABASE "{name}" SET default_transaction_read_only = on')
    assert unexpected(snap(database_url)) == []
