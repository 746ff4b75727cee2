"""Fleets: many databases and schemas as one run (TARGETS_FILE, TARGETS_QUERY), placeholders,
concurrency, canaries, failure limits, exit-code order, shards, signals."""

from __future__ import annotations

import functools
import hashlib
import itertools
import json
import signal
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
import yaml
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from runner import cli, fleet, placeholders
from runner.config import TableName, from_env
from runner.errors import ConfigError, UnknownPlaceholder
from runner.exit_codes import SEVERITY, ExitCode, most_severe
from runner.lock import lock_key
from runner.planner import MigrationFile
from tests.conftest import (
    Run,
    RunnerProcess,
    poll_until,
    query,
    run_entrypoint,
    runner_env,
    runner_statements,
    write_migration,
)

ORDERS = "CREATE TABLE ${schema}.orders (id int PRIMARY KEY, region text DEFAULT '${region}');\n"
ITEMS = "CREATE TABLE ${schema}.items (order_id int REFERENCES ${schema}.orders);\n"


def write_targets(path: Path, entries: list[dict[str, Any]]) -> Path:
    path.write_text(yaml.safe_dump(entries), encoding="utf-8")
    return path


def schemas(names: list[str]) -> list[dict[str, Any]]:
    return [{"name": name, "schema": name} for name in names]


def fleet_up(database_url: str, migrations: Path, targets: Path, *args: str, **extra: str) -> Run:
    env = runner_env(database_url, migrations, TARGETS_FILE=str(targets), **extra)
    return run_entrypoint("up", *args, env=env)


def finished(run: Run) -> dict[str, dict[str, Any]]:
    """Each target's target.finished event, by name."""
    return {e["target"]: e for e in run.events if e.get("event") == "target.finished"}


def versions(url: str, table: str) -> list[int]:
    return [row[0] for row in query(url, f"SELECT version FROM {table} ORDER BY 1")]


def exists(url: str, name: str) -> bool:
    return query(url, "SELECT to_regclass(%s) IS NOT NULL", (name,))[0][0] is True


@pytest.fixture
def two_databases(server_url: str) -> Iterator[list[str]]:
    """Two more empty databases on the test server, dropped afterwards."""
    names = [f"fleet_{uuid.uuid4().hex[:12]}" for _ in range(2)]
    with psycopg.connect(server_url, autocommit=True) as admin:
        for name in names:
            admin.execute(f'CREATE DATABASE "{name}"'.encode())
    yield names
    with psycopg.connect(server_url, autocommit=True) as admin:
        for name in names:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'.encode())


def url_of(server_url: str, database: str) -> str:
    params = conninfo_to_dict(server_url)
    params["dbname"] = database
    return make_conninfo("", **params)


# -- schemas, databases, URLs, queries --------------------------------------------------------


def test_schema_targets_each_get_their_tables_tracking_table_and_lock(
    database_url: str, migrations_dir: Path, tmp_path: Path
) -> None:
    write_migration(migrations_dir, "1_orders.up.sql", ORDERS)
    write_migration(migrations_dir, "2_items.up.sql", ITEMS)
    targets = write_targets(tmp_path / "targets.yaml", schemas(["acme", "globex", "initech"]))
    run = fleet_up(database_url, migrations_dir, targets, MIGRATION_PLACEHOLDERS="region=eu")
    assert run.code == 0, run.stderr
    for tenant in ("acme", "globex", "initech"):
        assert exists(database_url, f"{tenant}.orders")
        assert exists(database_url, f"{tenant}.items")
        assert versions(database_url, f"{tenant}.schema_migrations") == [1, 2]
    query(database_url, "INSERT INTO globex.orders (id) VALUES (1)")
    assert query(database_url, "SELECT region FROM globex.orders") == [("eu",)]
    # One checksum across tenants: the file as written.
    written = hashlib.sha256(ORDERS.encode()).hexdigest()
    checksums = {
        row[0]
        for tenant in ("acme", "globex", "initech")
        for row in query(
            database_url, f"SELECT checksum FROM {tenant}.schema_migrations WHERE version = 1"
        )
    }
    assert checksums == {written}
    # Each schema's own lock: the key of its own tracking table.
    keys = {e["target"]: e["lock_key"] for e in run.events if e["event"] == "lock.acquired"}
    assert keys == {
        tenant: lock_key(TableName(tenant, "schema_migrations"))
        for tenant in ("acme", "globex", "initech")
    }
    ends = finished(run)
    assert {name: e["applied"] for name, e in ends.items()} == {
        "acme": [1, 2],
        "globex": [1, 2],
        "initech": [1, 2],
    }
    assert all(e["exit_code"] == 0 and e["duration_ms"] >= 0 for e in ends.values())
    # Every line of a target's work says whose it is, and `target` names nothing else.
    targeted = ("migration.", "lock.", "plan.", "tracking_table.", "target.")
    for entry in run.events:
        if entry["event"].startswith(targeted):
            assert entry.get("target") in ("acme", "globex", "initech"), entry
        if entry["event"] != "run.finished":
            assert entry.get("target", "acme") in ("acme", "globex", "initech"), entry
    connected = [e for e in run.events if e["event"] == "db.connected"]
    dbname = conninfo_to_dict(database_url)["dbname"]
    assert all(str(e["connection"]).endswith(f"/{dbname}") for e in connected), connected
    assert [e.get("target") for e in connected].count(None) == 1  # the main database's
    summary = run.event("fleet.finished")
    assert summary["outcomes"] == {"succeeded": 3}
    assert summary["migrations_applied"] == 6
    assert run.finished["fleet"]["outcomes"] == {"succeeded": 3}


