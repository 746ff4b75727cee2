"""plan --locks: the table lock each statement takes, from PostgreSQL's documentation, checked
against what pg_locks shows while the statement holds it."""

from __future__ import annotations

import contextlib
import hashlib
import json
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field

import psycopg
import pytest

from runner.locks import (
    NO_TRANSACTION,
    ONE_TRANSACTION,
    Effect,
    LockMode,
    TableLock,
    TableSize,
    estimate,
    lock_plan,
    render_text,
    statement_locks,
    tables_of,
    to_json,
)
from runner.planner import MigrationFile
from runner.sqlscript import CopyData, read_units

unit = pytest.mark.unit

AS, RS, RE = LockMode.ACCESS_SHARE, LockMode.ROW_SHARE, LockMode.ROW_EXCLUSIVE
SUE, SHARE = LockMode.SHARE_UPDATE_EXCLUSIVE, LockMode.SHARE
SRE, EX, AE = LockMode.SHARE_ROW_EXCLUSIVE, LockMode.EXCLUSIVE, LockMode.ACCESS_EXCLUSIVE
NO, MAYBE, YES = Effect.NO, Effect.MAYBE, Effect.YES


def locks_of(sql: str) -> list[TableLock]:
    chunks = iter((sql,))
    (unit,) = read_units(lambda _size: next(chunks, ""))
    return statement_locks(unit.statement if isinstance(unit, CopyData) else unit)


def migration(filename: str, sql: str) -> MigrationFile:
    body = sql.encode()
    return MigrationFile(filename, hashlib.sha256(body).hexdigest(), body)


# -- the lock modes ----------------------------------------------------------------------------


@unit
def test_the_conflict_table_is_symmetric_and_ordered_as_postgresql_numbers_the_modes() -> None:
    for mode in LockMode:
        for other in LockMode:
            assert mode.conflicts_with(other) == other.conflicts_with(mode), (mode, other)
    assert [mode.pg_locks for mode in LockMode] == [
        "AccessShareLock",
        "RowShareLock",
        "RowExclusiveLock",
        "ShareUpdateExclusiveLock",
        "ShareLock",
        "ShareRowExclusiveLock",
        "ExclusiveLock",
        "AccessExclusiveLock",
    ]
    assert SRE.sql == "SHARE ROW EXCLUSIVE"
    assert [mode for mode in LockMode if mode.conflicts_with(mode)] == [SUE, SRE, EX, AE]


@unit
@pytest.mark.parametrize(
    ("mode", "blocks"),
    [
        (AS, ("DDL",)),
        (RS, ("DDL",)),
        (RE, ("DDL",)),
        (SUE, ("VACUUM/ANALYZE", "DDL")),
        (SHARE, ("INSERT/UPDATE/DELETE", "VACUUM/ANALYZE", "DDL")),
        (SRE, ("INSERT/UPDATE/DELETE", "VACUUM/ANALYZE", "DDL")),
        (EX, ("INSERT/UPDATE/DELETE", "VACUUM/ANALYZE", "DDL")),
        (AE, ("SELECT", "INSERT/UPDATE/DELETE", "VACUUM/ANALYZE", "DDL")),
    ],
)
def test_what_each_mode_blocks(mode: LockMode, blocks: tuple[str, ...]) -> None:
    assert mode.blocks == blocks


# -- one statement -----------------------------------------------------------------------------

