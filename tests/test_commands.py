"""status, plan, validate and wait through the real entrypoint."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from tests.conftest import ENTRYPOINT, query, run_entrypoint, runner_env, write_migration


def two_migrations(directory: Path) -> None:
    write_migration(directory, "1_a.up.sql", "CREATE TABLE a (id int);")
    write_migration(directory, "1_a.down.sql", "DROP TABLE a;")
    write_migration(directory, "2_b.up.sql", "CREATE TABLE b (id int);")


def test_plan_shows_what_up_would_run_and_changes_nothing(
    database_url: str, migrations_dir: Path
) -> None:
    two_migrations(migrations_dir)
    env = runner_env(database_url, migrations_dir)
    run = run_entrypoint("plan", "--json", env=env)
    assert run.code == 0, run.stderr
    pending = json.loads(run.stdout)["pending"]
    assert [(entry["version"], entry["file"]) for entry in pending] == [
        (1, "1_a.up.sql"),
        (2, "2_b.up.sql"),
    ]
    assert len(pending[0]["checksum"]) == 64
    assert query(database_url, "SELECT to_regclass('schema_migrations')") == [(None,)]
    text = run_entrypoint("plan", env=env)
    assert text.stdout.splitlines() == ["would apply 1_a.up.sql", "would apply 2_b.up.sql"]


def test_status_lists_applied_and_pending_with_checksums(
    database_url: str, migrations_dir: Path
) -> None:
    write_migration(migrations_dir, "1_a.up.sql", "CREATE TABLE a (id int);")
    env = runner_env(database_url, migrations_dir)
    assert run_entrypoint("up", env=env).code == 0
    write_migration(migrations_dir, "2_b.up.sql", "CREATE TABLE b (id int);")
    run = run_entrypoint("status", "--json", env=env)
    assert run.code == 0, run.stderr
    rows = json.loads(run.stdout)["migrations"]
    assert [(row["version"], row["state"]) for row in rows] == [(1, "applied"), (2, "pending")]
    assert rows[0]["checksum"] == rows[0]["recorded_checksum"]
    assert rows[0]["applied_at"] is not None
    assert run.finished["pending"] == 1
    text = run_entrypoint("status", env=env).stdout.splitlines()
    assert text[0].split() == ["VERSION", "STATE", "NAME", "APPLIED", "AT", "CHECKSUM"]
    assert text[1].split()[:3] == ["1", "applied", "a"]
    assert text[2].split()[:3] == ["2", "pending", "b"]


def test_status_shows_edited_and_missing_migrations(
    database_url: str, migrations_dir: Path
) -> None:
    two_migrations(migrations_dir)
    env = runner_env(database_url, migrations_dir)
    assert run_entrypoint("up", env=env).code == 0
    (migrations_dir / "1_a.up.sql").write_text("CREATE TABLE a (id bigint);")
    (migrations_dir / "2_b.up.sql").unlink()
    rows = json.loads(run_entrypoint("status", "--json", env=env).stdout)["migrations"]
    assert [(row["version"], row["state"]) for row in rows] == [(1, "edited"), (2, "missing")]


def test_validate_reports_every_problem_and_exits_66(
    database_url: str, migrations_dir: Path
) -> None:
    two_migrations(migrations_dir)
    env = runner_env(database_url, migrations_dir)
    assert run_entrypoint("up", env=env).code == 0
    (migrations_dir / "1_a.up.sql").write_text("edited")
    write_migration(migrations_dir, "3-bad-name.sql", "")
    run = run_entrypoint("validate", env=env)
    assert run.code == 66
    problems = [entry for entry in run.events if entry["event"] == "validate.problem"]
    assert [entry.get("file") for entry in problems] == ["3-bad-name.sql", "1_a.up.sql"]
    assert query(database_url, "SELECT count(*) FROM schema_migrations") == [(2,)]


def test_validate_passes_on_a_good_set(database_url: str, migrations_dir: Path) -> None:
    two_migrations(migrations_dir)
    run = run_entrypoint("validate", env=runner_env(database_url, migrations_dir))
    assert run.code == 0, run.stderr
    assert run.event("validate.ok")["files"] == 3
    assert query(database_url, "SELECT to_regclass('schema_migrations')") == [(None,)]


def test_validate_offline_needs_no_database(migrations_dir: Path) -> None:
    two_migrations(migrations_dir)
    assert run_entrypoint("validate", "--offline", env=runner_env(None, migrations_dir)).code == 0
    write_migration(migrations_dir, "2_dup.up.sql", "SELECT 1;")
    run = run_entrypoint("validate", "--offline", env=runner_env(None, migrations_dir))
    assert run.code == 66
    assert "same version 2" in run.finished["error"]


def test_wait_exits_0_once_the_database_answers(database_url: str) -> None:
    run = run_entrypoint("wait", env=runner_env(database_url, None))
    assert run.code == 0, run.stderr
    assert run.event("db.connected")["attempts"] == 1


def test_status_shows_the_table_then_the_problems_and_exits_66(
    database_url: str, migrations_dir: Path
) -> None:
    two_migrations(migrations_dir)
    write_migration(migrations_dir, "123456789012_wide.up.sql", "CREATE TABLE w (id int);")
    env = runner_env(database_url, migrations_dir)
    assert run_entrypoint("up", env=env).code == 0
    (migrations_dir / "1_a.up.sql").write_text("CREATE TABLE a (id bigint);")
    run = run_entrypoint("status", env=env)
    assert run.code == 66, run.stderr
    lines = run.stdout.splitlines()
    assert [line.split()[:2] for line in lines[1:4]] == [
        ["1", "edited"],
        ["2", "applied"],
        ["123456789012", "applied"],
    ]
    assert len({line.index("applied") for line in lines[2:4]}) == 1  # columns aligned
    assert lines[2].split()[3].endswith("+00:00")  # applied_at with its zone
    assert lines[4].startswith("problem: 1_a.up.sql was edited after it was applied")
    document = json.loads(run_entrypoint("status", "--json", env=env).stdout)
    assert document["problems"][0].startswith("1_a.up.sql was edited")


def test_a_closed_pipe_and_an_unknown_command_end_quietly(
    database_url: str, migrations_dir: Path
) -> None:
    two_migrations(migrations_dir)
    env = runner_env(database_url, migrations_dir)
    read_end, write_end = os.pipe()
    os.close(read_end)  # the reader is gone before the runner writes a byte: `| head -0`
    closed = subprocess.run(
        [sys.executable, str(ENTRYPOINT), "status"],
        env=env,
        stdout=write_end,
        stderr=subprocess.PIPE,
        text=True,
        check=False,
    )
    os.close(write_end)
    assert closed.returncode == 0, closed.stderr
    assert "Traceback" not in closed.stderr
    assert "BrokenPipeError" not in closed.stderr
    unknown = run_entrypoint("upp", env=env)
    assert unknown.code == 64
    assert unknown.finished["error"].startswith("unknown command 'upp'; the commands are up, ")
    assert unknown.finished["message"] == "migration-runner failed with exit code 64"


def test_new_writes_into_the_working_directory_s_db_migrations(tmp_path: Path) -> None:
    project = tmp_path / "project"
    (project / "db" / "migrations").mkdir(parents=True)
    env = runner_env(None, None)
    made = run_entrypoint("new", "add_orders", env=env, cwd=project)
    assert made.code == 0, made.stderr
    assert sorted(p.name for p in (project / "db" / "migrations").iterdir()) == [
        "000001_add_orders.down.sql",
        "000001_add_orders.up.sql",
    ]


def test_new_in_a_directory_it_cannot_write_exits_78_without_a_traceback(
    tmp_path: Path,
) -> None:
    env = runner_env(None, Path("/proc"))
    refused = run_entrypoint("new", "add_orders", env=env)
    assert refused.code == 78, refused.stderr
    assert refused.finished["error"].startswith("MIGRATIONS_DIR: cannot create /proc/000001_")
