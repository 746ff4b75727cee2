"""The quality gates through the real entrypoint: exit codes, stdout, the run's last line."""

from __future__ import annotations

import json
from pathlib import Path

from tests.conftest import ROOT, query, run_entrypoint, runner_env, write_migration


def _last_event(stderr: str) -> dict[str, object]:
    line: dict[str, object] = json.loads(stderr.strip().splitlines()[-1])
    return line


def test_verify_passes_on_the_seed_and_leaves_no_scratch_database(database_url: str) -> None:
    env = runner_env(database_url, ROOT / "db" / "migrations")
    run = run_entrypoint("verify", env=env)
    assert run.code == 0, run.stderr
    assert "every down file restores" in run.stdout
    assert _last_event(run.stderr)["exit_code"] == 0
    scratch = query(
        database_url, "SELECT count(*) FROM pg_database WHERE datname LIKE 'migration_runner_%'"
    )
    assert scratch == [(0,)]


def test_verify_names_the_down_file_that_does_not_restore_and_exits_1(
    database_url: str, migrations_dir: Path
) -> None:
    write_migration(migrations_dir, "000001_users.up.sql", "CREATE TABLE users (id int);")
    write_migration(migrations_dir, "000001_users.down.sql", "DROP TABLE users;")
    write_migration(migrations_dir, "000002_orders.up.sql", "CREATE TABLE orders (id int);")
    write_migration(migrations_dir, "000002_orders.down.sql", "SELECT 1;")
    run = run_entrypoint("verify", "--json", env=runner_env(database_url, migrations_dir))
    assert run.code == 1, run.stderr
    report = json.loads(run.stdout)
    assert report["mismatch"]["version"] == 2
    assert report["verified"] == [1]
    assert any("orders" in str(d) for d in report["mismatch"]["differences"])
    last = _last_event(run.stderr)
    assert last["exit_code"] == 1
    assert last["retryable"] is False
    assert query(database_url, "SELECT to_regclass('orders')") == [(None,)]  # live untouched


def test_drift_reports_a_hand_made_change_and_nothing_on_a_clean_database(
    database_url: str, migrations_dir: Path
) -> None:
    write_migration(migrations_dir, "000001_users.up.sql", "CREATE TABLE users (id int);")
    env = runner_env(database_url, migrations_dir)
    assert run_entrypoint("up", env=env).code == 0
    clean = run_entrypoint("drift", env=env)
    assert clean.code == 0, clean.stderr
    assert "no drift" in clean.stdout
    query(database_url, "ALTER TABLE users ADD COLUMN nickname text")
    drifted = run_entrypoint("drift", "--json", env=env)
    assert drifted.code == 1, drifted.stderr
    differences = json.loads(drifted.stdout)["differences"]
    assert [(d["kind"], d["what"]) for d in differences] == [("column", "added")]
    assert "nickname" in differences[0]["name"]


def test_lint_is_clean_on_the_seed_without_a_database() -> None:
    run = run_entrypoint("lint", env=runner_env(None, ROOT / "db" / "migrations"))
    assert run.code == 0, run.stderr
    assert "no findings in 2 file(s)" in run.stdout


def test_lint_fails_on_an_error_level_finding_and_annotates_it_for_github(
    migrations_dir: Path,
) -> None:
    write_migration(migrations_dir, "000001_users.up.sql", "CREATE TABLE users (id bigint);")
    write_migration(migrations_dir, "000001_users.down.sql", "DROP TABLE users;")
    write_migration(
        migrations_dir, "000002_email.up.sql", "\nCREATE INDEX idx_users_id ON users (id);"
    )
    write_migration(migrations_dir, "000002_email.down.sql", "DROP INDEX idx_users_id;")
    env = runner_env(None, migrations_dir)
    run = run_entrypoint("lint", "--format", "github", env=env)
    assert run.code == 1, run.stderr
    assert "::error file=" in run.stdout
    assert "000002_email.up.sql,line=2" in run.stdout
    assert "title=require-concurrent-index-creation" in run.stdout
    # Told as a warning instead: no error-level finding is left, the run succeeds.
    relaxed = run_entrypoint(
        "lint",
        env={
            **env,
            "MIGRATION_LINT_WARNING": "require-concurrent-index-creation,"
            "require-concurrent-index-deletion",
        },
    )
    assert relaxed.code == 0, relaxed.stdout
    assert "warning require-concurrent-index-creation" in relaxed.stdout
    unknown = run_entrypoint("lint", env={**env, "MIGRATION_LINT_DISABLE": "no-such-rule"})
    assert unknown.code == 78
    assert "MIGRATION_LINT_DISABLE" in unknown.stderr


def test_lint_pending_reports_only_what_up_would_run(
    database_url: str, migrations_dir: Path
) -> None:
    write_migration(migrations_dir, "000001_users.up.sql", "CREATE TABLE users (id int);")
    env = runner_env(database_url, migrations_dir)
    assert run_entrypoint("up", env=env).code == 0
    write_migration(migrations_dir, "000002_x.up.sql", "ALTER TABLE users ADD COLUMN age int;")
    run = run_entrypoint("lint", "--pending", "--format", "json", env=env)
    files = {finding["file"].rsplit("/", 1)[-1] for finding in json.loads(run.stdout)}
    assert files == {"000002_x.up.sql"}, run.stdout
    assert run.code == 0  # prefer-bigint-over-int and missing-down-file are warnings


def test_lint_refuses_an_invalid_set_with_66_and_writes_sarif(migrations_dir: Path) -> None:
    write_migration(migrations_dir, "000001_a.up.sql", "CREATE TABLE as_ (id bigint);")
    write_migration(migrations_dir, "000001_b.up.sql", "CREATE TABLE bs (id bigint);")
    env = runner_env(None, migrations_dir)
    assert run_entrypoint("lint", env=env).code == 66
    (migrations_dir / "000001_b.up.sql").unlink()
    run = run_entrypoint("lint", "--format", "sarif", env=env)
    sarif = json.loads(run.stdout)
    assert sarif["version"] == "2.1.0"
    assert sarif["runs"][0]["tool"]["driver"]["name"] == "migration-runner"