# (statement, [(table, mode, rewrite, scan)]): PostgreSQL 15's documentation and source.
EXPECTED: list[tuple[str, list[tuple[str, LockMode, Effect, Effect]]]] = [
    ("CREATE TABLE c (id int)", []),
    ("CREATE TABLE c (id int, pid int REFERENCES app.p (id))", [("app.p", SRE, NO, NO)]),
    ("CREATE TABLE c (pid int, FOREIGN KEY (pid) REFERENCES p)", [("p", SRE, NO, NO)]),
    ("CREATE TABLE pt2 PARTITION OF pt FOR VALUES IN (2)", [("pt", AE, NO, NO)]),
    ("CREATE TABLE c () INHERITS (t)", [("t", SUE, NO, NO)]),
    ("CREATE INDEX i ON t (a)", [("t", SHARE, NO, YES)]),
    ("CREATE UNIQUE INDEX CONCURRENTLY i ON s.t (a)", [("s.t", SUE, NO, YES)]),
    ("DROP INDEX i", [("i", AE, NO, NO)]),
    ("DROP INDEX CONCURRENTLY IF EXISTS s.i", [("s.i", SUE, NO, NO)]),
    ("ALTER TABLE t ADD COLUMN c int", [("t", AE, NO, NO)]),
    ("ALTER TABLE t ADD COLUMN c int NOT NULL DEFAULT 0", [("t", AE, NO, NO)]),
    ("ALTER TABLE t ADD COLUMN c timestamptz DEFAULT now()", [("t", AE, NO, NO)]),
    ("ALTER TABLE t ADD COLUMN c uuid DEFAULT gen_random_uuid()", [("t", AE, YES, NO)]),
    ("ALTER TABLE t ADD COLUMN c int DEFAULT my_function()", [("t", AE, MAYBE, NO)]),
    ("ALTER TABLE t ADD COLUMN c bigserial", [("t", AE, YES, NO)]),
    ("ALTER TABLE t ADD COLUMN c int GENERATED ALWAYS AS (a * 2) STORED", [("t", AE, YES, NO)]),
    ("ALTER TABLE t ADD COLUMN c int CHECK (c > 0)", [("t", AE, NO, YES)]),
    ("ALTER TABLE t ADD COLUMN q int REFERENCES p", [("t", AE, NO, NO), ("p", SRE, NO, NO)]),
    ("ALTER TABLE t ADD COLUMN q int DEFAULT 1 REFERENCES p", [
        ("t", AE, NO, YES), ("p", SRE, NO, MAYBE)
    ]),
    ("ALTER TABLE t DROP COLUMN b", [("t", AE, NO, NO)]),
    ("ALTER TABLE t ALTER COLUMN a TYPE bigint", [("t", AE, MAYBE, NO)]),
    ("ALTER TABLE t ALTER COLUMN a SET DEFAULT 0", [("t", AE, NO, NO)]),
    ("ALTER TABLE t ALTER COLUMN a DROP DEFAULT", [("t", AE, NO, NO)]),
    ("ALTER TABLE t ALTER COLUMN a SET NOT NULL", [("t", AE, NO, MAYBE)]),
    ("ALTER TABLE t ALTER COLUMN a DROP NOT NULL", [("t", AE, NO, NO)]),
    ("ALTER TABLE t ADD CONSTRAINT c CHECK (a > 0)", [("t", AE, NO, YES)]),
    ("ALTER TABLE t ADD CONSTRAINT c CHECK (a > 0) NOT VALID", [("t", AE, NO, NO)]),
    ("ALTER TABLE t ADD CONSTRAINT c UNIQUE (a)", [("t", AE, NO, YES)]),
    ("ALTER TABLE t ADD PRIMARY KEY (id)", [("t", AE, NO, YES)]),
    ("ALTER TABLE t ADD CONSTRAINT c UNIQUE USING INDEX i", [("t", AE, NO, NO)]),
    (
        "ALTER TABLE t ADD CONSTRAINT f FOREIGN KEY (pid) REFERENCES p (id)",
        [("t", SRE, NO, YES), ("p", SRE, NO, MAYBE)],
    ),
    (
        "ALTER TABLE t ADD CONSTRAINT f FOREIGN KEY (pid) REFERENCES s.p NOT VALID",
        [("t", SRE, NO, NO), ("s.p", SRE, NO, NO)],
    ),
    ("ALTER TABLE t VALIDATE CONSTRAINT f", [("t", SUE, NO, YES)]),
    ("ALTER TABLE t RENAME COLUMN a TO z", [("t", AE, NO, NO)]),
    ("ALTER TABLE t RENAME TO u", [("t", AE, NO, NO)]),
    ("ALTER TABLE t ALTER COLUMN a SET STATISTICS 500", [("t", SUE, NO, NO)]),
    ("ALTER TABLE t SET (fillfactor = 70, autovacuum_enabled = off)", [("t", SUE, NO, NO)]),
    ("ALTER TABLE t SET (fillfactor = 70, user_catalog_table = true)", [("t", AE, NO, NO)]),
    ("ALTER TABLE t RESET (fillfactor)", [("t", SUE, NO, NO)]),
    (
        "ALTER TABLE t ALTER COLUMN a SET STATISTICS 100, ADD COLUMN c int",
        [("t", AE, NO, NO)],
    ),
    (
        "ALTER TABLE pt ATTACH PARTITION pt2 FOR VALUES IN (2)",
        [("pt", SUE, NO, NO), ("pt2", AE, NO, MAYBE)],
    ),
    ("ALTER TABLE pt DETACH PARTITION pt1", [("pt", AE, NO, NO), ("pt1", AE, NO, NO)]),
    (
        "ALTER TABLE pt DETACH PARTITION pt1 CONCURRENTLY",
        [("pt", SUE, NO, NO), ("pt1", AE, NO, NO)],
    ),
    ("DROP TABLE t, s.u", [("t", AE, NO, NO), ("s.u", AE, NO, NO)]),
    ("DROP TRIGGER tr ON s.t", [("s.t", AE, NO, NO)]),
    ("DROP FUNCTION f", []),
    ("CREATE POLICY own ON t USING (a > 0)", [("t", AE, NO, NO)]),
    ("CREATE OR REPLACE VIEW v AS SELECT * FROM t", [("v", AE, NO, NO), ("t", AS, NO, NO)]),
    ("TRUNCATE t", [("t", AE, NO, NO)]),
    ("VACUUM FULL t", [("t", AE, YES, NO)]),
    ("VACUUM (VERBOSE) t", [("t", SUE, NO, YES)]),
    ("ANALYZE t", [("t", SUE, NO, NO)]),
    ("CLUSTER t USING i", [("t", AE, YES, NO)]),
    ("REINDEX TABLE t", [("t", SHARE, NO, YES)]),
    ("REINDEX INDEX i", [("i", SHARE, NO, YES)]),
    ("REINDEX TABLE CONCURRENTLY t", [("t", SUE, NO, YES)]),
    ("LOCK TABLE t", [("t", AE, NO, NO)]),
    ("LOCK t, p IN SHARE ROW EXCLUSIVE MODE", [("t", SRE, NO, NO), ("p", SRE, NO, NO)]),
    ("INSERT INTO t (id) VALUES (1)", [("t", RE, NO, NO)]),
    ("INSERT INTO t (id) SELECT id FROM p", [("t", RE, NO, NO), ("p", AS, NO, MAYBE)]),
    ("UPDATE t SET a = 1 WHERE id = 1", [("t", RE, NO, MAYBE)]),
    ("UPDATE t SET a = 1", [("t", RE, NO, YES)]),
    ("UPDATE t SET a = p.id FROM p WHERE p.id = t.pid", [
        ("t", RE, NO, MAYBE), ("p", AS, NO, MAYBE)
    ]),
    ("DELETE FROM t USING p WHERE p.id = t.pid", [("t", RE, NO, MAYBE), ("p", AS, NO, MAYBE)]),
    ("DELETE FROM t", [("t", RE, NO, YES)]),
    (
        "MERGE INTO t USING p ON t.id = p.id WHEN MATCHED THEN UPDATE SET a = 0",
        [("t", RE, NO, MAYBE), ("p", AS, NO, MAYBE)],
    ),
    ("SELECT * FROM t JOIN s.p ON p.id = t.pid", [("t", AS, NO, MAYBE), ("s.p", AS, NO, MAYBE)]),
    ("SELECT * FROM t, p FOR UPDATE OF t", [("t", RS, NO, MAYBE), ("p", AS, NO, MAYBE)]),
    ("SELECT * FROM t AS x, p FOR SHARE OF x", [("t", RS, NO, MAYBE), ("p", AS, NO, MAYBE)]),
    ("SELECT * FROM t, p FOR UPDATE", [("t", RS, NO, MAYBE), ("p", RS, NO, MAYBE)]),
    (
        "WITH gone AS (DELETE FROM t RETURNING id) SELECT * FROM gone JOIN p USING (id)",
        [("t", RE, NO, YES), ("p", AS, NO, MAYBE)],
    ),
    ("SELECT * INTO c FROM t", [("t", AS, NO, MAYBE)]),
    ("COPY t FROM stdin;\n1\n\\.\n", [("t", RE, NO, NO)]),
    ("COPY t TO stdout", [("t", AS, NO, YES)]),
    ("CREATE TRIGGER tr BEFORE INSERT ON t FOR EACH ROW EXECUTE FUNCTION f()", [
        ("t", SRE, NO, NO)
    ]),
    ("CREATE MATERIALIZED VIEW m AS SELECT * FROM t", [("t", AS, NO, MAYBE)]),
    ("CREATE MATERIALIZED VIEW m AS SELECT * FROM t WITH NO DATA", [("t", AS, NO, NO)]),
    ("REFRESH MATERIALIZED VIEW m", [("m", AE, YES, NO)]),
    ("REFRESH MATERIALIZED VIEW CONCURRENTLY m", [("m", EX, NO, YES)]),
    ("CREATE VIEW v AS SELECT * FROM t", [("t", AS, NO, NO)]),
    ("COMMENT ON TABLE s.t IS 'x'", [("s.t", SUE, NO, NO)]),
    ("COMMENT ON COLUMN s.t.a IS 'x'", [("s.t", SUE, NO, NO)]),
    ("COMMENT ON CONSTRAINT c ON t IS 'x'", [("t", SUE, NO, NO)]),
    ("CREATE STATISTICS st ON a, b FROM t", [("t", SUE, NO, NO)]),
    ('ALTER TABLE "Order" ADD COLUMN c int', [('"Order"', AE, NO, NO)]),
    ('SELECT * FROM "user", public."select", "a""b"', [
        ('"user"', AS, NO, MAYBE), ('public."select"', AS, NO, MAYBE), ('"a""b"', AS, NO, MAYBE)
    ]),
    ("CREATE FUNCTION f() RETURNS int LANGUAGE sql AS 'SELECT 1'", []),
    ("SET lock_timeout = '5s'", []),
]  # fmt: skip


