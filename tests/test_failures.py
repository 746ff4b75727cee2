"""Real failures an operator meets, through the real entrypoint against real servers: roles
without privileges, read-only standbys, and what the runner says about them."""

from __future__ import annotations

import shutil
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from runner.exit_codes import ExitCode
from tests.conftest import Run, query, run_entrypoint, runner_env, write_migration
from tests.pgcluster import SUPERUSER, TempCluster, free_port


def run(url: str, migrations: Path, *args: str, **extra: str) -> Run:
    return run_entrypoint(*(args or ("up",)), env=runner_env(url, migrations, **extra))


def assert_no_traceback(run: Run) -> None:
    assert "Traceback" not in run.stderr + run.stdout
    assert run.code != ExitCode.INTERNAL, run.stderr


# -- roles without privileges ----------------------------------------------------------------------


@pytest.fixture
def app_url(database_url: str, server_url: str) -> Iterator[str]:
    """The test database as a role that owns nothing in it (an application's role)."""
    role = f"app_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(server_url, autocommit=True) as admin:
        admin.execute(f"CREATE ROLE {role} LOGIN PASSWORD 'app-pw'".encode())
    params = conninfo_to_dict(database_url)
    yield make_conninfo("", **{**params, "user": role, "password": "app-pw"})
    with psycopg.connect(database_url, autocommit=True) as owner:
        owner.execute(f"DROP OWNED BY {role}".encode())
    with psycopg.connect(server_url, autocommit=True) as admin:
        admin.execute(f"DROP ROLE IF EXISTS {role}".encode())


@pytest.mark.fault("a role without CREATE on the schema or the database")
def test_a_role_that_cannot_create_the_tracking_table_exits_77_naming_the_privilege(
    app_url: str, migrations_dir: Path
) -> None:
    write_migration(migrations_dir, "1_a.up.sql", "CREATE TABLE a (id int);")
    denied = run(app_url, migrations_dir)
    assert denied.code == ExitCode.AUTH_FAILED, denied.stderr
    assert_no_traceback(denied)
    error = denied.finished["error"]
    assert "CREATE on schema public" in error
    assert "since PostgreSQL 15 only the database owner" in error
    in_schema = run(app_url, migrations_dir, MIGRATIONS_TABLE="ops.schema_migrations")
    assert in_schema.code == ExitCode.AUTH_FAILED, in_schema.stderr
    assert "CREATE on database" in in_schema.finished["error"]


@pytest.mark.fault("a role without SELECT on the tracking table (up, status, plan, await)")
def test_reading_the_tracking_table_without_select_exits_77(
    database_url: str, app_url: str, migrations_dir: Path
) -> None:
    write_migration(migrations_dir, "1_a.up.sql", "CREATE TABLE a (id int);")
    assert run(database_url, migrations_dir).code == 0
    for args in (("up",), ("status",), ("plan",), ("await",)):
        denied = run(app_url, migrations_dir, *args, AWAIT_TIMEOUT="2")
        assert denied.code == ExitCode.AUTH_FAILED, (args, denied.stderr)
        assert_no_traceback(denied)
        assert "SELECT" in denied.finished["error"]
        assert "schema_migrations" in denied.finished["error"]


def test_a_privilege_missing_in_a_migration_body_stays_65_and_names_it(
    database_url: str, app_url: str, migrations_dir: Path
) -> None:
    query(database_url, "CREATE SCHEMA ops")
    role = conninfo_to_dict(app_url)["user"]
    query(database_url, f"GRANT CREATE, USAGE ON SCHEMA ops TO {role}")
    query(database_url, "CREATE TABLE secret (id int)")
    write_migration(migrations_dir, "1_a.up.sql", "INSERT INTO public.secret VALUES (1);")
    failed = run(app_url, migrations_dir, MIGRATIONS_TABLE="ops.schema_migrations")
    assert failed.code == ExitCode.MIGRATION_FAILED, failed.stderr
    assert "42501" in failed.finished["error"]
    assert "permission denied for table secret" in failed.finished["error"]


