"""Migration sets as real projects write them, through the real entrypoint against a real server:
files that change their session, carry their own BEGIN/COMMIT, load pg_dump COPY data, use psql
meta-commands or RAISE NOTICE; odd directories; databases in other encodings; large files."""

from __future__ import annotations

import shutil
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from runner.exit_codes import ExitCode
from tests.conftest import (
    Run,
    RunnerProcess,
    poll_until,
    query,
    run_entrypoint,
    runner_env,
    write_migration,
)
from tests.pgcluster import find_bindir


def run(database_url: str, migrations: Path, *args: str, **extra: str) -> Run:
    return run_entrypoint(*(args or ("up",)), env=runner_env(database_url, migrations, **extra))


def relations(database_url: str) -> set[str]:
    """Every table outside the catalogs, schema-qualified, the tracking table included."""
    rows = query(
        database_url,
        "SELECT schemaname || '.' || tablename FROM pg_tables "
        "WHERE schemaname NOT IN ('pg_catalog', 'information_schema')",
    )
    return {row[0] for row in rows}


def recorded(database_url: str) -> list[tuple[int, str]]:
    rows = query(
        database_url, "SELECT version, status FROM public.schema_migrations ORDER BY version"
    )
    return [(row[0], row[1]) for row in rows]


def apply_in_one_or_two_runs(
    database_url: str, migrations: Path, files: dict[str, str], runs: int
) -> None:
    """Write the files and apply them: all in one run, or the last one in a second run."""
    names = sorted(files)
    for name in names[:-1] if runs == 2 else names:
        write_migration(migrations, name, files[name])
    first = run(database_url, migrations)
    assert first.code == 0, first.stderr
    if runs == 2:
        write_migration(migrations, names[-1], files[names[-1]])
        second = run(database_url, migrations)
        assert second.code == 0, second.stderr
    assert recorded(database_url) == [(v, "applied") for v in range(1, len(names) + 1)]


# -- 1. every file starts from the same clean session -------------------------------------------


@pytest.mark.parametrize("runs", [1, 2])
@pytest.mark.fault("a file's `SET search_path`, then the next file (one run, two runs)")
def test_a_search_path_set_by_one_file_does_not_move_the_next(
    database_url: str, migrations_dir: Path, runs: int
) -> None:
    files = {
        "1_tenant.up.sql": "CREATE SCHEMA tenant;\nCREATE TABLE tenant.schema_migrations (x int);\n"
        "SET search_path TO tenant, public;\nCREATE TABLE in_tenant (id int);",
        "2_later.up.sql": "CREATE TABLE later (id int);",
    }
    apply_in_one_or_two_runs(database_url, migrations_dir, files, runs)
    assert relations(database_url) == {
        "public.schema_migrations",
        "tenant.schema_migrations",
        "tenant.in_tenant",
        "public.later",
    }
    assert query(database_url, "SELECT count(*) FROM tenant.schema_migrations") == [(0,)]


@pytest.mark.parametrize("runs", [1, 2])
@pytest.mark.fault("pg_dump's empty `search_path`, then the next file and its row")
def test_pg_dump_s_empty_search_path_does_not_break_the_row(
    database_url: str, migrations_dir: Path, runs: int
) -> None:
    files = {
        "1_dump.up.sql": "SELECT pg_catalog.set_config('search_path', '', false);\n"
        "CREATE TABLE public.dumped (id integer);",
        "2_after.up.sql": "CREATE TABLE after_dump (id int);",
    }
    apply_in_one_or_two_runs(database_url, migrations_dir, files, runs)
    assert {"public.dumped", "public.after_dump"} <= relations(database_url)


