"""Passwords that are made per connection attempt: AWS RDS IAM tokens, Google Cloud SQL IAM
tokens, DB_PASSWORD_COMMAND; and PROXY_QUIT_URL, which stops a proxy sidecar at exit."""

from __future__ import annotations

import http.server
import io
import json
import logging
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import pytest

from runner import credentials, logs, wait
from runner.config import from_env
from runner.errors import ConfigError
from tests.conftest import run_entrypoint, runner_env, write_migration
from tests.pgcluster import SUPERUSER, TempCluster

PASSWORD = "Sup3r-user pw"
AWS = {
    "AWS_ACCESS_KEY_ID": "AKIDEXAMPLE",
    "AWS_SECRET_ACCESS_KEY": "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY",
    "AWS_REGION": "eu-west-1",
}
RDS_URL = "postgresql://app@db.example.internal:5432/shop?sslmode=verify-full"


@pytest.fixture(autouse=True)
def _fresh_clients() -> Iterator[None]:
    credentials._rds_client.cache_clear()
    yield
    credentials._rds_client.cache_clear()


# -- settings -----------------------------------------------------------------------------------


@pytest.mark.unit
@pytest.mark.parametrize(
    ("environ", "variable"),
    [
        ({"DATABASE_URL": "postgresql://app@db/shop", **AWS, "DB_AUTH": "aws-rds-iam"}, "DB_SSL"),
        ({"DATABASE_URL": RDS_URL, "DB_AUTH": "aws-rds-iam"}, "AWS_REGION"),
        ({"DATABASE_URL": RDS_URL, **AWS, "DB_AUTH": "aws-rds-iam", "DB_PASSWORD": "x"}, "DB_AUTH"),
        ({"DATABASE_URL": "postgresql://db/shop", "DB_AUTH": "gcp-cloudsql-iam"}, "DB_AUTH"),
        ({"DATABASE_URL": RDS_URL, "DB_AUTH": "kerberos"}, "DB_AUTH"),
        (
            {"DATABASE_URL": "postgresql://a:pw@db/s", "DB_PASSWORD_COMMAND": "vault read"},
            "DB_PASSWORD_COMMAND",
        ),
        (
            {"DATABASE_URL": "postgresql://a@db/s", "DB_PASSWORD_COMMAND": "echo 'open"},
            "DB_PASSWORD_COMMAND",
        ),
        (
            {"DATABASE_URL": "postgresql://a@db/s", "PROXY_QUIT_URL": "localhost:9091"},
            "PROXY_QUIT_URL",
        ),
    ],
)
def test_a_wrong_credential_setting_names_its_variable(
    environ: dict[str, str], variable: str
) -> None:
    with pytest.raises(ConfigError) as refused:
        from_env(environ)
    assert refused.value.variable == variable


