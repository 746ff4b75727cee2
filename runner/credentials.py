"""Passwords that are made, not stored: an AWS RDS IAM token, a Google Cloud SQL IAM access
token, or the output of DB_PASSWORD_COMMAND. Made again before every connection attempt (a
token lives 15 minutes; retries and long runs outlive it) and added to the secrets that no log
line or termination message may show."""

from __future__ import annotations

import subprocess
from functools import cache
from typing import Any

from runner import logs
from runner.config import AWS_RDS_IAM, GCP_CLOUDSQL_IAM, ConnectionSettings
from runner.errors import ConfigError

# Google's scope for Cloud SQL IAM database authentication.
CLOUDSQL_LOGIN_SCOPE = "https://www.googleapis.com/auth/sqlservice.login"


class CredentialsUnavailable(Exception):
    """The credential could not be made now, in a way that may pass (a metadata server or a
    secret store that did not answer): the connection attempt is retried."""


def password(settings: ConnectionSettings) -> str | None:
    """The password for the next connection attempt; None when it is the configured one."""
    if settings.password_command:
        made = _run_password_command(settings)
    elif settings.auth == AWS_RDS_IAM:
        made = _rds_token(settings)
    elif settings.auth == GCP_CLOUDSQL_IAM:
        made = _cloudsql_token()
    else:
        return None
    logs.add_secret(made)
    return made


def _run_password_command(settings: ConnectionSettings) -> str:
    argv = settings.password_command
    try:
        done = subprocess.run(  # argv from the operator's own setting, no shell
            argv,
            capture_output=True,
            text=True,
            timeout=max(5, settings.connect_timeout),
            check=False,
        )
    except FileNotFoundError:
        raise ConfigError("DB_PASSWORD_COMMAND", f"{argv[0]!r} was not found") from None
    except PermissionError:
        raise ConfigError("DB_PASSWORD_COMMAND", f"{argv[0]!r} is not executable") from None
    except subprocess.TimeoutExpired:
        raise CredentialsUnavailable(f"DB_PASSWORD_COMMAND {argv[0]!r} timed out") from None
    if done.returncode != 0:
        # Its stderr may quote what it was fetching; only the status is told.
        raise CredentialsUnavailable(
            f"DB_PASSWORD_COMMAND {argv[0]!r} exited with status {done.returncode}"
        )
    made = done.stdout.removesuffix("\n").removesuffix("\r")
    if not made:
        raise CredentialsUnavailable(f"DB_PASSWORD_COMMAND {argv[0]!r} printed no password")
    return made


def _rds_token(settings: ConnectionSettings) -> str:
    try:
        import botocore.exceptions
    except ImportError:
        raise ConfigError(
            "DB_AUTH",
            "aws-rds-iam needs botocore: pip install 'migration-runner[aws]' (the image has it)",
        ) from None
    params = settings.params
    try:
        return str(
            _rds_client(settings.region or "").generate_db_auth_token(
                DBHostname=params["host"],
                Port=int(params.get("port") or 5432),
                DBUsername=params["user"],
                Region=settings.region,
            )
        )
    except botocore.exceptions.NoCredentialsError:
        raise ConfigError(
            "DB_AUTH",
            "aws-rds-iam found no AWS credentials (environment, web identity, container or "
            "instance role)",
        ) from None
    except botocore.exceptions.BotoCoreError as error:
        raise CredentialsUnavailable(f"aws-rds-iam: {error}") from None


@cache
def _rds_client(region: str) -> Any:
    """One client per run: making it reads botocore's data files, minting a token does not."""
    import botocore.session

    return botocore.session.get_session().create_client("rds", region_name=region)


def _cloudsql_token() -> str:
    try:
        import google.auth
        import google.auth.exceptions
        import google.auth.transport.requests
    except ImportError:
        raise ConfigError(
            "DB_AUTH",
            "gcp-cloudsql-iam needs google-auth: pip install 'migration-runner[gcp]'",
        ) from None
    try:
        credentials, _ = google.auth.default(scopes=[CLOUDSQL_LOGIN_SCOPE])
        credentials.refresh(google.auth.transport.requests.Request())  # type: ignore[no-untyped-call]
    except google.auth.exceptions.DefaultCredentialsError as error:
        raise ConfigError(
            "DB_AUTH", f"gcp-cloudsql-iam found no Google credentials: {error}"
        ) from None
    except google.auth.exceptions.GoogleAuthError as error:
        raise CredentialsUnavailable(f"gcp-cloudsql-iam: {error}") from None
    return str(credentials.token)