@pytest.mark.parametrize("runs", [1, 2])
@pytest.mark.fault("a `TEMP TABLE` shadowing the next file's table")
def test_a_temporary_table_does_not_swallow_the_next_file_s_seed(
    database_url: str, migrations_dir: Path, runs: int
) -> None:
    files = {
        "1_users.up.sql": "CREATE TABLE users (id int);",
        "2_scratch.up.sql": "CREATE TEMP TABLE users (id int);\nINSERT INTO users VALUES (0);",
        "3_seed.up.sql": "INSERT INTO users VALUES (1);",
    }
    apply_in_one_or_two_runs(database_url, migrations_dir, files, runs)
    assert query(database_url, "SELECT id FROM public.users") == [(1,)]


@pytest.fixture
def other_role(server_url: str) -> Iterator[str]:
    name = f"owner_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(server_url, autocommit=True) as admin:
        admin.execute(f"CREATE ROLE {name}".encode())
    yield name
    with psycopg.connect(server_url, autocommit=True) as admin:
        admin.execute(f"DROP ROLE IF EXISTS {name}".encode())


@pytest.mark.parametrize("runs", [1, 2])
@pytest.mark.fault("`SET ROLE` and `statement_timeout = 1`, then the next file")
def test_set_role_and_timeouts_end_with_their_file(
    database_url: str, migrations_dir: Path, other_role: str, runs: int
) -> None:
    files = {
        "1_owned.up.sql": f"GRANT CREATE ON SCHEMA public TO {other_role};\n"
        f"SET ROLE {other_role};\nCREATE TABLE owned (id int);\nSET statement_timeout = 1;",
        "2_mine.up.sql": "SELECT pg_sleep(0.05);\nCREATE TABLE mine (id int);",
    }
    apply_in_one_or_two_runs(database_url, migrations_dir, files, runs)
    owners = dict(
        query(
            database_url,
            "SELECT tablename, tableowner FROM pg_tables WHERE tablename IN ('owned', 'mine')",
        )
    )
    assert owners["owned"] == other_role
    assert owners["mine"] == "postgres"
    try:
        with psycopg.connect(database_url, autocommit=True) as conn:
            conn.execute(f"DROP OWNED BY {other_role}".encode())
    except psycopg.Error:
        pass


def test_a_file_s_own_statement_timeout_does_not_cut_its_row_short(
    database_url: str, migrations_dir: Path
) -> None:
    """The row is written before the settings' reset: the file's `SET statement_timeout` must
    not apply to it. Another session holds the tracking table for a moment, so that the row's
    INSERT waits longer than the file's timeout."""
    write_migration(migrations_dir, "1_first.up.sql", "CREATE TABLE first (id int);")
    assert run(database_url, migrations_dir).code == 0
    quick = "CREATE TABLE quick (id int);\nSET statement_timeout = 100;"
    write_migration(migrations_dir, "2_quick.up.sql", quick)
    with psycopg.connect(database_url) as holder:
        holder.execute("LOCK TABLE schema_migrations IN SHARE MODE")
        with RunnerProcess(runner_env(database_url, migrations_dir)) as runner:
            poll_until(
                lambda: bool(
                    query(
                        database_url,
                        "SELECT 1 FROM pg_stat_activity WHERE application_name = "
                        "'migration-runner' AND wait_event_type = 'Lock'",
                    )
                ),
                15,
                "the row's INSERT never waited for the table",
            )
            time.sleep(0.3)  # three times the file's statement_timeout
            holder.rollback()
            second = runner.finish(timeout=30)
    assert second.code == 0, second.stderr
    assert recorded(database_url) == [(1, "applied"), (2, "applied")]


def test_schema_migrations_and_public_schema_migrations_are_one_table(
    database_url: str, migrations_dir: Path
) -> None:
    write_migration(migrations_dir, "1_a.up.sql", "CREATE TABLE a (id int);")
    first = run(database_url, migrations_dir)
    assert first.code == 0, first.stderr
    qualified = run(database_url, migrations_dir, MIGRATIONS_TABLE="public.schema_migrations")
    assert qualified.code == 0, qualified.stderr
    assert qualified.finished["applied"] == []
    assert relations(database_url) == {"public.schema_migrations", "public.a"}