def test_database_and_url_targets(
    database_url: str,
    server_url: str,
    migrations_dir: Path,
    tmp_path: Path,
    two_databases: list[str],
) -> None:
    write_migration(migrations_dir, "1_a.up.sql", "CREATE TABLE a (id int);")
    secret = tmp_path / "url"
    secret.write_text(url_of(server_url, two_databases[1]) + "\n")
    targets = write_targets(
        tmp_path / "targets.yaml",
        [
            {"name": "first", "database": two_databases[0]},
            {"name": "second", "url_file": "url", "migrations_table": "ops.migrations"},
        ],
    )
    run = fleet_up(database_url, migrations_dir, targets)
    assert run.code == 0, run.stderr
    first, second = (url_of(server_url, name) for name in two_databases)
    assert versions(first, "public.schema_migrations") == [1]
    assert versions(second, "ops.migrations") == [1]
    assert exists(first, "public.a")
    assert exists(second, "public.a")
    assert not exists(database_url, "public.a")  # the main database is not a target
    again = fleet_up(database_url, migrations_dir, targets)
    assert again.code == 0, again.stderr
    assert {e["outcome"] for e in finished(again).values()} == {"up_to_date"}


def test_targets_from_a_query_on_the_main_database(database_url: str, migrations_dir: Path) -> None:
    write_migration(migrations_dir, "1_orders.up.sql", ORDERS.replace("'${region}'", "NULL"))
    query(database_url, "CREATE TABLE tenants (slug text, active bool)")
    query(
        database_url, "INSERT INTO tenants VALUES ('t_one', true), ('t_two', true), ('t3', false)"
    )
    env = runner_env(
        database_url,
        migrations_dir,
        TARGETS_QUERY="SELECT slug AS name, slug AS schema FROM tenants WHERE active",
    )
    run = run_entrypoint("up", env=env)
    assert run.code == 0, run.stderr
    assert sorted(finished(run)) == ["t_one", "t_two"]
    assert exists(database_url, "t_one.orders")
    assert exists(database_url, "t_two.orders")
    assert not exists(database_url, "t3.orders")


def test_database_targets_from_a_query(
    database_url: str, server_url: str, migrations_dir: Path, two_databases: list[str]
) -> None:
    write_migration(migrations_dir, "1_a.up.sql", "CREATE TABLE a (id int);")
    listed = ", ".join(f"('{name}')" for name in two_databases)
    env = runner_env(
        database_url,
        migrations_dir,
        TARGETS_QUERY=f"SELECT 'db-' || d AS name, d AS database FROM (VALUES {listed}) v(d)",
    )
    run = run_entrypoint("up", env=env)
    assert run.code == 0, run.stderr
    for name in two_databases:
        assert versions(url_of(server_url, name), "schema_migrations") == [1]


@pytest.mark.parametrize(
    ("targets_query", "expected"),
    [
        ("SELEC 1", "syntax error"),
        ("SELECT 'x' AS schema", "name column"),
        ("INSERT INTO tenants VALUES ('x') RETURNING slug AS name", "read-only transaction"),
        ("SELECT 'x' AS name, 'x' AS schema, 1 AS tenant_id", "unknown field(s) tenant_id"),
        ("SELECT 'x' AS name, 'Bad-Name' AS schema", "not a plain identifier"),
        ("SELECT 'x' AS name", "exactly one of url, database, schema"),
    ],
)
def test_a_bad_targets_query_exits_78_naming_it(
    database_url: str, migrations_dir: Path, targets_query: str, expected: str
) -> None:
    write_migration(migrations_dir, "1_a.up.sql", "SELECT 1;")
    query(database_url, "CREATE TABLE tenants (slug text)")
    run = run_entrypoint(
        "up", env=runner_env(database_url, migrations_dir, TARGETS_QUERY=targets_query)
    )
    assert run.code == 78, run.stderr
    assert run.finished["error"].startswith("TARGETS_QUERY"), run.finished["error"]
    assert expected in run.finished["error"]
    assert query(database_url, "SELECT count(*) FROM tenants") == [(0,)]


# -- a bad targets file -----------------------------------------------------------------------

BAD_FILES: list[tuple[str, str]] = [
    ("{name: a, schema: a}", "expected a list of targets"),
    ("- [a, b]", "entry 1: expected a name and one of"),
    ("- {schema: a}", "entry 1: name: expected text"),
    ("- {name: 7, schema: a}", "entry 1: name: expected text"),
    ("- {name: a, schema: a, url: 'postgresql://h/d'}", "entry 1 (a): expected exactly one of"),
    ("- {name: a}", "entry 1 (a): expected exactly one of url, url_file, database, schema"),
    ("- {name: a, schema: a, tenant: 1}", "entry 1 (a): unknown field(s) tenant"),
    ("- {name: a, schema: Acme}", "entry 1 (a): schema: 'Acme' is not a plain identifier"),
    ("- {name: a, schema: 1abc}", "not a plain identifier"),
    ("- {name: a, schema: select}", "not a plain identifier"),
    ("- {name: a, schema: pg_x}", "not a plain identifier"),
    ("- {name: a, schema: a}\n- {name: a, schema: b}", "entry 2 (a): the name 'a' is also"),
    ("- {name: a, schema: s}\n- {name: b, schema: s}", "entry 2 (b): the schema 's' is also"),
    ("- {name: a, schema: a, migrations_table: 'x.y.z'}", "entry 1 (a): migrations_table:"),
    ("- {name: a, url_file: missing}", "entry 1 (a): url_file: cannot read"),
    ("- {name: a, url: 'mysql://h/d'}", "entry 1 (a): url: the URL scheme is 'mysql'"),
    ("- {name: a, schema: [x]}", "entry 1 (a): schema: expected text"),
    ("- {name: a, schema: a\n- b", "not valid YAML"),
]