# -- read-only servers ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def primary_and_standby() -> Iterator[tuple[TempCluster, TempCluster]]:
    """A primary and a hot standby streaming from it, both throwaway."""
    with TempCluster() as primary:
        primary.init().start()
        standby = TempCluster()
        try:
            standby.data.parent.mkdir(exist_ok=True)
            standby._run(
                [
                    str(standby.bindir / "pg_basebackup"),
                    "-D",
                    str(standby.data),
                    "-h",
                    "127.0.0.1",
                    "-p",
                    str(primary.port),
                    "-U",
                    SUPERUSER,
                    "-R",
                    "-X",
                    "stream",
                ]
            )
            subprocess.run(["chmod", "700", str(standby.data)], check=True)
            standby.start()
            yield primary, standby
        finally:
            standby.close()


@pytest.mark.cluster
@pytest.mark.fault("a hot standby instead of the primary")
def test_a_standby_is_waited_out_as_read_only_and_never_blamed_on_a_migration(
    primary_and_standby: tuple[TempCluster, TempCluster], migrations_dir: Path
) -> None:
    _primary, standby = primary_and_standby
    write_migration(migrations_dir, "1_a.up.sql", "CREATE TABLE a (id int);")
    waited = run(standby.url(), migrations_dir, DB_WAIT_TIMEOUT="2")
    assert waited.code == ExitCode.DB_UNREACHABLE, waited.stderr
    assert_no_traceback(waited)
    attempts = [e for e in waited.events if e["event"] == "db.wait.attempt"]
    assert attempts
    assert all("read-only standby" in e["error"] for e in attempts)
    assert "read-only standby" in waited.finished["error"]
    assert waited.finished["retryable"] is True


@pytest.mark.cluster
def test_a_multi_host_url_reaches_the_primary_and_says_which(
    primary_and_standby: tuple[TempCluster, TempCluster], migrations_dir: Path
) -> None:
    primary, standby = primary_and_standby
    write_migration(migrations_dir, "1_a.up.sql", "CREATE TABLE IF NOT EXISTS a (id int);")
    url = (
        f"postgresql://{SUPERUSER}@127.0.0.1:{standby.port},127.0.0.1:{primary.port}/postgres"
        "?target_session_attrs=read-write"
    )
    applied = run(url, migrations_dir)
    assert applied.code == 0, applied.stderr
    connected = applied.event("db.connected")
    assert (connected["host"], connected["port"]) == ("127.0.0.1", primary.port)
    # A reader does not need the primary: await and status work on the standby.
    primary.psql("SELECT pg_switch_wal()")
    status = run(standby.url(), migrations_dir, "await", AWAIT_TIMEOUT="20")
    assert status.code == 0, status.stderr


@pytest.mark.fault("`default_transaction_read_only = on`")
def test_a_database_that_is_read_only_by_default_is_waited_out(
    database_url: str, migrations_dir: Path
) -> None:
    name = conninfo_to_dict(database_url)["dbname"]
    query(database_url, f'ALTER DATABASE "{name}" SET default_transaction_read_only = on')
    write_migration(migrations_dir, "1_a.up.sql", "CREATE TABLE a (id int);")
    waited = run(database_url, migrations_dir, DB_WAIT_TIMEOUT="1")
    assert waited.code == ExitCode.DB_UNREACHABLE, waited.stderr
    assert "default_transaction_read_only is on" in waited.finished["error"]


def test_free_port_helper_is_usable() -> None:
    assert 1024 < free_port() < 65536


# -- what a failed migration says -----------------------------------------------------------------


