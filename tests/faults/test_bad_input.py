"""Bad input, generated: file names, file contents, configuration values. Each gets its
documented exit code, a message naming the culprit, and leaves the database unchanged.

`runner.cli.main(argv, environ)` runs in-process for speed; its JSON log goes to a buffer.
One database per test, emptied between examples.
"""

from __future__ import annotations

import hashlib
import io
import json
import re
import tempfile
from collections.abc import Iterator
from contextlib import redirect_stderr
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from runner import cli
from runner.exit_codes import ExitCode
from tests.conftest import fresh_database, query
from tests.faults.harness import FaultRegistry

pytestmark = pytest.mark.faults

SETTINGS = settings(
    max_examples=30,
    deadline=None,
    database=None,
    derandomize=True,  # the same cases on every run and machine; found ones stay as @example
    suppress_health_check=[HealthCheck.too_slow],
)
BIGINT_MAX = 2**63 - 1
# The README's grammar: `{version}_{name}.up.sql`, version digits, name letters, digits, _, - or .
DOCUMENTED_NAME = re.compile(r"(?P<version>[0-9]+)_[A-Za-z0-9_\-.]+\.(?P<direction>up|down)\.sql")


@dataclass
class Outcome:
    code: int
    log: str

    @property
    def events(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.log.splitlines() if line.strip()]

    @property
    def finished(self) -> dict[str, Any]:
        last = self.events[-1]
        assert last["event"] == "run.finished", self.log
        return last


def run_main(argv: list[str], environ: dict[str, str]) -> Outcome:
    log = io.StringIO()
    with redirect_stderr(log):
        code = cli.main(argv, environ, stdout=io.StringIO())
    if code != ExitCode.INTERNAL:  # a traceback only for a real bug
        assert "Traceback" not in log.getvalue(), log.getvalue()
    return Outcome(code, log.getvalue())


@pytest.fixture(scope="module")
def scratch_url(server_url: str) -> Iterator[str]:
    """A database of this module's own on the test server."""
    with fresh_database(server_url) as url:
        yield url


def reset(url: str) -> None:
    query(url, "DROP SCHEMA IF EXISTS public CASCADE; CREATE SCHEMA public")


def snapshot(url: str) -> list[tuple[Any, ...]]:
    """Every relation, routine and schema outside the system catalogs."""
    return query(
        url,
        "SELECT 'rel', n.nspname, c.relname FROM pg_class c "
        "JOIN pg_namespace n ON n.oid = c.relnamespace "
        "WHERE n.nspname NOT IN ('pg_catalog', 'information_schema', 'pg_toast') "
        "UNION ALL SELECT 'fn', n.nspname, p.proname FROM pg_proc p "
        "JOIN pg_namespace n ON n.oid = p.pronamespace "
        "WHERE n.nspname NOT IN ('pg_catalog', 'information_schema') "
        "UNION ALL SELECT 'schema', nspname, '' FROM pg_namespace "
        "WHERE nspname NOT LIKE 'pg_%' AND nspname <> 'information_schema' ORDER BY 1, 2, 3",
    )


def base_env(url: str, migrations: Path, **extra: str) -> dict[str, str]:
    env = {"DATABASE_URL": url, "MIGRATIONS_DIR": str(migrations), "DB_WAIT_TIMEOUT": "2"}
    env.update(extra)
    return env


# -- file names ----------------------------------------------------------------------------------

_NAME_CHARS = st.characters(exclude_categories=["Cs"], exclude_characters="/\x00")
file_names = st.one_of(
    st.from_regex(r"[0-9]{1,22}_[A-Za-z0-9_\-.]{1,12}\.(up|down)\.sql", fullmatch=True),
    st.builds(
        str.__add__,
        st.text(_NAME_CHARS, min_size=1, max_size=24),
        st.sampled_from([".up.sql", ".down.sql", ".sql", ".up.SQL", ".UP.sql"]),
    ),
).filter(lambda name: len(name.encode()) < 200 and name not in (".", ".."))


def _documented(name: str) -> bool:
    """Outside the two cases pinned by test_documented_names_that_are_refused below."""
    match = DOCUMENTED_NAME.fullmatch(name)
    if match is None:
        return True
    rest = name[len(match["version"]) + 1 :]
    return int(match["version"]) <= BIGINT_MAX and rest[:1] not in ("_", "-")