@pytest.mark.unit
@pytest.mark.parametrize(("text", "expected"), BAD_FILES)
def test_a_bad_targets_file_names_the_file_and_entry(
    tmp_path: Path, text: str, expected: str
) -> None:
    path = tmp_path / "targets.yaml"
    path.write_text(text + "\n")
    settings = from_env({"DATABASE_URL": "postgresql://app@db/app", "TARGETS_FILE": str(path)})
    with pytest.raises(ConfigError) as refused:
        fleet.targets_from_file(path, settings)
    message = str(refused.value)
    assert message.startswith(f"TARGETS_FILE: {path}"), message
    assert expected in message, message


@pytest.mark.unit
def test_a_json_targets_file_and_the_settings_each_target_gets(tmp_path: Path) -> None:
    path = tmp_path / "targets.json"
    path.write_text(
        json.dumps(
            [
                {"name": "b", "schema": "tenant_b", "migrations_table": "audit.migrations"},
                {"name": "a", "schema": "tenant_a", "migrations_table": "migrations"},
                {"name": "c", "database": "shop"},
                {"name": "d", "url": "postgresql://u:s3cret@other:6543/x?sslmode=require"},
            ]
        )
    )
    env = {
        "DATABASE_URL": "postgresql://app@db/app",
        "TARGETS_FILE": str(path),
        "MIGRATION_PLACEHOLDERS": "owner=app_owner",
        "MIGRATIONS_TABLE": "ops.schema_migrations",
    }
    targets = fleet.targets_from_file(path, from_env(env))
    assert [(t.name, t.kind) for t in targets] == [
        ("a", "schema"),
        ("b", "schema"),
        ("c", "database"),
        ("d", "url"),
    ]
    a, b, c, d = (t.settings for t in targets)
    assert a.migrations_table == TableName("tenant_a", "migrations")
    assert b.migrations_table == TableName("audit", "migrations")
    assert a.placeholders == {"owner": "app_owner", "schema": "tenant_a"}
    assert c.database.params["dbname"] == "shop"
    assert c.migrations_table == TableName("ops", "schema_migrations")
    assert c.placeholders == {"owner": "app_owner"}
    assert d.database.params["host"] == "other"
    assert d.database.params.get("user") == "u"  # the URL as written, not DB_USER's
    assert all(t.settings.fleet is None for t in targets)


@pytest.mark.unit
@pytest.mark.parametrize(
    ("env", "variable"),
    [
        ({"TARGETS_FILE": "t.yaml", "TARGETS_QUERY": "SELECT 1"}, "TARGETS_QUERY"),
        ({"TARGETS_FILE": "t.yaml", "JOB_COMPLETION_INDEX": "0"}, "SHARDS"),
        ({"TARGETS_FILE": "t.yaml", "SHARDS": "2"}, "SHARDS"),
        ({"SHARDS": "2", "JOB_COMPLETION_INDEX": "0"}, "SHARDS"),
        ({"TARGETS_FILE": "t.yaml", "SHARDS": "2", "JOB_COMPLETION_INDEX": "2"}, "JOB_COMPLETION"),
        ({"TARGETS_FILE": "t.yaml", "SHARDS": "0", "JOB_COMPLETION_INDEX": "0"}, "SHARDS"),
        ({"FLEET_CONCURRENCY": "0"}, "FLEET_CONCURRENCY"),
        ({"FLEET_CONCURRENCY": "999"}, "FLEET_CONCURRENCY"),
        ({"FLEET_CANARY": "-1"}, "FLEET_CANARY"),
        ({"FLEET_MAX_FAILURES": "x"}, "FLEET_MAX_FAILURES"),
        ({"MIGRATION_PLACEHOLDERS": "schema=x"}, "MIGRATION_PLACEHOLDERS"),
        ({"MIGRATION_PLACEHOLDERS": "a=1,a=2"}, "MIGRATION_PLACEHOLDERS"),
        ({"MIGRATION_PLACEHOLDERS": "no value"}, "MIGRATION_PLACEHOLDERS"),
        ({"MIGRATION_PLACEHOLDERS": "bad-name=1"}, "MIGRATION_PLACEHOLDERS"),
    ],
)
def test_wrong_fleet_settings_name_the_variable(env: dict[str, str], variable: str) -> None:
    with pytest.raises(ConfigError) as refused:
        from_env({"DATABASE_URL": "postgresql://app@db/app", **env})
    assert refused.value.variable.startswith(variable)


