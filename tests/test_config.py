"""Settings from the environment: pure, validated, naming the variable at fault."""

from __future__ import annotations

from pathlib import Path

import pytest

from runner.config import (
    DEFAULT_MIGRATIONS_DIR,
    TableName,
    from_env,
    load_secret_files,
)
from runner.errors import ConfigError

pytestmark = pytest.mark.unit

BASE = {"DATABASE_URL": "postgresql://app@db.example:5433/shop"}


def test_defaults() -> None:
    settings = from_env(BASE)
    assert settings.migrations_dir == DEFAULT_MIGRATIONS_DIR
    assert settings.migrations_table == TableName(None, "schema_migrations")
    assert settings.wait_timeout == 60
    assert settings.lock_timeout == 300
    assert settings.log_format == "json"
    assert settings.log_level == "INFO"
    assert settings.allow_out_of_order is False
    assert (settings.ddl_lock_timeout, settings.ddl_lock_retries) == (5, 5)
    assert (settings.statement_timeout, settings.await_timeout) == (0, 300)
    assert settings.connection is not None
    assert settings.connection.describe() == "app@db.example:5433/shop"


def test_parts_build_the_connection_and_override_the_url() -> None:
    settings = from_env(
        {
            **BASE,
            "DB_HOST": "other",
            "DB_PASSWORD": "pw",
            "DB_SSL": "verify-full",
            "DB_SSL_ROOT_CERT": "/ca.pem",
            "DB_CONNECT_TIMEOUT": "7",
        }
    )
    assert settings.connection is not None
    kwargs = settings.connection.kwargs()
    assert kwargs["host"] == "other"
    assert kwargs["port"] == "5433"
    assert kwargs["password"] == "pw"
    assert kwargs["sslmode"] == "verify-full"
    assert kwargs["sslrootcert"] == "/ca.pem"
    assert kwargs["connect_timeout"] == "7"
    assert kwargs["application_name"] == "migration-runner"


def test_the_password_is_not_in_the_settings_repr() -> None:
    settings = from_env({"DATABASE_URL": "postgresql://u:hunter2@h/d"})
    assert "hunter2" not in repr(settings)
    assert settings.secrets == ("hunter2",)


@pytest.mark.parametrize(
    ("variable", "value", "expected"),
    [
        ("DB_PORT", "54x", "port number"),
        ("DB_PORT", "70000", "port number"),
        ("DB_SSL", "maybe", "expected one of disable"),
        ("DB_WAIT_TIMEOUT", "soon", "number of seconds"),
        ("DB_WAIT_TIMEOUT", "0", "more than zero"),
        ("DB_WAIT_TIMEOUT", "-5", "number of seconds"),
        ("DB_WAIT_TIMEOUT", "inf", "number of seconds"),
        ("DB_CONNECT_TIMEOUT", "nan", "number of seconds"),
        ("MIGRATION_LOCK_TIMEOUT", "-1", "zero or more"),
        ("LOG_FORMAT", "xml", "json, text"),
        ("LOG_LEVEL", "LOUD", "DEBUG, INFO"),
        ("MIGRATIONS_TABLE", "a.b.c", "schema.table"),
        ("MIGRATIONS_TABLE", "drop table x;", "schema.table"),
        ("ALLOW_OUT_OF_ORDER", "perhaps", "expected 1/true"),
        ("DDL_LOCK_TIMEOUT", "5 minutes", "number of seconds"),
        ("DDL_LOCK_RETRIES", "-1", "whole number"),
        ("DDL_LOCK_RETRIES", "many", "whole number"),
        ("STATEMENT_TIMEOUT", "-2", "zero or more"),
        ("AWAIT_TIMEOUT", "never", "number of seconds"),
    ],
)
def test_a_wrong_value_names_the_variable_and_what_was_expected(
    variable: str, value: str, expected: str
) -> None:
    with pytest.raises(ConfigError, match=expected) as caught:
        from_env({**BASE, variable: value})
    assert caught.value.variable == variable
    assert str(caught.value).startswith(f"{variable}: ")


