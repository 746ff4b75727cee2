"""How the tests find a real PostgreSQL, and how they run the real entrypoint.

The server: TEST_DATABASE_URL when set; otherwise a testcontainers container when a Docker
engine answers; otherwise a throwaway cluster from the local binaries. Each test that asks for
`database_url` gets a database of its own, dropped afterwards.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from tests.faultregistry import REGISTRY_KEY, FaultRegistry, record_marked_trial
from tests.pgcluster import TempCluster, find_bindir

ROOT = Path(__file__).resolve().parent.parent
ENTRYPOINT = ROOT / "entrypoint.py"
SEED_MIGRATIONS = ROOT / "db" / "migrations"


def _docker_answers() -> bool:
    """Whether a Docker engine answers its ping, asked on a socket that is always closed
    (the docker client leaks one when the engine is absent, which filterwarnings turns into
    an unrelated test's failure)."""
    host = os.environ.get("DOCKER_HOST", "unix:///var/run/docker.sock")
    if host.startswith("unix://"):
        path = host.removeprefix("unix://")
        if not os.path.exists(path):
            return False
        family: socket.AddressFamily = socket.AF_UNIX
        address: str | tuple[str, int] = path
    elif host.startswith("tcp://"):
        name, _, port = host.removeprefix("tcp://").rstrip("/").rpartition(":")
        if not port.isdigit():
            return False
        family, address = socket.AF_INET, (name, int(port))
    else:
        return False
    try:
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            probe.settimeout(3)
            probe.connect(address)
            probe.sendall(b"GET /_ping HTTP/1.0\r\nHost: docker\r\n\r\n")
            return b"200 OK" in probe.recv(1024)
    except OSError:
        return False


# The fault table: every test that injects a fault or a hostile input wraps each injection in
# `fault_registry.trial(name)`; a run counts, and it survived when every invariant held. The
# table goes to the terminal, and to the file named by FAULT_TABLE_FILE when that is set (a
# fixed path would be shared by two runs on one machine).


def pytest_configure(config: pytest.Config) -> None:
    config.stash[REGISTRY_KEY] = FaultRegistry()


def pytest_terminal_summary(
    terminalreporter: pytest.TerminalReporter, config: pytest.Config
) -> None:
    registry = config.stash.get(REGISTRY_KEY, None)
    if registry is None or not registry.rows:
        return
    table = registry.markdown()
    terminalreporter.section("fault table")
    terminalreporter.write(table)
    target = os.environ.get("FAULT_TABLE_FILE")
    if target:
        Path(target).write_text(table, encoding="utf-8")
        terminalreporter.write_line(f"(written to {target})")


@pytest.fixture(scope="session")
def fault_registry(pytestconfig: pytest.Config) -> FaultRegistry:
    return pytestconfig.stash[REGISTRY_KEY]


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Iterator[None]:
    yield from record_marked_trial(item)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Tests that start their own cluster need the server binaries; skip them without."""
    if find_bindir() is None:
        skip = pytest.mark.skip(reason="no initdb/pg_ctl on this machine")
        for item in items:
            if item.get_closest_marker("cluster"):
                item.add_marker(skip)


@pytest.fixture(scope="session")
def server_url() -> Iterator[str]:
    """A superuser URL of the server the tests use."""
    configured = os.environ.get("TEST_DATABASE_URL")
    if configured:
        try:
            psycopg.connect(configured, connect_timeout=5).close()
        except psycopg.Error as error:
            # One clear line, once, instead of every database test failing on its own.
            reason = " ".join(str(error).split())
            pytest.exit(f"TEST_DATABASE_URL does not answer: {reason}", returncode=2)
        yield configured
        return
    if _docker_answers():
        from testcontainers.community.postgres import PostgresContainer

        with PostgresContainer("postgres:16", driver=None) as container:
            yield container.get_connection_url()
        return
    if find_bindir() is None:
        pytest.exit(
            "no PostgreSQL for the tests: set TEST_DATABASE_URL, run a Docker engine, or "
            "install the server binaries (initdb, pg_ctl); `python -m pytest -m unit` needs none",
            returncode=2,
        )
    with TempCluster() as cluster:
        cluster.init().start()
        yield cluster.url()


@contextmanager
def fresh_database(server_url: str, *, template: str = "template1") -> Iterator[str]:
    """A new database on the test server, dropped with its sessions when the block ends."""
    name = f"test_{uuid.uuid4().hex[:16]}"
    with psycopg.connect(server_url, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}" TEMPLATE "{template}"'.encode())
    params = conninfo_to_dict(server_url)
    params["dbname"] = name
    try:
        yield make_conninfo("", **params)
    finally:
        with psycopg.connect(server_url, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'.encode())


@pytest.fixture
def database_url(server_url: str) -> Iterator[str]:
    """A fresh, empty database for this test only."""
    with fresh_database(server_url) as url:
        yield url


@pytest.fixture
def migrations_dir(tmp_path: Path) -> Path:
    directory = tmp_path / "migrations"
    directory.mkdir()
    return directory


def write_migration(directory: Path, filename: str, sql: str) -> Path:
    path = directory / filename
    path.write_text(sql, encoding="utf-8")
    return path


@dataclass
class Run:
    """A finished run of the entrypoint."""

    code: int
    stdout: str
    stderr: str
    seconds: float

    @property
    def events(self) -> list[dict[str, Any]]:
        """Every JSON log line; a line that is not JSON fails the test."""
        return [json.loads(line) for line in self.stderr.splitlines() if line.strip()]

    def event(self, name: str) -> dict[str, Any]:
        matches = [entry for entry in self.events if entry.get("event") == name]
        assert matches, f"no {name} event in:\n{self.stderr}"
        return matches[-1]

    @property
    def finished(self) -> dict[str, Any]:
        last = self.events[-1]
        assert last["event"] == "run.finished", self.stderr
        return last


def runner_env(database_url: str | None, migrations: Path | None, **extra: str) -> dict[str, str]:
    """A clean environment for the entrypoint: nothing inherited but PATH and the locale."""
    env = {key: os.environ[key] for key in ("PATH", "LANG", "LC_ALL") if key in os.environ}
    if database_url is not None:
        env["DATABASE_URL"] = database_url
    if migrations is not None:
        env["MIGRATIONS_DIR"] = str(migrations)
    env.setdefault("DB_WAIT_TIMEOUT", "10")
    env.setdefault("MIGRATION_LOCK_TIMEOUT", "30")
    env.update(extra)
    return env


def run_entrypoint(
    *args: str, env: Mapping[str, str], timeout: float = 120, cwd: Path | None = None
) -> Run:
    started = time.monotonic()
    result = subprocess.run(
        [sys.executable, str(ENTRYPOINT), *args],
        env=dict(env),
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=cwd or ROOT,
        check=False,
    )
    return no_traceback(
        Run(result.returncode, result.stdout, result.stderr, time.monotonic() - started)
    )


INTERNAL_ERROR = 70


def no_traceback(run: Run) -> Run:
    """Every run of the entrypoint in every test: a traceback only with exit 70, a real bug."""
    if run.code != INTERNAL_ERROR:
        assert "Traceback" not in run.stderr + run.stdout, run.stderr
    return run


class RunnerProcess:
    """`entrypoint.py up` in the background; its stderr read line by line as it comes."""

    def __init__(self, env: dict[str, str], *args: str) -> None:
        self.started = time.monotonic()
        self.process = subprocess.Popen(
            [sys.executable, str(ENTRYPOINT), *(args or ("up",))],
            env=env,
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.lines: list[str] = []
        self._changed = threading.Condition()
        self._eof = False
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        stream = self.process.stderr
        assert stream is not None
        try:
            for line in stream:
                with self._changed:
                    self.lines.append(line)
                    self._changed.notify_all()
        finally:
            with self._changed:
                self._eof = True
                self._changed.notify_all()

    def events(self) -> list[dict[str, Any]]:
        with self._changed:
            lines = list(self.lines)
        found = []
        for line in lines:
            try:
                found.append(json.loads(line))
            except ValueError:
                continue  # a line cut short by SIGKILL
        return found

    def wait_for(self, event: str, timeout: float = 30, **fields: Any) -> dict[str, Any]:
        """The first log line of `event` (with these field values); fail if none comes."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                for entry in self.events():
                    if entry.get("event") == event and all(
                        entry.get(k) == v for k, v in fields.items()
                    ):
                        return entry
                left = deadline - time.monotonic()
                if self._eof or left <= 0:
                    raise AssertionError(
                        f"no {event} {fields or ''} in the runner's log:\n" + "".join(self.lines)
                    )
                self._changed.wait(left)

    def send(self, signum: int) -> None:
        self.process.send_signal(signum)

    def stop(self, signum: int, timeout: float = 30) -> tuple[Run, float]:
        """Send `signum` and wait for the end: the run, and the seconds it took to stop."""
        sent = time.monotonic()
        self.send(signum)
        run = self.finish(timeout=timeout)
        return run, time.monotonic() - sent

    def finish(self, timeout: float = 60) -> Run:
        code = self.process.wait(timeout=timeout)
        self._reader.join(timeout=10)
        seconds = time.monotonic() - self.started
        return no_traceback(Run(code, "", "".join(self.lines), seconds))

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait()
        self._reader.join(timeout=10)
        if self.process.stderr is not None:
            self.process.stderr.close()

    def __enter__(self) -> RunnerProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def race_of_16(migrations: Path, env: Mapping[str, str]) -> list[Run]:
    """Five migrations that fail if run twice (CREATE TABLE without IF NOT EXISTS), then 16
    runners started together; every one must exit 0 and each migration run exactly once. The
    migrations hold the lock for about 1.5 s, longer than 16 interpreters take to start on two
    cores, so that some runners find it held."""
    from concurrent.futures import ThreadPoolExecutor

    for version in range(1, 6):
        write_migration(
            migrations,
            f"{version}_t{version}.up.sql",
            f"CREATE TABLE t{version} (id int); SELECT pg_sleep(0.3);",
        )
    with ThreadPoolExecutor(max_workers=16) as pool:
        runs = list(pool.map(lambda _: run_entrypoint("up", env=env), range(16)))
    assert [run.code for run in runs] == [0] * 16, [r.stderr for r in runs if r.code]
    applied = sorted(version for run in runs for version in run.finished["applied"])
    assert applied == [1, 2, 3, 4, 5]
    return runs


def poll_until(condition: Callable[[], bool], timeout: float, what: str) -> None:
    """Wait for a state instead of sleeping a fixed time; a server that is restarting counts
    as not there yet."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            if condition():
                return
        except psycopg.OperationalError:
            pass  # the server is restarting
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} (after {timeout:g}s)")
        time.sleep(0.05)


def query(url: str, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    with psycopg.connect(url, autocommit=True) as conn:
        cursor = conn.execute(sql.encode(), params or None)
        return cursor.fetchall() if cursor.description else []


def runner_statements(url: str, text: str) -> int:
    """How many of the runner's sessions are running a statement that contains `text`."""
    rows = query(
        url,
        "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'migration-runner' "
        "AND state = 'active' AND strpos(query, %s) > 0",
        (text,),
    )
    return int(rows[0][0])