# -- 2. transaction control written inside a file ------------------------------------------------


@pytest.mark.fault("a file's own `BEGIN`/`COMMIT` wrapper, with a failure inside")
def test_a_begin_commit_wrapper_is_ignored_with_a_warning(
    database_url: str, migrations_dir: Path
) -> None:
    write_migration(
        migrations_dir,
        "1_a.up.sql",
        "-- golang-migrate style\nBEGIN;\nCREATE TABLE a ();\nCOMMIT;\n",
    )
    write_migration(
        migrations_dir, "2_b.up.sql", "START TRANSACTION;\nCREATE TABLE b ();\nSELECT 1/0;\nEND;"
    )
    failed = run(database_url, migrations_dir)
    assert failed.code == ExitCode.MIGRATION_FAILED, failed.stderr
    warning = failed.event("migration.transaction_wrapper_ignored")
    assert (warning["version"], warning["begin_line"], warning["commit_line"]) == (2, 1, 4)
    assert failed.finished["error"].startswith("migration 2 failed at 2_b.up.sql line 3")
    assert relations(database_url) == {"public.schema_migrations", "public.a"}
    assert recorded(database_url) == [(1, "applied")]


@pytest.mark.parametrize(
    ("sql", "line", "words"),
    [
        ("BEGIN; CREATE TABLE a (); COMMIT;\nCREATE TABLE b ();\nSELECT 1/0;", 1, ": COMMIT:"),
        ("CREATE TABLE a ();\nROLLBACK;\nCREATE TABLE b ();", 2, ": ROLLBACK:"),
        ("CREATE TABLE a ();\nCOMMIT;", 2, ": COMMIT:"),
        (
            "BEGIN;\nCREATE TABLE a ();\nCOMMIT;\nBEGIN;\nCREATE TABLE b ();\nCOMMIT;",
            3,
            ": COMMIT:",
        ),
        ("BEGIN ISOLATION LEVEL SERIALIZABLE;\nCREATE TABLE a ();\nCOMMIT;", 1, "BEGIN"),
        ("CREATE TABLE a ();\nPREPARE TRANSACTION 'x';", 2, "PREPARE TRANSACTION"),
        ("CREATE TABLE a ();\nABORT;", 2, "ABORT"),
    ],
)
@pytest.mark.fault("other transaction control in an ordinary file")
def test_other_transaction_control_is_refused_before_anything_runs(
    database_url: str, migrations_dir: Path, sql: str, line: int, words: str
) -> None:
    write_migration(migrations_dir, "1_first.up.sql", "CREATE TABLE first (id int);")
    write_migration(migrations_dir, "2_tx.up.sql", sql)
    for args in (("up",), ("validate", "--offline")):
        refused = run(database_url, migrations_dir, *args)
        assert refused.code == ExitCode.INVALID_MIGRATIONS, refused.stderr
        error = refused.finished["error"]
        assert error.startswith(f"2_tx.up.sql: line {line}: "), error
        assert words in error
        if words != "PREPARE TRANSACTION":  # which no file may use
            assert "-- migrate:no-transaction" in error
    assert relations(database_url) == set()


def test_savepoints_stay_allowed(database_url: str, migrations_dir: Path) -> None:
    write_migration(
        migrations_dir,
        "1_a.up.sql",
        "CREATE TABLE a ();\nSAVEPOINT s;\nCREATE TABLE b ();\nROLLBACK TO SAVEPOINT s;\n"
        "RELEASE SAVEPOINT s;\nCREATE TABLE c ();",
    )
    applied = run(database_url, migrations_dir)
    assert applied.code == 0, applied.stderr
    assert relations(database_url) == {"public.schema_migrations", "public.a", "public.c"}