@pytest.mark.unit
def test_an_rds_token_is_minted_per_attempt_for_host_port_user_and_region(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name, value in AWS.items():
        monkeypatch.setenv(name, value)
    settings = from_env({"DATABASE_URL": RDS_URL, "DB_AUTH": "AWS-RDS-IAM", **AWS}).database
    stream = io.StringIO()
    logs.configure(log_format="json", level="INFO", stream=stream)
    token = credentials.password(settings)
    assert token is not None
    assert token.startswith("db.example.internal:5432/?Action=connect&DBUser=app&")
    assert "X-Amz-Expires=900" in token
    assert "X-Amz-Signature=" in token
    assert "eu-west-1%2Frds-db%2Faws4_request" in token
    logs.event(logging.INFO, "test.token", f"connecting with {token}")
    assert token not in stream.getvalue()
    assert "***" in stream.getvalue()
    logging.getLogger(logs.LOGGER_NAME).handlers.clear()


@pytest.mark.unit
def test_without_aws_credentials_rds_iam_is_a_configuration_error(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    settings = from_env({"DATABASE_URL": RDS_URL, "DB_AUTH": "aws-rds-iam", **AWS}).database
    with pytest.raises(ConfigError, match="no AWS credentials"):
        credentials.password(settings)


# -- against a server that checks passwords -----------------------------------------------------


@pytest.fixture(scope="module")
def tls_password_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TempCluster]:
    """scram-sha-256 over TLS (a self-signed certificate: sslmode=require does not verify)."""
    with TempCluster(password=PASSWORD) as cluster:
        cluster.init()
        subprocess.run(
            ["openssl", "req", "-new", "-x509", "-days", "2", "-nodes", "-subj", "/CN=localhost",
             "-keyout", "server.key", "-out", "server.crt"],
            cwd=cluster.data, check=True, capture_output=True,
        )  # fmt: skip
        (cluster.data / "server.key").chmod(0o600)
        for name in ("server.key", "server.crt"):
            subprocess.run(
                ["chown", f"{SUPERUSER}:{SUPERUSER}", name], cwd=cluster.data, check=False
            )
        with (cluster.data / "postgresql.conf").open("a") as conf:
            conf.write("ssl = on\n")
        cluster.start()
        cluster.psql("CREATE ROLE app LOGIN PASSWORD 'not-the-token'")
        yield cluster


@pytest.mark.cluster
def test_each_connection_attempt_mints_a_new_rds_token_that_the_server_accepts(
    tls_password_cluster: TempCluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The first attempt finds the server down; the second mints again, and the server checks
    that token as the role's password (set from it here, as RDS would know it)."""
    cluster = tls_password_cluster
    for name, value in AWS.items():
        monkeypatch.setenv(name, value)
    url = f"postgresql://app@127.0.0.1:{cluster.port}/postgres?sslmode=require"
    settings = from_env({"DATABASE_URL": url, "DB_AUTH": "aws-rds-iam", **AWS}).database
    minted: list[str] = []
    real = credentials._rds_token

    def mint_and_tell_the_server(connection: Any) -> str:
        token = real(connection)
        minted.append(token)
        if len(minted) == 1:
            cluster.stop()  # this attempt is refused: a transient failure, retried
        else:
            cluster.start()
            escaped = token.replace("'", "''")
            cluster.psql(f"ALTER ROLE app PASSWORD '{escaped}'")
        return token

    monkeypatch.setattr(credentials, "_rds_token", mint_and_tell_the_server)
    try:
        with wait.wait_for_database(settings, deadline=30) as conn:
            row = conn.execute(
                "SELECT current_user, ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()"
            )
            assert row.fetchone() == ("app", True)
    finally:
        if not (cluster.data / "postmaster.pid").exists():
            cluster.start()
    assert len(minted) == 2
    assert all(token.startswith("127.0.0.1:") for token in minted)


@pytest.mark.cluster
def test_a_cloud_sql_iam_token_comes_from_googles_default_credentials_per_attempt(
    tls_password_cluster: TempCluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    import google.auth

    refreshed: list[str] = []

    class StubCredentials:
        token: str | None = None

        def refresh(self, request: object) -> None:
            refreshed.append("refresh")
            self.token = f"ya29.stub-token-{len(refreshed)}"

    scopes_asked: list[object] = []

    def default(scopes: object = None, **_: object) -> tuple[StubCredentials, str]:
        scopes_asked.append(scopes)
        return StubCredentials(), "project"

    monkeypatch.setattr(google.auth, "default", default)
    cluster = tls_password_cluster
    cluster.psql("ALTER ROLE app PASSWORD 'ya29.stub-token-1'")
    url = f"postgresql://app@127.0.0.1:{cluster.port}/postgres"
    settings = from_env({"DATABASE_URL": url, "DB_AUTH": "gcp-cloudsql-iam"}).database
    with wait.wait_for_database(settings, deadline=10) as conn:
        assert conn.execute("SELECT current_user").fetchone() == ("app",)
    assert scopes_asked == [[credentials.CLOUDSQL_LOGIN_SCOPE]]
    assert credentials.password(settings) == "ya29.stub-token-2"  # a fresh one each time


@pytest.mark.cluster
def test_the_password_command_runs_before_each_attempt_and_stays_secret(
    tls_password_cluster: TempCluster, migrations_dir: Path, tmp_path: Path
) -> None:
    cluster = tls_password_cluster
    secret = "from-the-vault-7f3a"
    cluster.psql(f"ALTER ROLE app PASSWORD '{secret}'")
    cluster.psql("ALTER ROLE app CREATEDB")
    cluster.psql("CREATE DATABASE vaulted OWNER app")
    write_migration(migrations_dir, "000001_a.up.sql", "CREATE TABLE a (id int);")
    script = tmp_path / "get-password"
    script.write_text(f"#!/bin/sh\necho run >> {tmp_path}/runs\nprintf '%s\\n' '{secret}'\n")
    script.chmod(0o755)
    env = runner_env(
        f"postgresql://app@127.0.0.1:{cluster.port}/vaulted",
        migrations_dir,
        DB_PASSWORD_COMMAND=f"{script} --path secret/db",
        LOG_LEVEL="DEBUG",
    )
    run = run_entrypoint("up", env=env)
    assert run.code == 0, run.stderr
    assert secret not in run.stderr + run.stdout
    assert (tmp_path / "runs").read_text().count("run") >= 1
    assert cluster.psql("SELECT count(*) FROM schema_migrations", dbname="vaulted").strip() == "1"

    failing = tmp_path / "vault-down"
    failing.write_text("#!/bin/sh\necho 'vault sealed: token s.abc123' >&2\nexit 3\n")
    failing.chmod(0o755)
    env.update(DB_PASSWORD_COMMAND=str(failing), DB_WAIT_TIMEOUT="1")
    run = run_entrypoint("up", env=env)
    assert run.code == 69, run.stderr
    assert "exited with status 3" in run.stderr
    assert "s.abc123" not in run.stderr  # its stderr is not repeated

    env.update(DB_PASSWORD_COMMAND="/nonexistent/get-password", DB_WAIT_TIMEOUT="30")
    run = run_entrypoint("up", env=env)
    assert run.code == 78, run.stderr
    assert run.seconds < 15
    assert "DB_PASSWORD_COMMAND" in run.stderr


# -- a proxy sidecar ----------------------------------------------------------------------------


class _QuitEndpoint(http.server.BaseHTTPRequestHandler):
    posts: ClassVar[list[str]] = []

    def do_POST(self) -> None:
        type(self).posts.append(self.path)
        self.send_response(200)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def quit_endpoint() -> Iterator[tuple[str, list[str]]]:
    _QuitEndpoint.posts = []
    server = http.server.HTTPServer(("127.0.0.1", 0), _QuitEndpoint)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}/quitquitquit", _QuitEndpoint.posts
    server.shutdown()
    server.server_close()


def test_the_proxy_sidecar_is_told_to_quit_whatever_the_outcome(
    database_url: str, migrations_dir: Path, quit_endpoint: tuple[str, list[str]]
) -> None:
    url, posts = quit_endpoint
    write_migration(migrations_dir, "000001_a.up.sql", "CREATE TABLE a (id int);")
    run = run_entrypoint("up", env=runner_env(database_url, migrations_dir, PROXY_QUIT_URL=url))
    assert run.code == 0, run.stderr
    assert posts == ["/quitquitquit"]
    events = [json.loads(line)["event"] for line in run.stderr.splitlines()]
    assert events[-2:] == ["proxy.quit", "run.finished"]

    bad = runner_env(database_url, migrations_dir, PROXY_QUIT_URL=url, DB_WAIT_TIMEOUT="soon")
    run = run_entrypoint("up", env=bad)
    assert run.code == 78
    assert posts == ["/quitquitquit"] * 2

    gone = runner_env(database_url, migrations_dir, PROXY_QUIT_URL="http://127.0.0.1:9/quit")
    run = run_entrypoint("up", env=gone)
    assert run.code == 0, run.stderr
    assert "proxy.quit_failed" in run.stderr