def check_file_name(url: str, name: str) -> None:
    with tempfile.TemporaryDirectory() as d:
        reset(url)
        before = snapshot(url)
        migrations = Path(d)
        (migrations / name).write_text("CREATE TABLE named (id int);\n", encoding="utf-8")
        outcome = run_main(["up"], base_env(url, migrations))
    match = DOCUMENTED_NAME.fullmatch(name)
    if name.startswith(".") or not name.lower().endswith(".sql"):
        # Ignored, as documented; the directory then holds no migration file, which is
        # refused as a likely mis-mounted volume.
        assert outcome.code == ExitCode.INVALID_MIGRATIONS, outcome.log
        assert "no migration files in" in outcome.finished["error"]
        assert snapshot(url) == before
        return
    if match and match["direction"] == "up" and int(match["version"]) <= BIGINT_MAX:
        assert outcome.code == ExitCode.OK, outcome.log
        assert outcome.finished["applied"] == [int(match["version"])]
        assert query(url, "SELECT to_regclass('named') IS NOT NULL") == [(True,)]
        return
    # A bad name, a down file without its up file, or a version beyond bigint: refused
    # before anything runs.
    assert outcome.code == ExitCode.INVALID_MIGRATIONS, outcome.log
    assert name in outcome.finished["error"]
    assert snapshot(url) == before


@SETTINGS
@given(name=file_names.filter(_documented))
def test_file_names(scratch_url: str, fault_registry: FaultRegistry, name: str) -> None:
    with fault_registry.trial("generated migration file names"):
        check_file_name(scratch_url, name)


@pytest.mark.parametrize(
    "name",
    [
        "1_-leading-dash.up.sql",  # README: the name is letters, digits, _ or -
        "2__leading_underscore.up.sql",
        "99999999999999999999_too_big.up.sql",  # cannot be recorded in a bigint
    ],
)
def test_edge_case_file_names(scratch_url: str, fault_registry: FaultRegistry, name: str) -> None:
    with fault_registry.trial("edge-case migration file names"):
        check_file_name(scratch_url, name)


# -- file contents ---------------------------------------------------------------------------------


@st.composite
def valid_scripts(draw: st.DrawFn) -> tuple[bytes, set[str]]:
    """A script of comments, blank lines, tables, $$ functions and DO blocks (with semicolons
    inside), maybe empty, maybe only comments, with LF or CRLF and maybe a BOM."""
    kinds = draw(
        st.lists(st.sampled_from(["line", "block", "blank", "table", "function", "do"]), max_size=6)
    )
    newline = draw(st.sampled_from(["\n", "\r\n"]))
    parts: list[str] = []
    objects: set[str] = set()
    for i, kind in enumerate(kinds):
        if kind == "line":
            parts.append("-- a comment; with a semicolon and 'a quote")
        elif kind == "block":
            parts.append("/* block; /* nested; */ comment */")
        elif kind == "blank":
            parts.append("")
        elif kind == "table":
            parts.append(f"CREATE TABLE gen_t{i} (id int, note text DEFAULT 'a;b');")
            objects.add(f"gen_t{i}")
        elif kind == "function":
            parts.append(
                f"CREATE FUNCTION gen_f{i}() RETURNS int LANGUAGE plpgsql AS $body$"
                f"{newline}BEGIN{newline}  PERFORM 1; PERFORM 2;{newline}  RETURN 1;{newline}"
                f"END;{newline}$body$;"
            )
            objects.add(f"gen_f{i}")
        else:
            parts.append(f"DO $$ BEGIN EXECUTE 'CREATE TABLE gen_d{i} (id int)'; END $$;")
            objects.add(f"gen_d{i}")
    text = newline.join(parts) + draw(st.sampled_from(["", newline]))
    bom = draw(st.booleans())
    return ("\ufeff" if bom else "").encode() + text.encode(), objects


def objects_present(url: str, names: set[str]) -> set[str]:
    found = query(
        url,
        "SELECT relname FROM pg_class WHERE relnamespace = 'public'::regnamespace "
        "UNION SELECT proname FROM pg_proc WHERE pronamespace = 'public'::regnamespace",
    )
    return {row[0] for row in found} & names