def test_blocks_in_a_no_transaction_file_run_as_blocks(
    database_url: str, migrations_dir: Path
) -> None:
    write_migration(migrations_dir, "1_a.up.sql", "CREATE TABLE a (id int);")
    write_migration(
        migrations_dir,
        "2_fill.up.sql",
        "-- migrate:no-transaction\nCREATE INDEX CONCURRENTLY idx_a_id ON a (id);\n"
        "BEGIN;\nINSERT INTO a VALUES (1);\nINSERT INTO a VALUES (2);\nCOMMIT;\n"
        "BEGIN;\nINSERT INTO a VALUES (3);\nSELECT 1/0;\nCOMMIT;\n",
    )
    failed = run(database_url, migrations_dir)
    assert failed.code == ExitCode.MIGRATION_FAILED, failed.stderr
    assert "2_fill.up.sql line 9" in failed.finished["error"]
    assert query(database_url, "SELECT id FROM a ORDER BY id") == [(1,), (2,)]
    assert recorded(database_url) == [(1, "applied"), (2, "failed")]


@pytest.mark.parametrize(
    ("sql", "line"),
    [
        ("BEGIN;\nINSERT INTO a VALUES (1);\n", 2),
        ("INSERT INTO a VALUES (1);\nCOMMIT;\n", 3),
        ("BEGIN;\nBEGIN;\nCOMMIT;\n", 3),
        ("BEGIN;\nCREATE INDEX CONCURRENTLY i ON a (id);\nCOMMIT;\n", 3),
    ],
)
@pytest.mark.fault("unbalanced `BEGIN`/`COMMIT` in a no-transaction file")
def test_unbalanced_blocks_in_a_no_transaction_file_are_refused(
    database_url: str, migrations_dir: Path, sql: str, line: int
) -> None:
    write_migration(migrations_dir, "1_a.up.sql", "-- migrate:no-transaction\n" + sql)
    refused = run(database_url, migrations_dir)
    assert refused.code == ExitCode.INVALID_MIGRATIONS, refused.stderr
    assert refused.finished["error"].startswith(f"1_a.up.sql: line {line}: ")
    assert relations(database_url) == set()


# -- 4. COPY, meta-commands, notices --------------------------------------------------------------

PG_DUMP_DATA = """--
-- PostgreSQL database dump
--
SET statement_timeout = 0;
SET client_encoding = 'UTF8';
SET standard_conforming_strings = on;
SELECT pg_catalog.set_config('search_path', '', false);

CREATE TABLE public.people (id integer NOT NULL, name text, note text);

COPY public.people (id, name, note) FROM stdin;
1\tO'Brien\t\\N
2\tTab\\there\tsemi; colon
3\tBack\\\\slash\t-- not a comment
\\.

ALTER TABLE ONLY public.people ADD CONSTRAINT people_pkey PRIMARY KEY (id);
"""


@pytest.mark.parametrize("no_transaction", [False, True])
@pytest.mark.fault("pg_dump `COPY ... FROM stdin` data (transactional, no-transaction)")
def test_pg_dump_copy_data_loads(
    database_url: str, migrations_dir: Path, no_transaction: bool
) -> None:
    header = "-- migrate:no-transaction\n" if no_transaction else ""
    write_migration(migrations_dir, "1_people.up.sql", header + PG_DUMP_DATA)
    write_migration(migrations_dir, "2_more.up.sql", "INSERT INTO people VALUES (4, 'x', NULL);")
    applied = run(database_url, migrations_dir)
    assert applied.code == 0, applied.stderr
    assert query(database_url, "SELECT id, name, note FROM people ORDER BY id") == [
        (1, "O'Brien", None),
        (2, "Tab\there", "semi; colon"),
        (3, "Back\\slash", "-- not a comment"),
        (4, "x", None),
    ]
    assert recorded(database_url) == [(1, "applied"), (2, "applied")]