@pytest.mark.unit
def test_fleet_settings_and_what_stays_as_it_was() -> None:
    base = {"DATABASE_URL": "postgresql://app@db/app"}
    alone = from_env({**base, "JOB_COMPLETION_INDEX": "3"})  # Kubernetes', ignored
    assert alone.fleet is None
    assert alone.placeholders is None  # files run as written
    settings = from_env(
        {**base, "TARGETS_QUERY": "SELECT 1", "SHARDS": "4", "JOB_COMPLETION_INDEX": "3"}
    )
    assert settings.fleet is not None
    assert (settings.fleet.concurrency, settings.fleet.canary, settings.fleet.max_failures) == (
        4,
        0,
        0,
    )
    assert settings.fleet.shard == (3, 4)
    assert settings.placeholders == {}
    urls_only = from_env({"TARGETS_FILE": "t.yaml"})  # url targets need no main database
    assert urls_only.connection is None
    declared = from_env({**base, "MIGRATION_PLACEHOLDERS": " owner = app , env=prod,"})
    assert declared.placeholders == {"owner": "app", "env": "prod"}


def test_down_on_a_fleet_is_refused_with_78(
    database_url: str, migrations_dir: Path, tmp_path: Path
) -> None:
    write_migration(migrations_dir, "1_a.up.sql", "SELECT 1;")
    targets = write_targets(tmp_path / "t.yaml", schemas(["a"]))
    env = runner_env(database_url, migrations_dir, TARGETS_FILE=str(targets))
    run = run_entrypoint("down", env=env)
    assert run.code == 78
    assert run.finished["error"].startswith("TARGETS_FILE: `down` works on one database")


# -- placeholders -----------------------------------------------------------------------------


def test_an_unknown_placeholder_is_refused_with_66_before_anything_runs(
    database_url: str, migrations_dir: Path, tmp_path: Path
) -> None:
    write_migration(migrations_dir, "1_orders.up.sql", ORDERS)
    write_migration(migrations_dir, "2_x.up.sql", "SELECT 1;\n\nSELECT '${tenant_id}';\n")
    targets = write_targets(tmp_path / "t.yaml", schemas(["acme", "globex"]))
    run = fleet_up(database_url, migrations_dir, targets, MIGRATION_PLACEHOLDERS="region=eu")
    assert run.code == 66, run.stderr
    error = run.finished["error"]
    assert error.startswith("2_x.up.sql: line 3: ${tenant_id} is not a placeholder"), error
    assert "${region}, ${schema}" in error
    assert not [e for e in run.events if e["event"].startswith(("lock.", "migration."))]
    assert not exists(database_url, "acme.schema_migrations")
    assert query(database_url, "SELECT count(*) FROM pg_namespace WHERE nspname = 'acme'") == [(0,)]


def test_schema_placeholder_with_a_database_target_is_refused_with_66(
    database_url: str, migrations_dir: Path, tmp_path: Path
) -> None:
    write_migration(migrations_dir, "1_orders.up.sql", "-- tenants\n" + ORDERS)
    targets = write_targets(
        tmp_path / "t.yaml",
        [{"name": "acme", "schema": "acme"}, {"name": "main", "database": "postgres"}],
    )
    run = fleet_up(database_url, migrations_dir, targets, MIGRATION_PLACEHOLDERS="region=eu")
    assert run.code == 66, run.stderr
    assert run.finished["error"].startswith(
        "1_orders.up.sql: line 2: ${schema} has a value for schema targets only, and main is a "
        "database target"
    )


def test_placeholders_without_a_fleet_and_files_as_written_without_them(
    database_url: str, migrations_dir: Path
) -> None:
    write_migration(migrations_dir, "1_a.up.sql", "CREATE TABLE ${prefix}_a (note text);")
    run = run_entrypoint(
        "up", env=runner_env(database_url, migrations_dir, MIGRATION_PLACEHOLDERS="prefix=app")
    )
    assert run.code == 0, run.stderr
    assert exists(database_url, "public.app_a")
    # No fleet and no MIGRATION_PLACEHOLDERS: a file is sent as written, ${...} and all.
    write_migration(migrations_dir, "2_b.up.sql", "INSERT INTO app_a VALUES ('${as is}');")
    run = run_entrypoint("up", env=runner_env(database_url, migrations_dir))
    assert run.code == 0, run.stderr
    assert query(database_url, "SELECT note FROM app_a") == [("${as is}",)]


def test_a_large_streamed_file_is_expanded_too(
    database_url: str, migrations_dir: Path, tmp_path: Path
) -> None:
    rows = "".join(
        f"INSERT INTO ${{schema}}.big VALUES ({n}, '${{schema}} row {n} {'x' * 60}');\n"
        for n in range(16_000)
    )
    body = "CREATE TABLE ${schema}.big (id int, note text);\n" + rows
    assert len(body) > 1 << 20  # above the in-memory limit: read a piece at a time
    write_migration(migrations_dir, "1_big.up.sql", body)
    targets = write_targets(tmp_path / "t.yaml", schemas(["t_a", "t_b"]))
    run = fleet_up(database_url, migrations_dir, targets)
    assert run.code == 0, run.stderr
    for tenant in ("t_a", "t_b"):
        assert query(
            database_url,
            f"SELECT count(*), count(*) FILTER (WHERE note LIKE '{tenant} row %') "
            f"FROM {tenant}.big",
        ) == [(16_000, 16_000)]


def _next_piece(pieces: Iterator[str], _size: int) -> str:
    return next(pieces, "")