def test_a_failed_migration_keeps_the_server_s_detail_hint_and_context(
    database_url: str, migrations_dir: Path, tmp_path: Path
) -> None:
    write_migration(
        migrations_dir,
        "1_t.up.sql",
        "CREATE TABLE t (id int PRIMARY KEY);\n"
        "INSERT INTO t VALUES (1);\nINSERT INTO t VALUES (1);",
    )
    termination = tmp_path / "termination-log"
    failed = run(database_url, migrations_dir, TERMINATION_LOG=str(termination))
    assert failed.code == ExitCode.MIGRATION_FAILED, failed.stderr
    error = failed.finished["error"]
    assert error.startswith("migration 1 failed at 1_t.up.sql line 3 column 1: 23505: duplicate")
    assert "; DETAIL: Key (id)=(1) already exists." in error
    event = failed.event("migration.failed")
    assert (event["line"], event["detail"]) == (3, "Key (id)=(1) already exists.")
    assert "DETAIL: Key (id)=(1) already exists." in termination.read_text()


def test_a_syntax_error_names_line_and_column_and_a_function_error_its_context(
    database_url: str, migrations_dir: Path
) -> None:
    write_migration(migrations_dir, "1_a.up.sql", "SELECT 1;\n\n  SELEC 2;")
    failed = run(database_url, migrations_dir)
    assert failed.code == ExitCode.MIGRATION_FAILED, failed.stderr
    assert "1_a.up.sql line 3 column 3: 42601" in failed.finished["error"]
    assert (failed.event("migration.failed")["column"]) == 3
    (migrations_dir / "1_a.up.sql").write_text(
        "DO $$ BEGIN RAISE EXCEPTION 'stop' USING HINT = 'fix the data'; END $$;"
    )
    raised = run(database_url, migrations_dir)
    assert raised.code == ExitCode.MIGRATION_FAILED, raised.stderr
    event = raised.event("migration.failed")
    assert event["hint"] == "fix the data"
    assert "PL/pgSQL function inline_code_block" in event["context"]
    assert "\n" not in raised.finished["error"]


# -- configuration mistakes ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "says", "hidden"),
    [
        ("postgresq://app:pw-1234@db/x", "the URL scheme is 'postgresq'", "pw-1234"),
        (
            "postgresql://app:pw-1234@db/x?sslmod=disable",
            'invalid URI query parameter: "sslmod"',
            "pw-1234",
        ),
        (
            "postgresql://app:s3cr@tail.x@db:5432/x",
            "percent-encode the password",
            "tail.x",
        ),
        ("postgresql://app:a/b-secret@db/x", "percent-encode the password", "b-secret"),
        ("postgresql://app:a:b-secret@db/x", "percent-encode the password", "b-secret"),
        ("postgresql://app:p@db/x?sslmod=disable", '"sslmod"', "app:p@"),
    ],
)
@pytest.mark.fault("a malformed `DATABASE_URL` (scheme, parameter, unencoded `@ : /`)")
def test_a_malformed_url_exits_78_at_once_saying_what_is_wrong_and_no_secret(
    migrations_dir: Path, url: str, says: str, hidden: str
) -> None:
    write_migration(migrations_dir, "1_a.up.sql", "SELECT 1;")
    for log_format in ("json", "text"):
        env = runner_env(None, migrations_dir, DATABASE_URL=url, LOG_FORMAT=log_format)
        refused = run_entrypoint("up", env=env)
        assert refused.code == ExitCode.CONFIG, refused.stderr
        assert refused.seconds < 5
        if log_format == "json":
            assert says in refused.finished["error"]
        else:
            assert says in refused.stderr
        assert hidden not in refused.stderr
        assert "db.wait.attempt" not in refused.stderr
        assert len(refused.stderr.splitlines()) <= 2


# -- TLS and pg_hba.conf: permanent, so not retried ---------------------------------------------


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def _issue(directory: Path, ca: str, name: str, subject: str, alt: str | None = None) -> None:
    _openssl("req", "-new", "-nodes", "-subj", f"/CN={subject}", "-keyout", f"{name}.key",
             "-out", f"{name}.csr", cwd=directory)  # fmt: skip
    extensions = directory / f"{name}.ext"
    extensions.write_text(f"subjectAltName=DNS:{alt}\n" if alt else "basicConstraints=CA:FALSE\n")
    _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", f"{ca}.crt", "-CAkey", f"{ca}.key",
             "-CAcreateserial", "-days", "2", "-out", f"{name}.crt", "-extfile", str(extensions),
             cwd=directory)  # fmt: skip
    (directory / f"{name}.key").chmod(0o600)