@unit
@pytest.mark.parametrize(("sql", "expected"), EXPECTED, ids=[sql for sql, _ in EXPECTED])
def test_statement_locks(sql: str, expected: list[tuple[str, LockMode, Effect, Effect]]) -> None:
    found = [(lock.table, lock.mode, lock.rewrite, lock.scan) for lock in locks_of(sql)]
    assert found == expected


@unit
def test_an_index_named_alone_means_its_table() -> None:
    (drop,) = locks_of("DROP INDEX CONCURRENTLY s.i")
    assert drop.of_index
    assert not any(lock.of_index for lock in locks_of("CREATE INDEX i ON t (a)"))


@unit
def test_every_lock_says_why_in_a_few_words() -> None:
    for sql, _ in EXPECTED:
        for lock in locks_of(sql):
            if lock.mode > RE or lock.rewrite or lock.scan is YES:
                assert lock.note, sql
    (column,) = locks_of("ALTER TABLE t ADD COLUMN c int DEFAULT 0")
    assert "no rewrite" in column.note
    (validate,) = locks_of("ALTER TABLE t VALIDATE CONSTRAINT f")
    assert "ROW SHARE" in validate.note


@unit
def test_what_cannot_be_told_from_the_text_is_said_so() -> None:
    plan = lock_plan([migration("1_x.up.sql", "DO $$ BEGIN PERFORM 1; END $$;\nSELECT 1 +;")])[0]
    do, refused = plan.statements
    assert do.not_analysed == "DO is not analysed"
    assert refused.not_analysed.startswith("PostgreSQL's parser refuses it")
    assert all(not s.locks for s in plan.statements)