@pytest.mark.unit
def test_expansion_whole_and_a_piece_at_a_time() -> None:
    values = {"schema": "acme", "x": ""}
    text = "CREATE TABLE ${schema}.t (a text DEFAULT '${x}${y}');\n${schema\n$$ ${} $$\n"
    expected = "CREATE TABLE acme.t (a text DEFAULT '${y}');\n${schema\n$$ ${} $$\n"
    assert placeholders.expand(text, values) == expected
    assert placeholders.expand(text, None) == text
    for size in (1, 2, 3, 7, 100):
        pieces = iter([text[i : i + size] for i in range(0, len(text), size)])
        read = placeholders.expanding(functools.partial(_next_piece, pieces), values)
        got = ""
        while chunk := read(size):
            got += chunk
        assert got == expected, size


@pytest.mark.unit
def test_check_names_the_file_and_line() -> None:
    raw = b"SELECT 1;\r\nSELECT '${schema}' || '${other}';\n"
    file = MigrationFile("1_a.up.sql", hashlib.sha256(raw).hexdigest(), raw)
    placeholders.check([file], {"schema", "other"})
    with pytest.raises(UnknownPlaceholder) as refused:
        placeholders.check([file], {"schema"})
    assert (refused.value.file, refused.value.line) == ("1_a.up.sql", 2)
    assert int(refused.value.exit_code) == 66
    unterminated = b"SELECT '${schema';"
    broken = MigrationFile("2_b.up.sql", "x", unterminated)
    with pytest.raises(UnknownPlaceholder, match="no closing"):
        placeholders.check([broken], {"schema"})
    expanded = placeholders.applied([file], {"schema": "s", "other": "o"})[0]
    assert expanded.text() == "SELECT 1;\r\nSELECT 's' || 'o';\n"
    assert expanded.checksum == file.checksum


# -- the pool: concurrency, canary, failure limit, exit codes ---------------------------------

MEASURED = (
    "-- fleet-marker\n"
    "INSERT INTO public.seen SELECT count(*) FROM pg_stat_activity "
    "WHERE state = 'active' AND query LIKE '%-- fleet-marker%' AND pid <> pg_backend_pid() "
    "AND application_name = 'migration-runner';\n"
    "SELECT pg_sleep(0.6);\n"
)


def test_concurrency_bounds_the_targets_running_at_once(
    database_url: str, migrations_dir: Path, tmp_path: Path
) -> None:
    query(database_url, "CREATE TABLE public.seen (others int)")
    write_migration(migrations_dir, "1_measure.up.sql", MEASURED)
    names = [f"t{n}" for n in range(8)]
    targets = write_targets(tmp_path / "t.yaml", schemas(names))
    run = fleet_up(database_url, migrations_dir, targets, FLEET_CONCURRENCY="3")
    assert run.code == 0, run.stderr
    seen = [row[0] for row in query(database_url, "SELECT others FROM public.seen")]
    assert len(seen) == 8
    # Each migration saw the others running with it: never more than 3 at once, and 3 at
    # some point.
    assert max(seen) + 1 == 3, seen


def fail_in(database_url: str, *tenants: str) -> None:
    """ORDERS will fail (65) in these schemas: the table is there already."""
    for tenant in tenants:
        query(database_url, f"CREATE SCHEMA {tenant}; CREATE TABLE {tenant}.orders (id int)")


def test_a_failing_canary_stops_the_fleet(
    database_url: str, migrations_dir: Path, tmp_path: Path
) -> None:
    write_migration(migrations_dir, "1_orders.up.sql", ORDERS)
    fail_in(database_url, "b")
    targets = write_targets(tmp_path / "t.yaml", schemas(["e", "d", "c", "b", "a"]))
    run = fleet_up(
        database_url,
        migrations_dir,
        targets,
        "--canary",
        "2",
        MIGRATION_PLACEHOLDERS="region=eu",
        TERMINATION_LOG=str(tmp_path / "termination"),
    )
    assert run.code == 65, run.stderr
    assert {n: e["outcome"] for n, e in finished(run).items()} == {
        "a": "succeeded",
        "b": "failed",
    }
    summary = run.event("fleet.finished")
    assert summary["outcomes"] == {"succeeded": 1, "failed": 1, "not_started": 3}
    assert summary["stopped_by"] == "canary"
    assert summary["failed_targets"] == ["b"]
    assert not exists(database_url, "c.schema_migrations")
    assert "1 failed, 3 not started of 5 target(s): b (stopped by canary)" in run.finished["error"]
    message = json.loads((tmp_path / "termination").read_text())
    assert message["exit_code"] == 65
    assert message["fleet"]["outcomes"] == summary["outcomes"]


def test_canaries_that_pass_let_the_rest_run(
    database_url: str, migrations_dir: Path, tmp_path: Path
) -> None:
    write_migration(migrations_dir, "1_orders.up.sql", ORDERS)
    targets = write_targets(tmp_path / "t.yaml", schemas(["a", "b", "c", "d"]))
    run = fleet_up(
        database_url, migrations_dir, targets, "--canary", "2", MIGRATION_PLACEHOLDERS="region=x"
    )
    assert run.code == 0, run.stderr
    assert run.event("fleet.finished")["outcomes"] == {"succeeded": 4}
    started = [e["target"] for e in run.events if e["event"] == "migration.started"]
    assert set(started[:2]) == {"a", "b"}  # the canaries ran first


