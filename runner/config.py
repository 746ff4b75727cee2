"""Settings: read once from the environment (and flags), validated, frozen, passed down.

`load_secret_files` is the only I/O here: it resolves the `_FILE` twins. `from_env` is pure.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import unquote

from psycopg import conninfo as libpq_conninfo

from runner.errors import ConfigError
from runner.logs import Redactor

APPLICATION_NAME = "migration-runner"
SSL_MODES = ("disable", "allow", "prefer", "require", "verify-ca", "verify-full")
LOG_FORMATS = ("json", "text")
PASSWORD_AUTH = "password"  # noqa: S105 (the name of a method, not a password)
AWS_RDS_IAM = "aws-rds-iam"
GCP_CLOUDSQL_IAM = "gcp-cloudsql-iam"
AUTH_METHODS = (PASSWORD_AUTH, AWS_RDS_IAM, GCP_CLOUDSQL_IAM)
_TLS_MODES = ("require", "verify-ca", "verify-full")
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
# Variables whose value is a secret and which may be given as a file instead (`NAME_FILE`).
SECRET_VARIABLES = ("DATABASE_URL", "MIGRATION_DATABASE_URL", "DB_PASSWORD", "DB_USER")
NO_DATABASE = "set DATABASE_URL (or DATABASE_URL_FILE) or DB_HOST"
_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,62}")
MAX_CONCURRENCY = 256  # targets at a time: each holds a connection or two
MAX_TARGETS = 1_000_000
_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off", "")


@dataclass(frozen=True)
class Variable:
    """One setting: its environment variable, its flag, its help text for --help, and its
    default as it would be written in the environment ("": none, or one from elsewhere that
    the help text names). from_env, --help and README.md's table all read the default here."""

    name: str
    flag: str
    help: str
    default: str = ""
    is_switch: bool = False

    @property
    def help_text(self) -> str:
        shown = f"; default {self.default}" if self.default and not self.is_switch else ""
        return f"{self.help}{shown} [{self.name}]"