# -- a file ------------------------------------------------------------------------------------


@unit
def test_in_one_transaction_locks_accumulate_until_commit() -> None:
    sql = (
        "BEGIN;\n"
        "SELECT count(*) FROM accounts;\n"
        "CREATE TABLE audit (id int);\n"
        "CREATE INDEX audit_id ON audit (id);\n"
        "ALTER TABLE users ADD COLUMN email text;\n"
        "CREATE INDEX users_email ON users (email);\n"
        "UPDATE users SET email = '' WHERE email IS NULL;\n"
        "ALTER TABLE accounts ADD COLUMN note text;\n"
        "DO $$ BEGIN PERFORM 1; END $$;\n"
        "COMMIT;\n"
    )
    (plan,) = lock_plan([migration("000002_email.up.sql", sql)])
    assert plan.transaction == ONE_TRANSACTION
    assert [statement.line for statement in plan.statements] == [2, 3, 4, 5, 6, 7, 8, 9]
    (transaction,) = plan.transactions
    assert (transaction.first_line, transaction.last_line) == (2, 9)
    assert transaction.unknown_lines == (9,)
    held = {lock.table: lock for lock in transaction.held}
    assert held["users"].mode is AE
    assert held["users"].modes == (RE, SHARE, AE)
    assert held["users"].blocks == ("SELECT", "INSERT/UPDATE/DELETE", "VACUUM/ANALYZE", "DDL")
    assert (held["users"].since_line, held["users"].mode_line) == (5, 5)
    assert (held["accounts"].since_line, held["accounts"].mode_line) == (2, 8)
    assert held["audit"].new
    assert not held["users"].new
    text = render_text([plan], {})
    assert "accounts: ACCESS EXCLUSIVE from line 8 (locked from line 2)" in text
    assert "audit: created here" in text
    assert "and whatever the statements at lines 9 lock" in text


@unit
def test_without_a_transaction_only_begin_commit_blocks_hold_locks_past_a_statement() -> None:
    sql = (
        "-- migrate:no-transaction\n"
        "CREATE INDEX CONCURRENTLY users_email ON users (email);\n"
        "BEGIN;\n"
        "LOCK TABLE users IN SHARE MODE;\n"
        "UPDATE accounts SET a = 1 WHERE id = 2;\n"
        "COMMIT;\n"
        "ANALYZE users;\n"
    )
    (plan,) = lock_plan([migration("000003_index.up.sql", sql)])
    assert plan.transaction == NO_TRANSACTION
    assert [statement.line for statement in plan.statements] == [2, 3, 4, 5, 6, 7]
    (block,) = plan.transactions
    assert (block.first_line, block.last_line) == (3, 6)
    assert {(lock.table, lock.mode) for lock in block.held} == {("users", SHARE), ("accounts", RE)}
    assert "no transaction: each statement's locks end with it" in render_text([plan], {})


@unit
def test_a_seed_file_of_many_inserts_is_one_entry() -> None:
    sql = "".join(f"INSERT INTO t VALUES ({n});\n" for n in range(1000)) + "ANALYZE t;\n"
    (plan,) = lock_plan([migration("000004_seed.up.sql", sql)])
    inserts, analyze = plan.statements
    assert (inserts.line, inserts.last_line, inserts.count) == (1, 1000, 1000)
    assert inserts.sql == "INSERT INTO t VALUES (0)"
    assert analyze.line == 1001