@pytest.mark.fault("a bad `COPY` data line")
def test_bad_copy_data_names_its_line_and_leaves_nothing(
    database_url: str, migrations_dir: Path
) -> None:
    write_migration(
        migrations_dir,
        "1_people.up.sql",
        "CREATE TABLE people (id int);\nCOPY people (id) FROM stdin;\n1\n2\nthree\n\\.\n",
    )
    failed = run(database_url, migrations_dir)
    assert failed.code == ExitCode.MIGRATION_FAILED, failed.stderr
    assert "1_people.up.sql line 5" in failed.finished["error"]
    assert relations(database_url) == {"public.schema_migrations"}
    assert recorded(database_url) == []


@pytest.mark.parametrize(
    ("sql", "line", "words"),
    [
        ("CREATE TABLE a (id int);\nCOPY a TO STDOUT;", 2, "TO STDOUT"),
        ("CREATE TABLE a (id int);\nCOPY a FROM stdin;\n", 2, "no end to its data"),
        ("CREATE TABLE a (id int);\nCOPY a FROM stdin;\n1\n2\n", 2, "no end to its data"),
        ("CREATE TABLE a (id int);\n\\i other.sql\nSELECT 1;", 2, "psql meta-command"),
        ("\\set ON_ERROR_STOP on\nCREATE TABLE a (id int);", 1, "psql meta-command"),
    ],
)
@pytest.mark.fault("psql meta-commands, `COPY TO STDOUT`, `COPY` data without `\\.`")
def test_what_only_psql_can_run_is_refused_before_anything_runs(
    database_url: str, migrations_dir: Path, sql: str, line: int, words: str
) -> None:
    write_migration(migrations_dir, "1_a.up.sql", sql)
    refused = run(database_url, migrations_dir)
    assert refused.code == ExitCode.INVALID_MIGRATIONS, refused.stderr
    error = refused.finished["error"]
    assert error.startswith(f"1_a.up.sql: line {line}: "), error
    assert words in error
    assert relations(database_url) == set()


def test_notices_of_a_migration_are_logged(database_url: str, migrations_dir: Path) -> None:
    write_migration(
        migrations_dir,
        "1_data.up.sql",
        "DO $$ BEGIN RAISE NOTICE 'moved % rows', 42; RAISE WARNING 'check the totals'; END $$;",
    )
    applied = run(database_url, migrations_dir)
    assert applied.code == 0, applied.stderr
    notices = [e for e in applied.events if e["event"] == "migration.notice"]
    assert [(n["severity"], n["notice"], n["version"], n["file"]) for n in notices] == [
        ("NOTICE", "moved 42 rows", 1, "1_data.up.sql"),
        ("WARNING", "check the totals", 1, "1_data.up.sql"),
    ]
    assert notices[1]["log.level"] == "WARNING"


# -- 5. large files are streamed ------------------------------------------------------------------


@pytest.mark.fault("a file over 1 MiB streamed, failing near its end")
def test_a_large_file_with_copy_data_streams_and_names_a_late_line(
    database_url: str, migrations_dir: Path
) -> None:
    rows = 60_000  # a little over 1 MiB: read in pieces, not sent as one query
    lines = [
        "BEGIN;",
        "CREATE TABLE items (id int PRIMARY KEY, label text);",
        "COPY items (id, label) FROM stdin;",
    ]
    lines += [f"{i}\tlabel number {i:08d}" for i in range(rows)]
    lines += ["\\.", *(f"INSERT INTO items VALUES ({rows + i}, 'row');" for i in range(2_000))]
    good = "\n".join([*lines, "COMMIT;", ""])
    assert len(good) > 1 << 20
    write_migration(migrations_dir, "1_items.up.sql", good)
    applied = run(database_url, migrations_dir)
    assert applied.code == 0, applied.stderr
    assert query(database_url, "SELECT count(*) FROM items") == [(rows + 2_000,)]
    applied.event("migration.transaction_wrapper_ignored")

    bad = "\n".join([*lines, "INSERT INTO items VALUES (0, 'duplicate');", "COMMIT;", ""])
    write_migration(migrations_dir, "2_again.up.sql", bad.replace("items", "items2"))
    failed = run(database_url, migrations_dir)
    assert failed.code == ExitCode.MIGRATION_FAILED, failed.stderr
    assert f"2_again.up.sql line {len(lines) + 1}" in failed.finished["error"]
    assert "public.items2" not in relations(database_url)
    assert recorded(database_url) == [(1, "applied")]