def test_no_database_configured_is_an_error_unless_not_required() -> None:
    with pytest.raises(ConfigError, match="set DATABASE_URL"):
        from_env({})
    assert from_env({}, require_database=False).connection is None


def test_an_unparsable_url_is_refused_naming_the_problem_but_not_the_password() -> None:
    with pytest.raises(ConfigError) as caught:
        from_env({"DATABASE_URL": "host=h password=s3cret junk"})
    assert caught.value.variable == "DATABASE_URL"
    assert "s3cret" not in str(caught.value)
    assert 'missing "=" after "junk"' in str(caught.value)


def test_a_bad_sslmode_in_the_url_names_the_url() -> None:
    with pytest.raises(ConfigError) as caught:
        from_env({"DATABASE_URL": "postgresql://h/d?sslmode=sometimes"})
    assert caught.value.variable == "DATABASE_URL"


def test_schema_qualified_table() -> None:
    settings = from_env({**BASE, "MIGRATIONS_TABLE": "ops.applied_migrations"})
    assert settings.migrations_table == TableName("ops", "applied_migrations")


def test_file_twins_are_read_and_lose_one_trailing_newline(tmp_path: Path) -> None:
    secret = tmp_path / "password"
    secret.write_text("p@ss word\n\n")
    resolved = load_secret_files({"DB_PASSWORD_FILE": str(secret), "DB_HOST": "h"})
    assert resolved["DB_PASSWORD"] == "p@ss word\n"
    assert "DB_PASSWORD_FILE" not in resolved
    settings = from_env(resolved)
    assert settings.connection is not None
    assert settings.connection.password == "p@ss word\n"


def test_setting_both_twins_is_an_error(tmp_path: Path) -> None:
    secret = tmp_path / "url"
    secret.write_text("postgresql://h/d")
    with pytest.raises(ConfigError, match="not both") as caught:
        load_secret_files({"DATABASE_URL": "postgresql://h/d", "DATABASE_URL_FILE": str(secret)})
    assert caught.value.variable == "DATABASE_URL_FILE"


def test_an_unreadable_secret_file_names_the_variable(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read") as caught:
        load_secret_files({"DB_PASSWORD_FILE": str(tmp_path / "missing")})
    assert caught.value.variable == "DB_PASSWORD_FILE"


def test_from_env_is_pure_and_refuses_unresolved_twins() -> None:
    with pytest.raises(ConfigError, match="load_secret_files"):
        from_env({**BASE, "DB_PASSWORD_FILE": "/run/secrets/pw"})


def test_tcp_keepalives_are_set_unless_turned_off_or_given_in_the_url() -> None:
    kwargs = from_env({"DATABASE_URL": "postgresql://u@h/d"}).connection.kwargs()  # type: ignore[union-attr]
    assert (kwargs["keepalives_idle"], kwargs["keepalives_count"]) == ("30", "3")
    assert kwargs["tcp_user_timeout"] == "60000"
    off = from_env({"DATABASE_URL": "postgresql://u@h/d", "DB_TCP_TIMEOUT": "0"})
    assert "keepalives" not in off.connection.kwargs()  # type: ignore[union-attr]
    own = from_env({"DATABASE_URL": "postgresql://u@h/d?keepalives_idle=7"})
    assert own.connection.kwargs()["keepalives_idle"] == "7"  # type: ignore[union-attr]


def test_logs_are_text_on_a_terminal_and_json_elsewhere_unless_chosen() -> None:
    base = {"DATABASE_URL": "postgresql://u@h/d"}
    assert from_env(base, terminal=True).log_format == "text"
    assert from_env(base, terminal=False).log_format == "json"
    assert from_env({**base, "LOG_FORMAT": "json"}, terminal=True).log_format == "json"


def test_the_default_migrations_dir_is_the_working_directory_s() -> None:
    settings = from_env({}, require_database=False)
    assert str(settings.migrations_dir) == "db/migrations"