@pytest.fixture(scope="module")
def tls_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[TempCluster, Path]]:
    """A server with TLS (certificate for `localhost` from our own CA), a role that must show a
    client certificate, and one that pg_hba.conf rejects."""
    pki = tmp_path_factory.mktemp("pki")
    for ca in ("ca", "other_ca"):
        _openssl("req", "-new", "-x509", "-days", "2", "-nodes", "-subj", f"/CN={ca}",
                 "-keyout", f"{ca}.key", "-out", f"{ca}.crt", cwd=pki)  # fmt: skip
    _issue(pki, "ca", "server", "localhost", alt="localhost")
    with TempCluster() as cluster:
        cluster.init()
        for name in ("server.crt", "server.key", "ca.crt"):
            target = cluster.data / name
            target.write_bytes((pki / name).read_bytes())
            target.chmod(0o600)
            if cluster._as_user:
                shutil.chown(target, SUPERUSER, SUPERUSER)
        with (cluster.data / "postgresql.conf").open("a") as conf:
            conf.write("ssl = on\nssl_cert_file = 'server.crt'\nssl_key_file = 'server.key'\n")
            conf.write("ssl_ca_file = 'ca.crt'\n")
        (cluster.data / "pg_hba.conf").write_text(
            "local all all trust\n"
            "hostssl all certuser 127.0.0.1/32 cert\n"
            "host all rejected 127.0.0.1/32 reject\n"
            "host all all 127.0.0.1/32 trust\n"
            "host all all ::1/128 trust\n"
        )
        cluster.start()
        cluster.psql("CREATE ROLE certuser LOGIN; CREATE ROLE rejected LOGIN")
        yield cluster, pki


@pytest.mark.cluster
@pytest.mark.parametrize(
    ("host", "user", "tls", "code", "says"),
    [
        ("localhost", "postgres", "sslmode=verify-full&sslrootcert={pki}/ca.crt", 0, ""),
        (
            "localhost",
            "postgres",
            "sslmode=verify-full&sslrootcert={pki}/other_ca.crt",
            ExitCode.CONFIG,
            "certificate verify failed",
        ),
        (
            "127.0.0.1",
            "postgres",
            "sslmode=verify-full&sslrootcert={pki}/ca.crt",
            ExitCode.CONFIG,
            "does not match host name",
        ),
        ("127.0.0.1", "certuser", "sslmode=require", ExitCode.CONFIG, "client certificate"),
        ("127.0.0.1", "rejected", "sslmode=disable", ExitCode.AUTH_FAILED, "rejects connection"),
    ],
)
@pytest.mark.fault("TLS verification, client certificate, `pg_hba.conf` reject")
def test_tls_and_pg_hba_failures_end_at_once(
    tls_cluster: tuple[TempCluster, Path],
    migrations_dir: Path,
    host: str,
    user: str,
    tls: str,
    code: int,
    says: str,
) -> None:
    cluster, pki = tls_cluster
    write_migration(migrations_dir, "1_a.up.sql", "CREATE TABLE IF NOT EXISTS a (id int);")
    url = f"postgresql://{user}@{host}:{cluster.port}/postgres?{tls.format(pki=pki)}"
    outcome = run(url, migrations_dir, DB_WAIT_TIMEOUT="30")
    assert outcome.code == code, outcome.stderr
    assert_no_traceback(outcome)
    assert outcome.seconds < 10  # not retried until the deadline
    if code:
        assert says in outcome.finished["error"]
        assert "db.wait.attempt" not in outcome.stderr


def test_run_finished_is_the_last_line_even_when_the_termination_log_is_unwritable(
    database_url: str, migrations_dir: Path
) -> None:
    write_migration(migrations_dir, "1_a.up.sql", "CREATE TABLE a (id int);")
    finished = run(database_url, migrations_dir, TERMINATION_LOG="/proc/no-such/termination-log")
    assert finished.code == 0, finished.stderr
    assert finished.events[-1]["event"] == "run.finished"
    assert finished.events[-2]["event"] == "termination_log.unwritable"