def test_max_failures_stops_starting_targets(
    database_url: str, migrations_dir: Path, tmp_path: Path
) -> None:
    write_migration(migrations_dir, "1_orders.up.sql", ORDERS)
    fail_in(database_url, "b", "c", "d")
    targets = write_targets(tmp_path / "t.yaml", schemas(["a", "b", "c", "d", "e", "f"]))
    run = fleet_up(
        database_url,
        migrations_dir,
        targets,
        "--max-failures",
        "2",
        "--concurrency",
        "1",
        MIGRATION_PLACEHOLDERS="region=eu",
    )
    assert run.code == 65, run.stderr
    assert sorted(finished(run)) == ["a", "b", "c"]
    summary = run.event("fleet.finished")
    assert summary["outcomes"] == {"succeeded": 1, "failed": 2, "not_started": 3}
    assert summary["stopped_by"] == "max_failures"


def test_the_fleet_exits_with_its_most_severe_code(
    database_url: str, migrations_dir: Path, tmp_path: Path
) -> None:
    write_migration(migrations_dir, "1_orders.up.sql", ORDERS)
    fail_in(database_url, "a_sql")  # 65
    for tenant, status, checksum in (("b_edited", "applied", "0" * 64), ("c_half", "running", "")):
        query(
            database_url,
            f"CREATE SCHEMA {tenant}; CREATE TABLE {tenant}.schema_migrations (version bigint "
            "PRIMARY KEY, name text NOT NULL, checksum text NOT NULL, status text NOT NULL, "
            "applied_at timestamptz NOT NULL DEFAULT now(), execution_ms bigint NOT NULL "
            "DEFAULT 0, applied_by text NOT NULL DEFAULT current_user)",
        )
        query(
            database_url,
            f"INSERT INTO {tenant}.schema_migrations (version, name, checksum, status) "
            "VALUES (1, 'orders', %s, %s)",
            (checksum, status),
        )
    targets = write_targets(tmp_path / "t.yaml", schemas(["a_sql", "b_edited", "c_half", "d_ok"]))
    run = fleet_up(database_url, migrations_dir, targets, MIGRATION_PLACEHOLDERS="region=eu")
    # 67 (a database a person must look at) > 66 (an edited file) > 65 (a migration's SQL).
    assert run.code == 67, run.stderr
    codes = {name: e["exit_code"] for name, e in finished(run).items()}
    assert codes == {"a_sql": 65, "b_edited": 66, "c_half": 67, "d_ok": 0}
    summary = run.event("fleet.finished")
    assert summary["failed_targets"] == ["c_half", "b_edited", "a_sql"]
    assert summary["exit_codes"] == {"67": 1, "66": 1, "65": 1}
    # Each failure's own event, with the target's name.
    failed = [e for e in run.events if e["event"] == "migration.failed"]
    assert [e["target"] for e in failed] == ["a_sql"]


@pytest.mark.unit
def test_the_severity_order() -> None:
    assert set(SEVERITY) == set(ExitCode) - {ExitCode.OK}
    assert len(SEVERITY) == len(set(SEVERITY))
    retryable = [code.retryable for code in SEVERITY]
    assert retryable == sorted(retryable), "a code a person must act on comes first"
    assert most_severe([]) == ExitCode.OK
    assert most_severe([ExitCode.OK, ExitCode.OK]) == ExitCode.OK
    assert most_severe([ExitCode.TERMINATED, ExitCode.DB_UNREACHABLE]) == ExitCode.DB_UNREACHABLE
    assert most_severe([ExitCode.DB_UNREACHABLE, ExitCode.MIGRATION_FAILED]) == 65
    chain = [70, 64, 78, 77, 67, 66, 65, 1, 75, 69, 143, 130]
    assert [int(code) for code in SEVERITY] == chain
    for stronger, weaker in itertools.pairwise(chain):
        assert most_severe([ExitCode(weaker), ExitCode(stronger), ExitCode.OK]) == stronger


# -- re-runs ----------------------------------------------------------------------------------


def test_a_rerun_costs_one_query_per_schema_target_and_no_lock(
    database_url: str, migrations_dir: Path, tmp_path: Path
) -> None:
    write_migration(migrations_dir, "1_orders.up.sql", ORDERS)
    write_migration(migrations_dir, "2_items.up.sql", ITEMS)
    names = [f"tenant_{n:02}" for n in range(20)]
    targets = write_targets(tmp_path / "t.yaml", schemas(names))
    first = fleet_up(database_url, migrations_dir, targets, MIGRATION_PLACEHOLDERS="region=eu")
    assert first.code == 0, first.stderr
    again = fleet_up(
        database_url, migrations_dir, targets, MIGRATION_PLACEHOLDERS="region=eu", LOG_LEVEL="DEBUG"
    )
    assert again.code == 0, again.stderr
    events = again.events
    assert not [e for e in events if e["event"].startswith(("lock.", "migration."))]
    assert [e for e in events if e["event"] == "db.connected"] == [again.event("db.connected")]
    per_target = [e["target"] for e in events if e["event"] == "db.query" and "target" in e]
    assert sorted(per_target) == names  # one query each
    assert {e["outcome"] for e in finished(again).values()} == {"up_to_date"}
    assert again.event("fleet.finished")["outcomes"] == {"up_to_date": 20}
    # A new migration: every target runs again, through the lock.
    write_migration(migrations_dir, "3_more.up.sql", "ALTER TABLE ${schema}.items ADD x int;")
    third = fleet_up(database_url, migrations_dir, targets, MIGRATION_PLACEHOLDERS="region=eu")
    assert third.code == 0, third.stderr
    assert {tuple(e["applied"]) for e in finished(third).values()} == {(3,)}