VARIABLES: tuple[Variable, ...] = (
    Variable("DATABASE_URL", "--database-url", "libpq URL or key=value string"),
    Variable("DATABASE_URL_FILE", "--database-url-file", "file holding DATABASE_URL"),
    Variable(
        "MIGRATION_DATABASE_URL",
        "--migration-database-url",
        "the runner's own URL, used instead of DATABASE_URL (a direct one past a pooler)",
    ),
    Variable(
        "MIGRATION_DATABASE_URL_FILE",
        "--migration-database-url-file",
        "file holding MIGRATION_DATABASE_URL",
    ),
    Variable("DB_HOST", "--db-host", "server host (overrides the URL's)"),
    Variable("DB_PORT", "--db-port", "server port (libpq's default 5432)"),
    Variable("DB_NAME", "--db-name", "database name"),
    Variable("DB_USER", "--db-user", "role to connect as"),
    Variable("DB_USER_FILE", "--db-user-file", "file holding DB_USER"),
    # No --db-password: a password on a command line is visible to every process on the host.
    Variable("DB_PASSWORD_FILE", "--db-password-file", "file holding the password"),
    Variable(
        "DB_AUTH",
        "--db-auth",
        "how the password is made: " + ", ".join(AUTH_METHODS) + " (a token per attempt)",
        PASSWORD_AUTH,
    ),
    Variable(
        "DB_PASSWORD_COMMAND",
        "--db-password-command",
        "a command (argv, no shell) whose output is the password, run before every attempt",
    ),
    Variable("DB_SSL", "--db-ssl", "libpq sslmode: " + ", ".join(SSL_MODES)),
    Variable("DB_SSL_ROOT_CERT", "--db-ssl-root-cert", "CA certificate file for verify-ca/full"),
    Variable(
        "MIGRATIONS_DIR", "--migrations-dir", "directory of migration files", "./db/migrations"
    ),
    Variable(
        "MIGRATIONS_TABLE",
        "--migrations-table",
        "tracking table, may be schema.table",
        "schema_migrations",
    ),
    Variable("DB_WAIT_TIMEOUT", "--wait-timeout", "seconds to wait for the database", "60"),
    Variable("DB_CONNECT_TIMEOUT", "--connect-timeout", "seconds per connection attempt", "5"),
    Variable(
        "DB_TCP_TIMEOUT",
        "--tcp-timeout",
        "seconds until a silent network peer counts as dead: TCP keepalives (0: OS defaults)",
        "60",
    ),
    Variable("MIGRATION_LOCK_TIMEOUT", "--lock-timeout", "seconds to wait for the lock", "300"),
    Variable(
        "DDL_LOCK_TIMEOUT", "--ddl-lock-timeout", "lock_timeout of migrations, s (0 off)", "5"
    ),
    Variable("DDL_LOCK_RETRIES", "--ddl-lock-retries", "retries after a lock timeout", "5"),
    Variable("STATEMENT_TIMEOUT", "--statement-timeout", "statement_timeout, s (0: off)", "0"),
    Variable("AWAIT_TIMEOUT", "--await-timeout", "await: seconds to wait for the schema", "300"),
    Variable("LOG_FORMAT", "--log-format", "json, or text (the default on a terminal)"),
    Variable("LOG_LEVEL", "--log-level", "DEBUG, INFO, WARNING or ERROR", "INFO"),
    Variable(
        "TERMINATION_LOG",
        "--termination-log",
        "summary file, written by default only if it exists",
        "/dev/termination-log",
    ),
    Variable(
        "MIGRATION_LINT_DISABLE",
        "--lint-disable",
        "lint: rule ids to turn off, comma-separated (wins over pyproject.toml)",
    ),
    Variable("MIGRATION_LINT_WARNING", "--lint-warning", "lint: rule ids to report as warnings"),
    Variable("MIGRATION_LINT_ERROR", "--lint-error", "lint: rule ids to report as errors"),
    Variable(
        "VERIFY_DATABASE_URL",
        "--verify-database-url",
        "verify, drift: an empty database to use instead of creating a scratch one",
    ),
    Variable(
        "PROXY_QUIT_URL",
        "--proxy-quit-url",
        "POSTed to when the runner exits, to stop a proxy sidecar (cloud-sql-proxy's quitquitquit)",
    ),
    Variable(
        "ALLOW_OUT_OF_ORDER",
        "--allow-out-of-order",
        "apply versions lower than the highest applied one",
        "false",
        is_switch=True,
    ),
    Variable(
        "IGNORE_FUTURE_VERSIONS",
        "--ignore-future",
        "allow versions applied in the database but unknown to these files (a rolled-back app)",
        "false",
        is_switch=True,
    ),
    Variable(
        "ALLOW_EMPTY",
        "--allow-empty",
        "accept a MIGRATIONS_DIR with no migration files",
        "false",
        is_switch=True,
    ),
    Variable(
        "TARGETS_FILE",
        "--targets-file",
        "YAML or JSON list of targets (databases, schemas, URLs) to run the command on: a fleet",
    ),
    Variable(
        "TARGETS_QUERY",
        "--targets-query",
        "SQL run on the main database whose rows are the fleet's targets",
    ),
    Variable(
        "MIGRATION_PLACEHOLDERS",
        "--placeholders",
        "name=value pairs, comma-separated, put in for ${name} in migration files",
    ),
    Variable("FLEET_CONCURRENCY", "--concurrency", "fleet: targets run at a time", "4"),
    Variable(
        "FLEET_CANARY",
        "--canary",
        "fleet: run the first K targets by name first, and stop if one fails (0: off)",
        "0",
    ),
    Variable(
        "FLEET_MAX_FAILURES",
        "--max-failures",
        "fleet: start no more targets after F have failed (0: no limit)",
        "0",
    ),
    Variable("SHARDS", "--shards", "fleet in an Indexed Job: the number of shards (completions)"),
    Variable(
        "JOB_COMPLETION_INDEX",
        "--shard-index",
        "fleet: this pod's shard, 0 to SHARDS-1 (set by Kubernetes in an Indexed Job)",
    ),
)