@SETTINGS
@given(script=valid_scripts())
def test_valid_odd_contents_apply_as_written(
    scratch_url: str, fault_registry: FaultRegistry, script: tuple[bytes, set[str]]
) -> None:
    content, objects = script
    with fault_registry.trial("generated file contents (BOM, CRLF, $$, comments, empty)"):
        with tempfile.TemporaryDirectory() as d:
            reset(scratch_url)
            migrations = Path(d)
            (migrations / "1_generated.up.sql").write_bytes(content)
            outcome = run_main(["up"], base_env(scratch_url, migrations))
        assert outcome.code == ExitCode.OK, outcome.log
        assert outcome.finished["applied"] == [1]
        assert objects_present(scratch_url, objects) == objects
        assert query(scratch_url, "SELECT checksum, status FROM schema_migrations") == [
            (hashlib.sha256(content).hexdigest(), "applied")
        ]


@SETTINGS
@given(
    script=valid_scripts(),
    bad=st.sampled_from([b"\xff", b"\xc3\x28", b"\xed\xa0\x80", b"\xc0\xaf", b"\xe2\x82", b"\x00"]),
    where=st.floats(min_value=0, max_value=1),
)
def test_undecodable_contents_are_refused_naming_the_file_and_line(
    scratch_url: str,
    fault_registry: FaultRegistry,
    script: tuple[bytes, set[str]],
    bad: bytes,
    where: float,
) -> None:
    content, _ = script
    cut = round(len(content) * where)
    while 0 < cut < len(content) and (content[cut] & 0xC0) == 0x80:
        cut -= 1  # not inside a UTF-8 sequence of the valid text
    broken = content[:cut] + bad + content[cut:]
    line = broken.count(b"\n", 0, cut) + 1
    with fault_registry.trial("invalid UTF-8 or NUL in a file"), tempfile.TemporaryDirectory() as d:
        reset(scratch_url)
        before = snapshot(scratch_url)
        migrations = Path(d)
        (migrations / "1_fine.up.sql").write_text("CREATE TABLE fine (id int);", encoding="utf-8")
        (migrations / "2_broken.up.sql").write_bytes(broken)
        outcome = run_main(["up"], base_env(scratch_url, migrations))
        assert outcome.code == ExitCode.INVALID_MIGRATIONS, outcome.log
        assert f"2_broken.up.sql: line {line}:" in outcome.finished["error"]
        assert snapshot(scratch_url) == before


# -- configuration ---------------------------------------------------------------------------------

_TEXT = st.text(st.characters(exclude_categories=["Cs"], exclude_characters="\x00"))
_SECONDS_JUNK = st.one_of(
    st.floats(max_value=-0.001, allow_nan=False).map(str),
    st.sampled_from(["nan", "inf", "-inf", "1e999", "soon", "5 minutes", "1,5", "0x10", "-1s"]),
    st.text(st.sampled_from("abcxyz!? "), min_size=1, max_size=8),
)
_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,62}(\.[A-Za-z_][A-Za-z0-9_]{0,62})?")
WRONG_VALUES: dict[str, st.SearchStrategy[str]] = {
    "DB_WAIT_TIMEOUT": st.one_of(_SECONDS_JUNK, st.just("0")),
    "DB_CONNECT_TIMEOUT": st.one_of(_SECONDS_JUNK, st.just("0")),
    "MIGRATION_LOCK_TIMEOUT": _SECONDS_JUNK,
    "DB_PORT": st.one_of(
        st.integers(max_value=0).map(str),
        st.integers(min_value=65536).map(str),
        st.sampled_from(
            [
                "http",
                "54 32",
                "5432x",
                "-1",
                "+5432",
            ]
        ),
    ),
    "DB_SSL": _TEXT.filter(lambda s: s not in ("", "disable", "allow", "prefer", "require")).filter(
        lambda s: s not in ("verify-ca", "verify-full")
    ),
    "LOG_FORMAT": _TEXT.filter(lambda s: s != "" and s.strip().lower() not in ("json", "text")),
    "LOG_LEVEL": _TEXT.filter(
        lambda s: s != "" and s.strip().upper() not in ("DEBUG", "INFO", "WARNING", "ERROR")
    ),
    "MIGRATIONS_TABLE": _TEXT.filter(lambda s: s != "" and not _IDENTIFIER.fullmatch(s)),
    "ALLOW_OUT_OF_ORDER": _TEXT.filter(
        lambda s: s.strip().lower() not in ("1", "true", "yes", "on", "0", "false", "no", "off", "")
    ),
    "MIGRATIONS_DIR": _TEXT.map(lambda s: "/no/such/dir/" + s.replace("/", "_")),
    "DATABASE_URL": st.sampled_from(
        [
            "postgresql://[::1",
            "dbname='unterminated",
            "=x",
            "just words",
            "postgresql://u@h:notaport/d",
            "postgresql://u@h:99999/d",
            "postgresql://u@h/d?sslmode=sometimes",
            "postgresql://u@h/d?no_such_option=1",
        ]
    ),
    "DATABASE_URL_FILE": _TEXT.map(lambda s: "/no/such/file/" + s.replace("/", "_")),
    "DB_PASSWORD_FILE": _TEXT.map(lambda s: "/no/such/file/" + s.replace("/", "_")),
    "DB_USER_FILE": _TEXT.map(lambda s: "/no/such/file/" + s.replace("/", "_")),
}
FLAGS = {
    "DB_WAIT_TIMEOUT": "--wait-timeout",
    "DB_CONNECT_TIMEOUT": "--connect-timeout",
    "MIGRATION_LOCK_TIMEOUT": "--lock-timeout",
    "DB_PORT": "--db-port",
    "DB_SSL": "--db-ssl",
    "LOG_FORMAT": "--log-format",
    "LOG_LEVEL": "--log-level",
    "MIGRATIONS_TABLE": "--migrations-table",
    "MIGRATIONS_DIR": "--migrations-dir",
    "DATABASE_URL": "--database-url",
    "DATABASE_URL_FILE": "--database-url-file",
    "DB_PASSWORD_FILE": "--db-password-file",
    "DB_USER_FILE": "--db-user-file",
}