# -- the termination message ------------------------------------------------------------------


def test_the_termination_message_stays_within_4_kib_with_many_failed_targets(
    database_url: str, migrations_dir: Path, tmp_path: Path
) -> None:
    write_migration(migrations_dir, "1_fails.up.sql", "SELECT 1/0;")
    names = [f"customer-with-a-long-descriptive-name-{n:03}-{'x' * 40}" for n in range(60)]
    targets = write_targets(
        tmp_path / "t.yaml", [{"name": name, "schema": f"s{n}"} for n, name in enumerate(names)]
    )
    termination = tmp_path / "termination"
    run = fleet_up(
        database_url,
        migrations_dir,
        targets,
        FLEET_CONCURRENCY="8",
        TERMINATION_LOG=str(termination),
    )
    assert run.code == 65, run.stderr
    text = termination.read_text()
    assert len(text.encode()) <= 4096
    message = json.loads(text)
    summary = message["fleet"]
    assert summary["outcomes"] == {"failed": 60}
    assert summary["exit_codes"] == {"65": 60}
    kept = summary["failed_targets"]
    assert kept
    assert kept == sorted(names)[: len(kept)]
    assert len(kept) + summary["failed_targets_omitted"] == 60
    assert len(run.event("fleet.finished")["failed_targets"]) == 60  # the log line has all


@pytest.mark.unit
def test_trimming_keeps_as_many_names_as_fit(tmp_path: Path) -> None:
    names = [f"tenant-{n:05}" for n in range(5000)]
    summary: dict[str, object] = {
        "outcome": "failed",
        "exit_code": 65,
        "error": "5000 failed of 5000 target(s): tenant-00000…",
        "fleet": {"targets": 5000, "outcomes": {"failed": 5000}, "failed_targets": names},
    }
    path = tmp_path / "termination"
    settings = from_env({"DATABASE_URL": "postgresql://app@db/app", "TERMINATION_LOG": str(path)})
    cli._write_termination_message(dict(summary), settings)  # as cli._finish passes it
    written = path.read_text().encode()
    assert len(written) <= 4096
    fleet_part = json.loads(written)["fleet"]
    kept = len(fleet_part["failed_targets"])
    assert kept + fleet_part["failed_targets_omitted"] == 5000
    assert len(written) > 4096 - 2 * len(json.dumps(names[0]))  # nothing left to spare
    assert summary["fleet"] == {  # what run.finished then logs keeps every name
        "targets": 5000,
        "outcomes": {"failed": 5000},
        "failed_targets": names,
    }


# -- Indexed Jobs -----------------------------------------------------------------------------


@pytest.mark.unit
def test_shards_cover_the_fleet_once_in_contiguous_runs() -> None:
    settings = from_env({"DATABASE_URL": "postgresql://app@db/app"})
    for count in range(0, 23):
        targets = [fleet.Target(f"t{n:02}", "schema", settings) for n in range(count)]
        for shards in range(1, 8):
            parts = [fleet.shard(targets, index, shards) for index in range(shards)]
            assert [t for part in parts for t in part] == targets
            sizes = [len(part) for part in parts]
            assert max(sizes) - min(sizes) <= 1


def test_indexed_job_pods_migrate_every_target_exactly_once(
    database_url: str, migrations_dir: Path, tmp_path: Path
) -> None:
    write_migration(migrations_dir, "1_orders.up.sql", ORDERS)  # fails if run twice
    write_migration(migrations_dir, "2_items.up.sql", ITEMS)
    names = [f"tenant_{n:02}" for n in range(10)]
    targets = write_targets(tmp_path / "t.yaml", schemas(list(reversed(names))))
    base = runner_env(
        database_url, migrations_dir, TARGETS_FILE=str(targets), MIGRATION_PLACEHOLDERS="region=x"
    )
    pods = [
        RunnerProcess({**base, "SHARDS": "3", "JOB_COMPLETION_INDEX": str(index)})
        for index in range(3)
    ]
    try:
        runs = [pod.finish(timeout=120) for pod in pods]
    finally:
        for pod in pods:
            pod.close()
    assert [run.code for run in runs] == [0, 0, 0], [run.stderr for run in runs]
    shards = [sorted(finished(run)) for run in runs]
    assert [name for part in shards for name in part] == names  # disjoint, contiguous, all
    assert [run.event("fleet.finished")["shard"] for run in runs] == ["0/3", "1/3", "2/3"]
    for name in names:
        assert versions(database_url, f"{name}.schema_migrations") == [1, 2]


# -- signals ----------------------------------------------------------------------------------


def _runner_sessions(url: str) -> int:
    rows = query(
        url, "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'migration-runner'"
    )
    return int(rows[0][0])