# -- no-transaction migrations that heal themselves ----------------------------------------------


@pytest.mark.fault("a failed `CREATE INDEX CONCURRENTLY`, retried by the next run")
def test_a_failed_index_build_is_retried_by_the_next_run(
    database_url: str, migrations_dir: Path
) -> None:
    write_migration(
        migrations_dir,
        "1_a.up.sql",
        "CREATE TABLE a (id int);\nINSERT INTO a VALUES (1), (1);",
    )
    write_migration(
        migrations_dir,
        "2_idx.up.sql",
        "-- migrate:no-transaction\nDROP INDEX CONCURRENTLY IF EXISTS idx_old;\n"
        "CREATE UNIQUE INDEX CONCURRENTLY idx_a_id ON a (id);",
    )
    failed = run(database_url, migrations_dir)
    assert failed.code == ExitCode.MIGRATION_FAILED, failed.stderr
    assert "the next run drops that and retries the file by itself" in failed.finished["error"]
    assert query(database_url, "SELECT indisvalid FROM pg_index WHERE "
                 "indexrelid = 'idx_a_id'::regclass") == [(False,)]  # fmt: skip
    status = run(database_url, migrations_dir, "status", "--json")
    assert status.code == 0, status.stdout  # a failed row that heals itself is no problem
    query(database_url, "DELETE FROM a WHERE ctid = (SELECT max(ctid) FROM a)")
    healed = run(database_url, migrations_dir)
    assert healed.code == 0, healed.stderr
    assert healed.event("migration.retrying")["previous_status"] == "failed"
    assert healed.event("index.invalid_dropped")["index"] == "public.idx_a_id"
    assert healed.finished["applied"] == [2]
    assert query(database_url, "SELECT indisvalid FROM pg_index WHERE "
                 "indexrelid = 'idx_a_id'::regclass") == [(True,)]  # fmt: skip


def test_other_failed_no_transaction_migrations_still_wait_for_a_person(
    database_url: str, migrations_dir: Path
) -> None:
    write_migration(migrations_dir, "1_a.up.sql", "CREATE TABLE a (id int);")
    write_migration(
        migrations_dir,
        "2_idx.up.sql",
        "-- migrate:no-transaction\nCREATE INDEX CONCURRENTLY idx_a_id ON a (id);\n"
        "UPDATE a SET id = 1 / 0;",
    )
    failed = run(database_url, migrations_dir)
    assert failed.code == ExitCode.MIGRATION_FAILED, failed.stderr
    assert "`migration-runner repair --version 2`" in failed.finished["error"]
    assert run(database_url, migrations_dir).code == ExitCode.NEEDS_ATTENTION


def test_no_transaction_migrations_run_with_the_configured_statement_timeout(
    database_url: str, migrations_dir: Path
) -> None:
    name = conninfo_to_dict(database_url)["dbname"]
    query(database_url, f'ALTER DATABASE "{name}" SET statement_timeout = 100')
    write_migration(migrations_dir, "1_a.up.sql", "CREATE TABLE a (id int);")
    write_migration(
        migrations_dir,
        "2_slow.up.sql",
        "-- migrate:no-transaction\nSELECT pg_sleep(0.3);\nCREATE INDEX CONCURRENTLY i ON a (id);",
    )
    applied = run(database_url, migrations_dir)
    assert applied.code == 0, applied.stderr
    write_migration(
        migrations_dir, "3_slower.up.sql", "-- migrate:no-transaction\nSELECT pg_sleep(0.5);"
    )
    cut = run(database_url, migrations_dir, STATEMENT_TIMEOUT="0.2")
    assert cut.code == ExitCode.MIGRATION_FAILED, cut.stderr
    assert "STATEMENT_TIMEOUT is 0.2s" in cut.finished["error"]