# -- 6. nothing skipped in silence ----------------------------------------------------------------


@pytest.mark.fault("a dangling symbolic link, then a symbolic link loop")
def test_a_dangling_symlink_or_a_loop_is_refused(database_url: str, migrations_dir: Path) -> None:
    write_migration(migrations_dir, "1_a.up.sql", "CREATE TABLE a (id int);")
    (migrations_dir / "2_b.up.sql").symlink_to(migrations_dir / "gone.sql")
    dangling = run(database_url, migrations_dir)
    assert dangling.code == ExitCode.INVALID_MIGRATIONS, dangling.stderr
    assert "2_b.up.sql: a symbolic link to" in dangling.finished["error"]
    assert "does not exist" in dangling.finished["error"]
    (migrations_dir / "2_b.up.sql").unlink()
    (migrations_dir / "2_b.up.sql").symlink_to(migrations_dir / "2_b.up.sql")
    loop = run(database_url, migrations_dir)
    assert loop.code == ExitCode.INVALID_MIGRATIONS, loop.stderr
    assert "2_b.up.sql: a symbolic link loop" in loop.finished["error"]
    assert relations(database_url) == set()


@pytest.mark.parametrize(
    ("name", "right"),
    [("1_a.up.SQL", "1_a.up.sql"), ("1_a.UP.sql", "1_a.up.sql"), ("1_a.Down.Sql", "1_a.down.sql")],
)
def test_a_suffix_in_the_wrong_case_is_refused_with_the_right_name(
    database_url: str, migrations_dir: Path, name: str, right: str
) -> None:
    write_migration(migrations_dir, name, "CREATE TABLE a (id int);")
    refused = run(database_url, migrations_dir)
    assert refused.code == ExitCode.INVALID_MIGRATIONS, refused.stderr
    assert f"rename it to {right}" in refused.finished["error"]


def test_an_empty_directory_is_refused_unless_allowed(
    database_url: str, migrations_dir: Path
) -> None:
    (migrations_dir / "README.md").write_text("nothing here")
    for args in (("up",), ("status",), ("validate", "--offline")):
        refused = run(database_url, migrations_dir, *args)
        assert refused.code == ExitCode.INVALID_MIGRATIONS, refused.stderr
        assert f"no migration files in {migrations_dir}" in refused.finished["error"]
    allowed = run(database_url, migrations_dir, "up", "--allow-empty")
    assert allowed.code == 0, allowed.stderr
    assert run(database_url, migrations_dir, ALLOW_EMPTY="true").code == 0


# -- 7. any server encoding -----------------------------------------------------------------------


@pytest.mark.parametrize("encoding", ["SQL_ASCII", "LATIN1"])
@pytest.mark.fault("`SQL_ASCII` and `LATIN1` databases")
def test_a_database_in_another_encoding_works_twice(
    server_url: str, migrations_dir: Path, encoding: str
) -> None:
    name = f"test_{encoding.lower()}_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(server_url, autocommit=True) as admin:
        admin.execute(
            f"CREATE DATABASE {name} TEMPLATE template0 ENCODING '{encoding}' "
            "LC_COLLATE 'C' LC_CTYPE 'C'".encode()
        )
    try:
        url = make_conninfo("", **{**conninfo_to_dict(server_url), "dbname": name})
        write_migration(
            migrations_dir,
            "1_a.up.sql",
            "CREATE TABLE café (name text);\nINSERT INTO café VALUES ('crème');",
        )
        first = run(url, migrations_dir)
        assert first.code == 0, first.stderr
        again = run(url, migrations_dir)
        assert again.code == 0, again.stderr
        assert again.finished["applied"] == []
        status = run(url, migrations_dir, "status", "--json")
        assert status.code == 0, status.stderr
    finally:
        with psycopg.connect(server_url, autocommit=True) as admin:
            admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)".encode())