def test_sigterm_mid_fleet_rolls_back_the_running_targets_and_exits_143(
    database_url: str, migrations_dir: Path, tmp_path: Path
) -> None:
    write_migration(
        migrations_dir,
        "1_slow.up.sql",
        "CREATE TABLE ${schema}.slow (id int);\nSELECT pg_sleep(60);",
    )
    targets = write_targets(tmp_path / "t.yaml", schemas(["a", "b", "c", "d"]))
    termination = tmp_path / "termination"
    env = runner_env(
        database_url,
        migrations_dir,
        TARGETS_FILE=str(targets),
        FLEET_CONCURRENCY="2",
        TERMINATION_LOG=str(termination),
    )
    with RunnerProcess(env) as runner:
        poll_until(
            lambda: runner_statements(database_url, "pg_sleep(60)") == 2,
            20,
            "the runner's pg_sleep(60) never ran",
        )
        run, elapsed = runner.stop(signal.SIGTERM)
    assert run.code == 143, run.stderr
    assert elapsed < 5
    ends = finished(run)
    assert {name: e["exit_code"] for name, e in ends.items()} == {"a": 143, "b": 143}
    assert "rolled back" in ends["a"]["error"]
    summary = run.event("fleet.finished")
    assert summary["outcomes"] == {"interrupted": 2, "not_started": 2}
    assert summary["stopped_by"] == "signal 15"
    assert json.loads(termination.read_text())["fleet"]["outcomes"] == summary["outcomes"]
    for tenant in "abcd":
        assert not exists(database_url, f"{tenant}.slow")
    poll_until(lambda: _runner_sessions(database_url) == 0, 10, "runner sessions left")
    assert query(database_url, "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'") == [
        (0,)
    ]


def test_sigterm_reaches_a_target_waiting_for_its_lock(
    database_url: str, migrations_dir: Path, tmp_path: Path
) -> None:
    write_migration(migrations_dir, "1_a.up.sql", "CREATE TABLE ${schema}.a (id int);")
    targets = write_targets(tmp_path / "t.yaml", schemas(["held"]))
    key = lock_key(TableName("held", "schema_migrations"))
    with psycopg.connect(database_url, autocommit=True) as holder:
        holder.execute("SELECT pg_advisory_lock(%s)", (key,))
        env = runner_env(database_url, migrations_dir, TARGETS_FILE=str(targets))
        with RunnerProcess(env) as runner:
            runner.wait_for("lock.waiting", target="held")
            run, elapsed = runner.stop(signal.SIGTERM)
    assert run.code == 143, run.stderr
    assert elapsed < 3  # not MIGRATION_LOCK_TIMEOUT (30 s here)
    assert finished(run)["held"]["outcome"] == "interrupted"


# -- the read-only commands -------------------------------------------------------------------


def test_status_plan_validate_and_await_on_a_fleet(
    database_url: str, migrations_dir: Path, tmp_path: Path
) -> None:
    write_migration(migrations_dir, "1_orders.up.sql", ORDERS)
    targets = write_targets(tmp_path / "t.yaml", schemas(["a", "b"]))
    env = runner_env(
        database_url,
        migrations_dir,
        TARGETS_FILE=str(targets),
        MIGRATION_PLACEHOLDERS="region=eu",
        AWAIT_TIMEOUT="1",
    )
    plan = run_entrypoint("plan", "--json", env=env)
    assert plan.code == 0, plan.stderr
    document = json.loads(plan.stdout)
    assert [t["name"] for t in document["targets"]] == ["a", "b"]
    assert [p["version"] for p in document["targets"][0]["result"]["pending"]] == [1]
    not_yet = run_entrypoint("await", env=env)
    assert not_yet.code == 75, not_yet.stderr
    assert run_entrypoint("up", env=env).code == 0
    status = run_entrypoint("status", env=env)
    assert status.code == 0, status.stderr
    assert status.stdout.startswith("== a ==\n")
    assert "== b ==" in status.stdout
    assert run_entrypoint("validate", env=env).code == 0
    assert run_entrypoint("validate", "--offline", env=env).code == 0
    ready = run_entrypoint("await", env=env)
    assert ready.code == 0, ready.stderr
    assert {e["event"] for e in ready.events} >= {"await.ready", "target.finished"}
    status_json = run_entrypoint("status", "--json", env=env)
    states = [
        [m["state"] for m in t["result"]["migrations"]]
        for t in json.loads(status_json.stdout)["targets"]
    ]
    assert states == [["applied"], ["applied"]]


def test_a_target_that_cannot_connect_fails_alone(
    database_url: str, migrations_dir: Path, tmp_path: Path
) -> None:
    write_migration(migrations_dir, "1_a.up.sql", "CREATE TABLE a (id int);")
    missing = f"nope_{uuid.uuid4().hex[:8]}"
    targets = write_targets(
        tmp_path / "t.yaml",
        [{"name": "gone", "database": missing}, {"name": "here", "url": database_url}],
    )
    run = fleet_up(database_url, migrations_dir, targets)
    assert run.code == 78, run.stderr  # a database that does not exist: configuration
    codes = {name: e["exit_code"] for name, e in finished(run).items()}
    assert codes == {"gone": 78, "here": 0}
    assert exists(database_url, "public.a")


def test_the_seed_image_still_runs_as_one_target(database_url: str) -> None:
    """No fleet settings: the run of today, without fleet lines."""
    run = run_entrypoint("up", env=runner_env(database_url, None))
    assert run.code == 0, run.stderr
    assert "fleet" not in run.finished
    assert not [e for e in run.events if e["event"].startswith(("fleet.", "target."))]
    assert all("target" not in e or "@" in e["target"] for e in run.events)