_DEFAULTS = {variable.name: variable.default for variable in VARIABLES}
DEFAULT_MIGRATIONS_DIR = Path(_DEFAULTS["MIGRATIONS_DIR"])  # of the working directory
DEFAULT_TERMINATION_LOG = Path(_DEFAULTS["TERMINATION_LOG"])


def default(variable: str) -> str:
    """The variable's default as VARIABLES gives it ("": none)."""
    return _DEFAULTS[variable]


def _value(environ: Mapping[str, str], variable: str) -> str:
    """The variable's value, or its default from VARIABLES when unset or empty."""
    return environ.get(variable) or _DEFAULTS[variable]


@dataclass(frozen=True)
class TableName:
    """The tracking table, optionally schema-qualified."""

    schema: str | None
    name: str

    def __str__(self) -> str:
        return f"{self.schema}.{self.name}" if self.schema else self.name


@dataclass(frozen=True)
class ConnectionSettings:
    """What libpq needs to connect. The password never appears in repr() or describe()."""

    params: Mapping[str, str] = field(repr=False)
    connect_timeout: int
    tcp_timeout: int  # seconds until a silent peer counts as dead; 0: the OS's defaults
    auth: str = PASSWORD_AUTH  # or an IAM method: a token minted per attempt (credentials.py)
    password_command: tuple[str, ...] = ()
    region: str | None = None  # AWS_REGION, for aws-rds-iam

    @property
    def password(self) -> str | None:
        return self.params.get("password")

    def kwargs(self, connect_timeout: int | None = None) -> dict[str, Any]:
        """Keyword arguments for psycopg.connect()."""
        timeout = self.connect_timeout if connect_timeout is None else connect_timeout
        return {
            **self._keepalives(),
            **self.params,
            "connect_timeout": str(max(timeout, 1)),
            "application_name": APPLICATION_NAME,
            # Catalog text comes back as str whatever the server encoding (SQL_ASCII included).
            "client_encoding": "UTF8",
        }

    def _keepalives(self) -> dict[str, str]:
        """TCP keepalives, and a bound on unacknowledged data, so that a network path that
        freezes (a node lost, a NAT entry dropped) ends the connection in about tcp_timeout
        seconds instead of never. The URL's own settings win."""
        if not self.tcp_timeout:
            return {}
        idle = max(1, self.tcp_timeout // 2)
        interval = max(1, (self.tcp_timeout - idle) // 3)
        return {
            "keepalives": "1",
            "keepalives_idle": str(idle),
            "keepalives_interval": str(interval),
            "keepalives_count": "3",
            "tcp_user_timeout": str(self.tcp_timeout * 1000),
        }

    def describe(self) -> str:
        """user@host:port/dbname, safe to log."""
        params = self.params
        host = params.get("host") or params.get("hostaddr") or "(default host)"
        port = params.get("port") or "5432"
        user = params.get("user") or "(default user)"
        return f"{user}@{host}:{port}/{params.get('dbname') or '(default database)'}"


@dataclass(frozen=True)
class FleetSettings:
    """How a run over many targets (TARGETS_FILE or TARGETS_QUERY) goes."""

    targets_file: Path | None
    targets_query: str | None
    concurrency: int
    canary: int  # the first K targets by name run first; 0: none
    max_failures: int  # no target starts after this many failed; 0: no limit
    shard: tuple[int, int] | None  # (JOB_COMPLETION_INDEX, SHARDS) in an Indexed Job
    connect_timeout: int  # of a url target, which takes nothing else from DB_*
    tcp_timeout: int

    @property
    def source(self) -> str:
        """The variable that names the targets."""
        return "TARGETS_FILE" if self.targets_file else "TARGETS_QUERY"


@dataclass(frozen=True)
class Settings:
    connection: ConnectionSettings | None
    migrations_dir: Path
    migrations_table: TableName
    wait_timeout: float
    lock_timeout: float
    log_format: str
    log_level: str
    termination_log: Path
    termination_log_explicit: bool
    allow_out_of_order: bool
    allow_empty: bool
    ignore_future: bool
    ddl_lock_timeout: float
    ddl_lock_retries: int
    statement_timeout: float
    await_timeout: float
    proxy_quit_url: str | None
    verify_database_url: str | None
    lint_choices: Mapping[str, str]  # the MIGRATION_LINT_* variables given, checked by lint
    fleet: FleetSettings | None = None
    # Values of the migration files' placeholders; None: files run as written.
    placeholders: Mapping[str, str] | None = None

    @property
    def database(self) -> ConnectionSettings:
        """The connection settings of a command that needs the database: a ConfigError when
        none were given (from_env refuses that already unless asked not to)."""
        if self.connection is None:
            raise ConfigError("DATABASE_URL", NO_DATABASE)
        return self.connection

    @property
    def secrets(self) -> tuple[str, ...]:
        """Values that must never appear in output."""
        password = self.connection.password if self.connection else None
        return (password,) if password else ()


def load_secret_files(
    environ: Mapping[str, str], read_text: Callable[[str], str] | None = None
) -> dict[str, str]:
    """Resolve each `NAME_FILE` into `NAME`, as Docker and Kubernetes secrets are read.

    One trailing newline is stripped. Setting both `NAME` and `NAME_FILE` is an error.
    """
    read = read_text or _read_text
    resolved = dict(environ)
    for name in SECRET_VARIABLES:
        twin = f"{name}_FILE"
        path = resolved.pop(twin, None)
        if path is None:
            continue
        if resolved.get(name):
            raise ConfigError(twin, f"set either {name} or {twin}, not both")
        try:
            content = read(path)
        except OSError as error:
            raise ConfigError(twin, f"cannot read {path!r}: {error.strerror}") from None
        except UnicodeDecodeError:
            raise ConfigError(twin, f"{path!r} is not UTF-8 text") from None
        resolved[name] = content.removesuffix("\n").removesuffix("\r")
    return resolved


def _read_text(path: str) -> str:
    return Path(path).read_text(encoding="utf-8")


def from_env(
    environ: Mapping[str, str], *, require_database: bool = True, terminal: bool = False
) -> Settings:
    """Validate every setting; a wrong value names the variable and what was expected.
    `terminal`: stderr is a terminal, where the default log format is text, not JSON."""
    for name in SECRET_VARIABLES:
        if f"{name}_FILE" in environ:
            raise ConfigError(f"{name}_FILE", "must be resolved by load_secret_files() first")
    fleet = _fleet(environ)
    # A fleet of url targets needs no main database; a database or schema target says so.
    connection = _connection(environ, require_database and not environ.get("TARGETS_FILE"))
    log_format = _choice(
        environ, "LOG_FORMAT", LOG_FORMATS, fold=str.lower, default="text" if terminal else "json"
    )
    return Settings(
        connection=connection,
        migrations_dir=Path(_value(environ, "MIGRATIONS_DIR")),
        migrations_table=table_name(_value(environ, "MIGRATIONS_TABLE")),
        wait_timeout=_seconds(environ, "DB_WAIT_TIMEOUT"),
        lock_timeout=_seconds(environ, "MIGRATION_LOCK_TIMEOUT", allow_zero=True),
        log_format=log_format,
        log_level=_choice(environ, "LOG_LEVEL", LOG_LEVELS, fold=str.upper),
        termination_log=Path(_value(environ, "TERMINATION_LOG")),
        termination_log_explicit=bool(environ.get("TERMINATION_LOG")),
        allow_out_of_order=_switch(environ, "ALLOW_OUT_OF_ORDER"),
        allow_empty=_switch(environ, "ALLOW_EMPTY"),
        ignore_future=_switch(environ, "IGNORE_FUTURE_VERSIONS"),
        ddl_lock_timeout=_seconds(environ, "DDL_LOCK_TIMEOUT", allow_zero=True),
        ddl_lock_retries=_count(environ, "DDL_LOCK_RETRIES"),
        statement_timeout=_seconds(environ, "STATEMENT_TIMEOUT", allow_zero=True),
        await_timeout=_seconds(environ, "AWAIT_TIMEOUT", allow_zero=True),
        proxy_quit_url=_quit_url(environ),
        verify_database_url=environ.get("VERIFY_DATABASE_URL") or None,
        lint_choices={
            name: environ[name]
            for name in ("MIGRATION_LINT_DISABLE", "MIGRATION_LINT_WARNING", "MIGRATION_LINT_ERROR")
            if environ.get(name)
        },
        fleet=fleet,
        placeholders=_placeholders(environ, fleet),
    )


def _connection(environ: Mapping[str, str], required: bool) -> ConnectionSettings | None:
    # The runner's own URL wins: the application's may go through a transaction pooler.
    source = "MIGRATION_DATABASE_URL" if environ.get("MIGRATION_DATABASE_URL") else "DATABASE_URL"
    url = environ.get(source, "")
    params: dict[str, str] = {}
    if url:
        _check_url(source, url)
        try:
            parsed = libpq_conninfo.conninfo_to_dict(url)
        except Exception as error:
            reason = " ".join(_without_password(str(error), url).split())
            raise ConfigError(
                source,
                f"expected a postgresql:// URL or a libpq key=value string ({reason})",
            ) from None
        params = {key: str(value) for key, value in parsed.items() if value is not None}
    parts = {
        "host": "DB_HOST",
        "port": "DB_PORT",
        "dbname": "DB_NAME",
        "user": "DB_USER",
        "password": "DB_PASSWORD",
        "sslmode": "DB_SSL",
        "sslrootcert": "DB_SSL_ROOT_CERT",
    }
    for key, variable in parts.items():
        if environ.get(variable):
            params[key] = environ[variable]
    if not params.get("host") and not url:
        if not required:
            return None
        raise ConfigError("DATABASE_URL", NO_DATABASE)
    if "port" in params:
        _port("DB_PORT" if environ.get("DB_PORT") else source, params["port"])
    if "sslmode" in params and params["sslmode"] not in SSL_MODES:
        variable = "DB_SSL" if environ.get("DB_SSL") else source
        raise ConfigError(variable, f"expected one of {', '.join(SSL_MODES)}")
    auth = _choice(environ, "DB_AUTH", AUTH_METHODS, fold=str.lower)
    command = _password_command(environ, params, auth)
    region = _iam_checks(environ, params, auth)
    connect_timeout = _seconds(environ, "DB_CONNECT_TIMEOUT")
    tcp_timeout = _seconds(environ, "DB_TCP_TIMEOUT", allow_zero=True)
    return ConnectionSettings(
        params=params,
        connect_timeout=max(1, round(connect_timeout)),
        tcp_timeout=max(1, round(tcp_timeout)) if tcp_timeout else 0,
        auth=auth,
        password_command=command,
        region=region,
    )


def url_connection(
    url: str, *, connect_timeout: int, tcp_timeout: int, variable: str = "url"
) -> ConnectionSettings:
    """A URL of its own (a fleet target's, VERIFY_DATABASE_URL), used as written: the main
    connection's DB_* parts, DB_AUTH and DB_PASSWORD_COMMAND are not its. A ConfigError names
    `variable`."""
    _check_url(variable, url)
    try:
        parsed = libpq_conninfo.conninfo_to_dict(url)
    except Exception as error:
        reason = " ".join(_without_password(str(error), url).split())
        raise ConfigError(
            variable, f"expected a postgresql:// URL or a libpq key=value string ({reason})"
        ) from None
    params = {key: str(value) for key, value in parsed.items() if value is not None}
    if "port" in params:
        _port(variable, params["port"])
    if params.get("sslmode", "prefer") not in SSL_MODES:
        raise ConfigError(variable, f"sslmode: expected one of {', '.join(SSL_MODES)}")
    return ConnectionSettings(
        params=params, connect_timeout=connect_timeout, tcp_timeout=tcp_timeout
    )


def _fleet(environ: Mapping[str, str]) -> FleetSettings | None:
    """The fleet's settings, or None for a run on the one database of DATABASE_URL."""
    concurrency = _whole(environ, "FLEET_CONCURRENCY", 1, MAX_CONCURRENCY)
    canary = _whole(environ, "FLEET_CANARY", 0, MAX_TARGETS)
    max_failures = _whole(environ, "FLEET_MAX_FAILURES", 0, MAX_TARGETS)
    targets_file = environ.get("TARGETS_FILE", "").strip()
    targets_query = environ.get("TARGETS_QUERY", "").strip()
    if targets_file and targets_query:
        raise ConfigError("TARGETS_QUERY", "set TARGETS_FILE or TARGETS_QUERY, not both")
    shards = environ.get("SHARDS", "").strip()
    if not (targets_file or targets_query):
        if shards:
            raise ConfigError("SHARDS", "shards a fleet: set TARGETS_FILE or TARGETS_QUERY too")
        return None  # JOB_COMPLETION_INDEX alone is Kubernetes', not the user's: ignored
    shard = None
    index = environ.get("JOB_COMPLETION_INDEX", "").strip()
    if index or shards:
        if not shards:
            raise ConfigError(
                "SHARDS",
                "required when JOB_COMPLETION_INDEX is set (an Indexed Job): the Job's "
                "completions, the number of shards the fleet is cut into",
            )
        if not index:
            raise ConfigError(
                "SHARDS",
                "set, but JOB_COMPLETION_INDEX is not: run it as an Indexed Job, or give "
                "this run's shard with --shard-index",
            )
        count = _whole(environ, "SHARDS", 1, MAX_TARGETS)
        number = _whole(environ, "JOB_COMPLETION_INDEX", 0, MAX_TARGETS)
        if number >= count:
            raise ConfigError(
                "JOB_COMPLETION_INDEX",
                f"expected 0 to {count - 1} (SHARDS is {count}); got {number}",
            )
        shard = (number, count)
    return FleetSettings(
        targets_file=Path(targets_file) if targets_file else None,
        targets_query=targets_query or None,
        concurrency=concurrency,
        canary=canary,
        max_failures=max_failures,
        shard=shard,
        connect_timeout=max(1, round(_seconds(environ, "DB_CONNECT_TIMEOUT"))),
        tcp_timeout=round(_seconds(environ, "DB_TCP_TIMEOUT", allow_zero=True)),
    )


def _placeholders(environ: Mapping[str, str], fleet: FleetSettings | None) -> dict[str, str] | None:
    """MIGRATION_PLACEHOLDERS' name=value pairs. None (files run as written) when it is unset
    and there is no fleet, whose files may always say ${schema}."""
    raw = environ.get("MIGRATION_PLACEHOLDERS", "")
    values: dict[str, str] = {}
    for pair in raw.split(","):
        if not pair.strip():
            continue
        name, equals, value = (part.strip() for part in pair.partition("="))
        if not equals or not _IDENTIFIER.fullmatch(name):
            raise ConfigError(
                "MIGRATION_PLACEHOLDERS",
                "expected name=value pairs separated by commas, each name letters, digits and _ "
                f"(max 63); got {pair.strip()!r}",
            )
        if name == "schema":
            raise ConfigError(
                "MIGRATION_PLACEHOLDERS",
                "schema is a schema target's own name (${schema}); it cannot be declared",
            )
        if name in values:
            raise ConfigError("MIGRATION_PLACEHOLDERS", f"{name} is declared twice")
        if "\n" in value or "\r" in value:
            raise ConfigError("MIGRATION_PLACEHOLDERS", f"the value of {name} spans lines")
        values[name] = value
    if not raw.strip() and fleet is None:
        return None
    return values


def _password_command(
    environ: Mapping[str, str], params: Mapping[str, str], auth: str
) -> tuple[str, ...]:
    raw = environ.get("DB_PASSWORD_COMMAND", "")
    if not raw.strip():
        return ()
    try:
        argv = tuple(shlex.split(raw))
    except ValueError as error:
        raise ConfigError(
            "DB_PASSWORD_COMMAND", f"cannot split it into arguments: {error}"
        ) from None
    if auth != PASSWORD_AUTH:
        raise ConfigError("DB_PASSWORD_COMMAND", f"set it or DB_AUTH={auth}, not both")
    if params.get("password"):
        raise ConfigError(
            "DB_PASSWORD_COMMAND",
            "a password is set too (DB_PASSWORD or in the URL): keep one source of it",
        )
    return argv


def _iam_checks(environ: Mapping[str, str], params: Mapping[str, str], auth: str) -> str | None:
    """An IAM token replaces the password and, for RDS, is only accepted over TLS."""
    if auth == PASSWORD_AUTH:
        return None
    if params.get("password"):
        raise ConfigError(
            "DB_AUTH",
            f"{auth} makes the password: remove DB_PASSWORD and the URL's password",
        )
    if not params.get("user"):
        raise ConfigError("DB_AUTH", f"{auth} needs the database user (DB_USER or the URL's)")
    if auth != AWS_RDS_IAM:
        return None
    if params.get("sslmode") not in _TLS_MODES:
        raise ConfigError(
            "DB_SSL",
            f"aws-rds-iam sends its token only over TLS: set DB_SSL to {', '.join(_TLS_MODES)} "
            "(verify-full with the RDS CA bundle in DB_SSL_ROOT_CERT is best)",
        )
    if "," in params.get("host", ","):
        raise ConfigError("DB_AUTH", "aws-rds-iam needs exactly one DB_HOST: a token is per host")
    region = environ.get("AWS_REGION") or environ.get("AWS_DEFAULT_REGION")
    if not region:
        raise ConfigError("AWS_REGION", "aws-rds-iam needs the database's region in AWS_REGION")
    return region


def _quit_url(environ: Mapping[str, str]) -> str | None:
    raw = environ.get("PROXY_QUIT_URL", "").strip()
    if not raw:
        return None
    if not re.match(r"https?://[^/\s]+", raw):
        raise ConfigError("PROXY_QUIT_URL", f"expected an http:// or https:// URL, got {raw!r}")
    return raw


_SCHEME = re.compile(r"([A-Za-z][A-Za-z0-9+.\-]*)://")
_URL_PASSWORD = re.compile(r"://[^@/?]*?:([^@]*)@")
_KEYWORD_PASSWORD = re.compile(r"password\s*=\s*('(?:[^'\\]|\\.)*'|\S+)")


def _check_url(variable: str, url: str) -> None:
    """Refuse at once, echoing nothing of it, a URL that libpq would misread: a wrong scheme,
    or user information with an unencoded '@', ':' or '/', whose tail libpq takes for the
    host (and which would then be printed and retried until the deadline)."""
    scheme = _SCHEME.match(url)
    if scheme is None:
        return  # a key=value string
    if scheme.group(1).lower() not in ("postgresql", "postgres"):
        raise ConfigError(
            variable,
            f"the URL scheme is {scheme.group(1)!r}: expected postgresql:// or postgres://",
        )
    rest = url[scheme.end() :].split("?", 1)[0]
    if "@" not in rest:
        return
    userinfo = rest[: rest.index("@")]
    if rest.count("@") > 1 or "/" in rest[: rest.rindex("@")] or userinfo.count(":") > 1:
        raise ConfigError(
            variable,
            "the user name or password holds an unencoded '@', ':' or '/': percent-encode the "
            "password in the URL (python3 -c 'import sys, urllib.parse; "
            "print(urllib.parse.quote(sys.argv[1], safe=\"\"))' 'the password'), or give it "
            "as DB_PASSWORD_FILE",
        )


def _without_password(message: str, url: str) -> str:
    """libpq's message with the URL's password, if it quotes it, replaced."""
    found = _URL_PASSWORD.search(url) or _KEYWORD_PASSWORD.search(url)
    if found and found.group(1):
        secret = found.group(1).strip("'")
        return Redactor([secret, unquote(secret)])(message)
    return message


def _port(variable: str, value: str) -> int:
    for candidate in value.split(","):  # libpq allows one port per host in a list
        if not (candidate.isascii() and candidate.isdigit()) or not 1 <= int(candidate) <= 65535:
            raise ConfigError(variable, f"expected a port number 1-65535, got {value!r}")
    return int(value.split(",")[0])


def _seconds(environ: Mapping[str, str], variable: str, *, allow_zero: bool = False) -> float:
    raw = _value(environ, variable)
    try:
        value = float(raw.strip().removesuffix("s"))
    except ValueError:
        value = float("nan")
    lowest_ok = 0.0 if allow_zero else 1e-9
    if not (value >= lowest_ok and value < float("inf")):
        expected = "zero or more" if allow_zero else "more than zero"
        raise ConfigError(variable, f"expected a number of seconds, {expected}; got {raw!r}")
    return value


def _whole(environ: Mapping[str, str], variable: str, lowest: int, highest: int) -> int:
    raw = _value(environ, variable).strip()
    if not (raw.isascii() and raw.isdigit()) or not lowest <= int(raw) <= highest:
        raise ConfigError(
            variable, f"expected a whole number from {lowest} to {highest}; got {raw!r}"
        )
    return int(raw)


def _count(environ: Mapping[str, str], variable: str) -> int:
    raw = _value(environ, variable).strip()
    if not (raw.isascii() and raw.isdigit()) or int(raw) > 1000:
        raise ConfigError(variable, f"expected a whole number from 0 to 1000; got {raw!r}")
    return int(raw)


def _choice(
    environ: Mapping[str, str],
    variable: str,
    choices: tuple[str, ...],
    *,
    fold: Callable[[str], str],
    default: str = "",
) -> str:
    raw = environ.get(variable) or default or _DEFAULTS[variable]
    value = fold(raw.strip())
    if value not in choices:
        raise ConfigError(variable, f"expected one of {', '.join(choices)}; got {raw!r}")
    return value


def _switch(environ: Mapping[str, str], variable: str) -> bool:
    raw = environ.get(variable, "").strip().lower()
    if raw in _TRUE:
        return True
    if raw in _FALSE:
        return False
    expected = "/".join((*_TRUE, *_FALSE[:-1]))
    raise ConfigError(variable, f"expected {expected}; got {environ[variable]!r}")


def table_name(raw: str, variable: str = "MIGRATIONS_TABLE") -> TableName:
    parts = raw.split(".")
    if len(parts) > 2 or not all(_IDENTIFIER.fullmatch(part) for part in parts):
        raise ConfigError(
            variable,
            f"expected table or schema.table of letters, digits and _ (max 63 each); got {raw!r}",
        )
    if len(parts) == 2:
        return TableName(schema=parts[0], name=parts[1])
    return TableName(schema=None, name=parts[0])