def test_the_runner_s_own_url_wins(database_url: str, migrations_dir: Path) -> None:
    write_migration(migrations_dir, "1_a.up.sql", "CREATE TABLE a (id int);")
    env = runner_env(None, migrations_dir)
    env["DATABASE_URL"] = "postgresql://nobody@127.0.0.1:1/nowhere"
    env["MIGRATION_DATABASE_URL"] = database_url
    applied = run_entrypoint("up", env=env)
    assert applied.code == 0, applied.stderr
    assert relations(database_url) == {"public.schema_migrations", "public.a"}


@pytest.mark.fault("a real pg_dump of a database (`\\restrict`, COPY, BEGIN ATOMIC, set_config)")
def test_a_pg_dump_of_a_database_applies_as_a_migration(
    server_url: str, database_url: str, migrations_dir: Path
) -> None:
    bindir = find_bindir()
    pg_dump = shutil.which("pg_dump") or (str(bindir / "pg_dump") if bindir else None)
    if pg_dump is None:
        pytest.skip("no pg_dump on this machine")
    source = f"dump_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(server_url, autocommit=True) as admin:
        admin.execute(f"CREATE DATABASE {source}".encode())
    try:
        source_url = make_conninfo("", **{**conninfo_to_dict(server_url), "dbname": source})
        query(
            source_url,
            "CREATE TABLE people (id int PRIMARY KEY, name text, note text);"
            "INSERT INTO people VALUES (1, 'O''Brien', E'tab\\there'), (2, 'Zoë', NULL);"
            "CREATE INDEX people_name ON people (name);"
            "CREATE FUNCTION two() RETURNS int LANGUAGE sql BEGIN ATOMIC SELECT 1; SELECT 2; END;",
        )
        dump = subprocess.run(
            [pg_dump, "--no-owner", "-d", source_url], capture_output=True, text=True, check=True
        ).stdout
    finally:
        with psycopg.connect(server_url, autocommit=True) as admin:
            admin.execute(f"DROP DATABASE IF EXISTS {source} WITH (FORCE)".encode())
    write_migration(migrations_dir, "1_dump.up.sql", dump)
    applied = run(database_url, migrations_dir)
    assert applied.code == 0, applied.stderr
    assert query(database_url, "SELECT id, name, note FROM people ORDER BY id") == [
        (1, "O'Brien", "tab\there"),
        (2, "Zoë", None),
    ]
    assert query(database_url, "SELECT two()") == [(2,)]
    assert recorded(database_url) == [(1, "applied")]


@pytest.mark.parametrize("how", ["no-transaction", "streamed"])
def test_a_typo_that_is_not_a_keyword_fails_instead_of_being_skipped(
    database_url: str, migrations_dir: Path, how: str
) -> None:
    """`SELEC 1` starts with no keyword, which PostgreSQL's lexer-based split leaves out: run
    statement by statement, it would be skipped and the file recorded as applied."""
    head = "-- migrate:no-transaction\n" if how == "no-transaction" else ""
    padding = (
        ""
        if how == "no-transaction"
        else "".join(f"INSERT INTO a VALUES ({i});\n" for i in range(60_000))
    )  # over 1 MiB: streamed in batches
    sql = f"{head}CREATE TABLE a (id int);\n{padding}SELEC 1;\nCREATE TABLE b (id int);\n"
    write_migration(migrations_dir, "1_typo.up.sql", sql)
    done = run(database_url, migrations_dir)
    assert done.code == ExitCode.MIGRATION_FAILED, done.stderr
    typo_line = sql.count("\n", 0, sql.index("SELEC 1")) + 1
    assert f"1_typo.up.sql line {typo_line}" in done.stderr
    assert "public.b" not in relations(database_url)
    if how == "streamed":
        assert "public.a" not in relations(database_url)