@unit
def test_a_file_that_cannot_be_split_says_why() -> None:
    (plan,) = lock_plan([migration("000005_bad.up.sql", "SELECT 'unterminated;\n")])
    assert plan.problem
    assert not plan.statements


@unit
def test_text_and_json_show_modes_blocked_operations_effects_and_sizes() -> None:
    sql = (
        "ALTER TABLE users ADD COLUMN token uuid DEFAULT gen_random_uuid();\nDROP INDEX old_idx;\n"
    )
    plans = lock_plan([migration("000006_token.up.sql", sql)])
    sizes = {
        "users": TableSize("public.users", 1_200_000, 512 * 1024 * 1024),
        "old_idx": TableSize("public.orders", None, 8192),
    }
    assert tables_of(plans) == ["users", "old_idx"]
    text = render_text(plans, sizes)
    assert "000006_token.up.sql: one transaction" in text
    assert "line 1: ALTER TABLE users ADD COLUMN token uuid DEFAULT gen_random_uuid()" in text
    assert "users (~1,200,000 rows, 512 MB): ACCESS EXCLUSIVE" in text
    assert "blocks SELECT, INSERT/UPDATE/DELETE, VACUUM/ANALYZE, DDL" in text
    assert "rewrites it" in text
    assert "table of index old_idx (rows unknown (never analyzed), 8192 bytes)" in text
    assert "held until COMMIT (lines 1-2):" in text
    document = json.loads(json.dumps(to_json(plans, sizes)))
    (file,) = document["files"]
    first = file["statements"][0]["locks"][0]
    assert first == {
        "table": "users",
        "of_index": False,
        "mode": "ACCESS EXCLUSIVE",
        "pg_locks_mode": "AccessExclusiveLock",
        "blocks": ["SELECT", "INSERT/UPDATE/DELETE", "VACUUM/ANALYZE", "DDL"],
        "rewrite": "yes",
        "scan": "no",
        "note": first["note"],
    }
    assert file["transactions"][0]["held"][0]["mode"] == "ACCESS EXCLUSIVE"
    assert document["tables"]["old_idx"] == {
        "table": "public.orders",
        "rows": None,
        "total_bytes": 8192,
    }


# -- against the server ------------------------------------------------------------------------


def test_estimate_reads_rows_and_size_from_the_catalog(database_url: str) -> None:
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(
            "CREATE SCHEMA app;"
            "CREATE TABLE app.t (id int PRIMARY KEY, body text);"
            "INSERT INTO app.t SELECT g, repeat('x', 100) FROM generate_series(1, 1000) AS g;"
            "CREATE TABLE pt (k int) PARTITION BY LIST (k);"
            "CREATE TABLE pt1 PARTITION OF pt FOR VALUES IN (1);"
            "INSERT INTO pt SELECT 1 FROM generate_series(1, 10);"
        )
        before = estimate(conn, ["app.t", "missing", "pt"])
        assert set(before) == {"app.t", "pt"}
        assert before["app.t"].rows is None  # never analyzed
        assert (before["app.t"].total_bytes or 0) > 100_000
        conn.execute("ANALYZE app.t; ANALYZE pt")
        after = estimate(conn, ["app.t", "app.t_pkey", "pt"])
        assert after["app.t"] == TableSize("app.t", 1000, after["app.t"].total_bytes)
        assert after["app.t_pkey"].table == "app.t"
        assert after["pt"].rows == 10
        assert conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE


def test_estimate_does_not_wait_for_a_table_locked_by_a_migration(database_url: str) -> None:
    with (
        psycopg.connect(database_url, autocommit=True) as conn,
        psycopg.connect(database_url) as migration_session,
    ):
        conn.execute("CREATE TABLE t (id int); ANALYZE t")
        migration_session.execute("LOCK TABLE t")
        started = time.monotonic()
        sizes = estimate(conn, ["t"])
        assert time.monotonic() - started < 5
        assert sizes["t"] == TableSize("t", 0, None)


# Each case runs in a schema of its own on top of BASE and its own setup. `also`: locks that
# PostgreSQL takes on tables the statement does not name (pg_locks mode names).
BASE = """
CREATE TABLE p (id int PRIMARY KEY);
CREATE TABLE t (id int, a int, b text, pid int);
INSERT INTO p SELECT generate_series(1, 3);
INSERT INTO t SELECT g, g, 'x', g FROM generate_series(1, 3) AS g;
"""
INDEX = "CREATE INDEX t_a ON t (a);"
PARTITIONED = "CREATE TABLE pt (k int) PARTITION BY LIST (k);"
PARTITIONED += "CREATE TABLE pt1 PARTITION OF pt FOR VALUES IN (1); INSERT INTO pt VALUES (1);"
MATVIEW = "CREATE MATERIALIZED VIEW m AS SELECT id, a FROM t; CREATE UNIQUE INDEX m_id ON m (id);"
FOREIGN_KEY = "ALTER TABLE t ADD CONSTRAINT t_pid FOREIGN KEY (pid) REFERENCES p (id);"
TRIGGER_FUNCTION = (
    "CREATE FUNCTION noop() RETURNS trigger LANGUAGE plpgsql AS $$BEGIN RETURN NEW; END$$;"
)
TRIGGER = "CREATE TRIGGER tr BEFORE INSERT ON t FOR EACH ROW EXECUTE FUNCTION noop();"