@st.composite
def wrong_settings(draw: st.DrawFn) -> tuple[str, str, bool]:
    variable = draw(st.sampled_from(sorted(WRONG_VALUES)))
    value = draw(WRONG_VALUES[variable])
    as_flag = variable in FLAGS and draw(st.booleans())
    return variable, value, as_flag


def check_wrong_setting(url: str, variable: str, value: str, as_flag: bool) -> None:
    with tempfile.TemporaryDirectory() as d:
        reset(url)
        before = snapshot(url)
        migrations = Path(d)
        (migrations / "1_a.up.sql").write_text("CREATE TABLE a (id int);", encoding="utf-8")
        env = base_env(url, migrations)
        argv = ["up"]
        if as_flag:
            argv.append(f"{FLAGS[variable]}={value}")
        else:
            env[variable] = value
        outcome = run_main(argv, env)
    assert outcome.code == ExitCode.CONFIG, outcome.log
    assert outcome.finished["error"].startswith(variable), outcome.finished["error"]
    assert not any(e["event"] == "db.wait.attempt" for e in outcome.events)
    assert snapshot(url) == before


@settings(SETTINGS, max_examples=80)
@given(wrong=wrong_settings())
@example(wrong=("DB_SSL", "--", True))  # found by this test: argparse read it as a list
def test_wrong_configuration_values_exit_78_naming_the_variable(
    scratch_url: str, fault_registry: FaultRegistry, wrong: tuple[str, str, bool]
) -> None:
    with fault_registry.trial("generated wrong configuration values"):
        check_wrong_setting(scratch_url, *wrong)


@pytest.mark.parametrize(
    "port",
    [
        "\u00b2",  # superscript two: str.isdigit() is true, int() fails
        "\u0665\u0664\u0663\u0662",  # Arabic-Indic 5432: int() reads it, libpq does not
        "\uff15\uff14\uff13\uff12",  # fullwidth 5432
    ],
)
def test_a_port_of_non_ascii_digits_exits_78(
    scratch_url: str, fault_registry: FaultRegistry, port: str
) -> None:
    with fault_registry.trial("DB_PORT of non-ASCII digits"):
        check_wrong_setting(scratch_url, "DB_PORT", port, as_flag=False)


@pytest.mark.parametrize("name", ["DATABASE_URL", "DB_PASSWORD", "DB_USER"])
def test_a_secret_and_its_file_twin_together_exit_78(
    scratch_url: str, fault_registry: FaultRegistry, tmp_path: Path, name: str
) -> None:
    with fault_registry.trial("a secret and its _FILE twin together"):
        reset(scratch_url)
        before = snapshot(scratch_url)
        secret = tmp_path / "secret"
        secret.write_text(scratch_url if name == "DATABASE_URL" else "postgres\n")
        env = base_env(scratch_url, tmp_path, **{name: "x", f"{name}_FILE": str(secret)})
        outcome = run_main(["up"], env)
        assert outcome.code == ExitCode.CONFIG, outcome.log
        assert outcome.finished["error"].startswith(f"{name}_FILE")
        assert snapshot(scratch_url) == before