@dataclass(frozen=True)
class Case:
    statement: str
    setup: str = ""
    transaction: bool = True  # False: refused in a transaction block; seen waiting on a lock
    also: Mapping[str, str] = field(default_factory=dict)
    new_file: bool | None = None  # TRUNCATE and DROP change the table's file without a rewrite


CASES = [
    Case("CREATE TABLE c (id int)"),
    Case("CREATE TABLE c (id int, pid int REFERENCES p (id))"),
    Case("CREATE TABLE pt2 PARTITION OF pt FOR VALUES IN (2)", PARTITIONED),
    Case("CREATE TABLE c () INHERITS (t)"),
    Case("CREATE TABLE c (LIKE t)"),
    Case("CREATE INDEX t_a ON t (a)"),
    Case("CREATE INDEX CONCURRENTLY t_a ON t (a)", transaction=False),
    Case("DROP INDEX t_a", INDEX),
    Case("DROP INDEX CONCURRENTLY t_a", INDEX, transaction=False),
    Case("ALTER TABLE t ADD COLUMN c int"),
    Case("ALTER TABLE t ADD COLUMN c int DEFAULT 0"),
    Case("ALTER TABLE t ADD COLUMN c int NOT NULL DEFAULT 0"),
    Case("ALTER TABLE t ADD COLUMN c float8 DEFAULT random()"),
    Case("ALTER TABLE t ADD COLUMN c int CHECK (c > 0) DEFAULT 1"),
    Case("ALTER TABLE t ADD COLUMN q int REFERENCES p (id)"),
    Case("ALTER TABLE t ADD COLUMN q int DEFAULT 1 REFERENCES p (id)"),
    Case("ALTER TABLE t DROP COLUMN b"),
    Case("ALTER TABLE t ALTER COLUMN a TYPE bigint"),
    Case("ALTER TABLE t ALTER COLUMN a SET DEFAULT 0"),
    Case("ALTER TABLE t ALTER COLUMN a DROP DEFAULT", "ALTER TABLE t ALTER a SET DEFAULT 0;"),
    Case("ALTER TABLE t ALTER COLUMN a SET NOT NULL"),
    Case("ALTER TABLE t ALTER COLUMN a DROP NOT NULL", "ALTER TABLE t ALTER a SET NOT NULL;"),
    Case("ALTER TABLE t ADD CONSTRAINT t_a_check CHECK (a > 0)"),
    Case("ALTER TABLE t ADD CONSTRAINT t_a_check CHECK (a > 0) NOT VALID"),
    Case("ALTER TABLE t ADD CONSTRAINT t_a_key UNIQUE (a)"),
    Case("ALTER TABLE t ADD PRIMARY KEY (id)"),
    Case("ALTER TABLE t ADD UNIQUE USING INDEX t_a", "CREATE UNIQUE INDEX t_a ON t (a);"),
    Case("ALTER TABLE t ADD CONSTRAINT t_pid FOREIGN KEY (pid) REFERENCES p (id)"),
    Case("ALTER TABLE t ADD CONSTRAINT t_pid FOREIGN KEY (pid) REFERENCES p (id) NOT VALID"),
    Case(
        "ALTER TABLE t VALIDATE CONSTRAINT t_a_check",
        "ALTER TABLE t ADD CONSTRAINT t_a_check CHECK (a > 0) NOT VALID;",
    ),
    Case(
        "ALTER TABLE t VALIDATE CONSTRAINT t_pid",
        FOREIGN_KEY.replace(";", " NOT VALID;"),
        also={"p": "RowShareLock"},  # the referenced table: not named in the statement
    ),
    Case("ALTER TABLE t RENAME COLUMN b TO c"),
    Case("ALTER TABLE t RENAME TO u"),
    Case("ALTER TABLE t ALTER COLUMN a SET STATISTICS 500"),
    Case("ALTER TABLE t SET (fillfactor = 70, autovacuum_enabled = off)"),
    Case("ALTER TABLE t SET (user_catalog_table = true)"),
    Case("ALTER TABLE t RESET (fillfactor)"),
    Case("ALTER TABLE t ALTER COLUMN a SET STATISTICS 100, ADD COLUMN c int"),
    Case(
        "ALTER TABLE pt ATTACH PARTITION pt2 FOR VALUES IN (2)",
        PARTITIONED + "CREATE TABLE pt2 (k int);",
    ),
    Case("ALTER TABLE pt DETACH PARTITION pt1", PARTITIONED),
    Case("ALTER TABLE pt DETACH PARTITION pt1 CONCURRENTLY", PARTITIONED, transaction=False),
    Case("DROP TABLE t", new_file=True),
    Case("DROP TABLE t", FOREIGN_KEY, also={"p": "AccessExclusiveLock"}, new_file=True),
    Case("TRUNCATE t", new_file=True),
    Case("ALTER TABLE t DROP CONSTRAINT t_pid", FOREIGN_KEY, also={"p": "AccessExclusiveLock"}),
    Case("ALTER TABLE t DROP COLUMN pid", FOREIGN_KEY, also={"p": "AccessExclusiveLock"}),
    Case("DROP TRIGGER tr ON t", TRIGGER_FUNCTION + TRIGGER),
    Case("CREATE POLICY own ON t USING (a > 0)"),
    Case("VACUUM FULL t", transaction=False),
    Case("VACUUM t", transaction=False),
    Case("ANALYZE t"),
    Case("CLUSTER t USING t_a", INDEX),
    Case("REINDEX TABLE t", INDEX),
    Case("REINDEX INDEX t_a", INDEX),
    Case("REINDEX TABLE CONCURRENTLY t", INDEX, transaction=False),
    Case("LOCK TABLE t"),
    Case("LOCK t, p IN SHARE ROW EXCLUSIVE MODE"),
    Case("INSERT INTO t (id) VALUES (10)"),
    Case("INSERT INTO t (id) SELECT id FROM p"),
    Case("UPDATE t SET a = 0 WHERE id = 1"),
    Case("UPDATE t SET a = 0"),
    Case("UPDATE t SET a = p.id FROM p WHERE p.id = t.pid"),
    Case("DELETE FROM t WHERE id = 1"),
    Case("DELETE FROM t USING p WHERE p.id = t.pid"),
    Case("MERGE INTO t USING p ON t.id = p.id WHEN MATCHED THEN UPDATE SET a = 0"),
    Case("SELECT * FROM t JOIN p ON p.id = t.pid"),
    Case("SELECT * FROM t, p WHERE p.id = t.pid FOR UPDATE OF t"),
    Case(
        "CREATE TRIGGER tr BEFORE INSERT ON t FOR EACH ROW EXECUTE FUNCTION noop()",
        TRIGGER_FUNCTION,
    ),
    Case("CREATE MATERIALIZED VIEW mv AS SELECT * FROM t"),
    Case("REFRESH MATERIALIZED VIEW m", MATVIEW, also={"t": "AccessShareLock"}),
    Case("REFRESH MATERIALIZED VIEW CONCURRENTLY m", MATVIEW, also={"t": "AccessShareLock"}),
    Case("CREATE VIEW v AS SELECT * FROM t"),
    Case("CREATE OR REPLACE VIEW v AS SELECT * FROM t", "CREATE VIEW v AS SELECT * FROM t;"),
    Case("COMMENT ON TABLE t IS 'x'"),
    Case("COMMENT ON COLUMN t.a IS 'x'"),
    Case("CREATE STATISTICS st ON a, id FROM t"),
]


@dataclass
class Seen:
    """What the server did, for one table the case looks at."""

    held: set[LockMode] = field(default_factory=set)
    file_before: int | None = None
    file_after: int | None = None
    scans: int = 0


def test_pg_locks_shows_the_predicted_mode(database_url: str, subtests: pytest.Subtests) -> None:
    """Every statement kind, each in a schema of its own in one database: inside BEGIN, the
    strongest mode pg_locks shows on each table equals the prediction (and tables it does not
    name hold none); a predicted rewrite gives the table a new file, and a predicted scan
    shows in the transaction's sequential-scan count. Statements refused in a transaction
    block are seen waiting on a conflicting lock held by a third session."""
    with (
        psycopg.connect(database_url, autocommit=True) as admin,
        psycopg.connect(database_url, autocommit=True) as session,
    ):
        for number, case in enumerate(CASES):
            with subtests.test(msg=case.statement, setup=case.setup[:40]):
                schema = f"case_{number}"
                admin.execute(f"CREATE SCHEMA {schema}; SET search_path TO {schema}")
                admin.execute(BASE + case.setup)
                if case.transaction:
                    _in_a_transaction(admin, session, schema, case)
                else:
                    _waiting(admin, database_url, schema, case)


def _predicted(admin: psycopg.Connection, case: Case) -> dict[int, TableLock]:
    found = {}
    for lock in locks_of(case.statement):
        query = "SELECT coalesce((SELECT indrelid FROM pg_index WHERE indexrelid = r), r)::oid"
        row = admin.execute(f"{query} FROM to_regclass(%s) AS r", (lock.table,)).fetchone()
        assert row is not None, lock.table
        assert row[0] is not None, lock.table
        found[row[0]] = lock
    return found


def _tables(admin: psycopg.Connection, schema: str) -> dict[int, str]:
    rows = admin.execute(
        "SELECT oid, relname FROM pg_class WHERE relnamespace = %s::regnamespace "
        "AND relkind IN ('r', 'p', 'm', 'v')",
        (schema,),
    ).fetchall()
    return dict(rows)


def _in_a_transaction(
    admin: psycopg.Connection, session: psycopg.Connection, schema: str, case: Case
) -> None:
    predicted = _predicted(admin, case)
    tables = _tables(admin, schema)
    seen = {oid: Seen() for oid in tables}
    for oid, file in admin.execute(
        "SELECT oid, relfilenode FROM pg_class WHERE oid = ANY(%s)", (list(tables),)
    ):
        seen[oid].file_before = file
    session.execute(f"SET search_path TO {schema}")
    scans = "SELECT oid, pg_stat_get_xact_numscans(oid) FROM unnest(%s::oid[]) AS oid"
    try:
        session.execute("BEGIN")
        for oid, count in session.execute(scans, (list(tables),)):
            seen[oid].scans = -count
        session.execute(case.statement)
        for oid, mode in admin.execute(
            "SELECT relation, mode FROM pg_locks WHERE pid = %s AND locktype = 'relation' "
            "AND relation = ANY(%s)",
            (session.info.backend_pid, list(tables)),
        ):
            seen[oid].held.add(_mode(mode))
        for oid, count in session.execute(scans, (list(tables),)):
            seen[oid].scans += count
        for oid, file in session.execute(
            "SELECT oid, pg_relation_filenode(oid) FROM unnest(%s::oid[]) AS oid", (list(tables),)
        ):
            seen[oid].file_after = file
    finally:
        session.execute("ROLLBACK")
    for oid, name in tables.items():
        held = {mode.pg_locks for mode in seen[oid].held}
        strongest = max(seen[oid].held).pg_locks if held else None
        lock = predicted.get(oid)
        expected = lock.mode.pg_locks if lock else case.also.get(name)
        assert strongest == expected, f"{name}: pg_locks shows {sorted(held)}"
        if lock is not None and seen[oid].file_before:  # a partitioned table has no file
            _effects(name, lock, seen[oid], case)


def _effects(name: str, lock: TableLock, seen: Seen, case: Case) -> None:
    new_file = seen.file_after != seen.file_before
    if case.new_file is not None:
        assert new_file == case.new_file, name
    elif lock.rewrite is not Effect.MAYBE:
        assert new_file == (lock.rewrite is Effect.YES), f"{name}: rewrite {lock.rewrite.word}"
    if lock.rewrite is Effect.NO and lock.scan is not Effect.MAYBE and not case.new_file:
        assert (seen.scans > 0) == (lock.scan is Effect.YES), f"{name}: {seen.scans} scans"


def _mode(pg_locks: str) -> LockMode:
    (mode,) = [mode for mode in LockMode if mode.pg_locks == pg_locks]
    return mode


def _waiting(admin: psycopg.Connection, url: str, schema: str, case: Case) -> None:
    """For each predicted table in turn: a third session holds the weakest mode that conflicts
    with the prediction; the statement must wait on that table for exactly the predicted mode
    (a weaker one would not wait, a stronger or a different one shows as such). The waiting
    statement is then cancelled, which leaves the schema as it was."""
    options = f"-c search_path={schema}"
    for oid, lock in _predicted(admin, case).items():
        weakest = min(mode for mode in LockMode if mode.conflicts_with(lock.mode))
        with (
            psycopg.connect(url, options=options) as blocker,
            psycopg.connect(url, autocommit=True, options=options) as runner,
        ):
            blocker.execute(f"LOCK TABLE {_regclass(admin, oid)} IN {weakest.sql} MODE")
            thread = threading.Thread(target=_run_until_cancelled, args=(runner, case.statement))
            thread.start()
            try:
                waited = _wait_for_lock(admin, runner.info.backend_pid, oid)
            finally:
                admin.execute("SELECT pg_cancel_backend(%s)", (runner.info.backend_pid,))
                blocker.rollback()
                thread.join(timeout=30)
        assert waited == lock.mode.pg_locks, f"{lock.table}: waited for {waited}"


def _run_until_cancelled(conn: psycopg.Connection, statement: str) -> None:
    with contextlib.suppress(psycopg.errors.QueryCanceled):
        conn.execute(statement)


def _regclass(admin: psycopg.Connection, oid: int) -> str:
    row = admin.execute("SELECT %s::regclass::text", (oid,)).fetchone()
    assert row is not None
    return str(row[0])


def _wait_for_lock(admin: psycopg.Connection, pid: int, oid: int) -> str | None:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        row = admin.execute(
            "SELECT mode FROM pg_locks WHERE pid = %s AND relation = %s AND NOT granted",
            (pid, oid),
        ).fetchone()
        if row is not None:
            return str(row[0])
        time.sleep(0.01)
    return None
