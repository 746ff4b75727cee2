"""The PostgreSQL server the bench_* databases live on, and the migration sets it applies there,
written in each tool's format."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

from bench.procs import BenchError


class Server:
    """The PostgreSQL server: creates and drops the bench_* databases, checks their contents."""

    def __init__(self, base_url: str, *, checkpoint: bool) -> None:
        self.base_url = base_url.rstrip("/")
        self.created: list[str] = []
        self._counter = 0
        self.checkpoint_enabled = checkpoint
        try:
            self.admin = psycopg.connect(self.url("postgres"), autocommit=True)
        except psycopg.Error as error:
            raise BenchError(f"cannot connect to {self.url('postgres')}: {error}") from None

    def url(self, database: str) -> str:
        return f"{self.base_url}/{database}"

    def dbmate_url(self, database: str) -> str:
        url = self.url(database).replace("postgresql://", "postgres://", 1)
        return url + ("&" if "?" in url else "?") + "sslmode=disable"

    def create(self, label: str) -> str:
        self._counter += 1
        name = f"bench_{os.getpid()}_{self._counter}_{label}"
        self.created.append(name)
        self.admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        return name

    def drop(self, name: str) -> None:
        self.admin.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
        )
        if name in self.created:
            self.created.remove(name)

    def drop_all(self) -> list[str]:
        failed = []
        for name in list(self.created):
            try:
                self.drop(name)
            except psycopg.Error:
                failed.append(name)
        return failed

    def checkpoint(self) -> None:
        """Flush dirty buffers before a measurement, so that no run pays for an earlier one's
        checkpoint (needs superuser or pg_checkpoint; turned off when refused)."""
        if not self.checkpoint_enabled:
            return
        try:
            self.admin.execute("CHECKPOINT")
        except psycopg.errors.InsufficientPrivilege:
            self.checkpoint_enabled = False

    def query(self, database: str, query: sql.SQL | sql.Composed) -> list[tuple[Any, ...]]:
        with psycopg.connect(self.url(database), autocommit=True) as conn:
            return conn.execute(query).fetchall()

    def settings(self) -> dict[str, str]:
        found: dict[str, str] = {}
        for name in (
            "server_version",
            "fsync",
            "synchronous_commit",
            "wal_sync_method",
            "shared_buffers",
            "max_wal_size",
            "max_connections",
        ):
            found[name] = self.setting(name)
        return found

    def setting(self, name: str) -> str:
        row = self.admin.execute(
            sql.SQL("SELECT current_setting({})").format(sql.Literal(name))
        ).fetchone()
        return str(row[0]) if row else "?"

    def close(self) -> None:
        self.admin.close()


# ---------------------------------------------------------------------------------------------
# Migration sets


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: str


@dataclass(frozen=True)
class MigrationSet:
    """One set of migrations written in each tool's format."""

    migrations: list[Migration]
    runner_dir: Path  # {version}_{name}.up.sql
    dbmate_dir: Path  # {version}_{name}.sql with -- migrate:up / -- migrate:down
    psql_file: Path  # all of them, concatenated
    expected_rows: dict[str, int] = field(default_factory=dict)  # table: rows it must hold

    @property
    def count(self) -> int:
        return len(self.migrations)


def write_set(root: Path, label: str, migrations: list[Migration]) -> MigrationSet:
    runner_dir = root / label / "runner"
    dbmate_dir = root / label / "dbmate"
    runner_dir.mkdir(parents=True)
    dbmate_dir.mkdir(parents=True)
    for m in migrations:
        stem = f"{m.version:06d}_{m.name}"
        (runner_dir / f"{stem}.up.sql").write_text(m.sql, encoding="utf-8")
        (dbmate_dir / f"{stem}.sql").write_text(
            f"-- migrate:up\n{m.sql}\n-- migrate:down\n", encoding="utf-8"
        )
    psql_file = root / label / "all.sql"
    psql_file.write_text("".join(m.sql for m in migrations), encoding="utf-8")
    return MigrationSet(migrations, runner_dir, dbmate_dir, psql_file)


def small_tables(count: int, prefix: str = "t") -> list[Migration]:
    return [
        Migration(
            version,
            f"{prefix}_{version:06d}",
            f"CREATE TABLE {prefix}_{version:06d} (id int primary key, v text);\n",
        )
        for version in range(1, count + 1)
    ]


def race_tables(count: int, rows: int) -> list[Migration]:
    """Tables r_000001...; each filled with `rows` rows so that the migrations take real time."""
    migrations = []
    for version in range(1, count + 1):
        table = f"r_{version:06d}"
        text = f"CREATE TABLE {table} (id bigint primary key, v text);\n"
        if rows:
            text += (
                f"INSERT INTO {table} SELECT g, md5(g::text) FROM generate_series(1, {rows}) g;\n"
            )
        migrations.append(Migration(version, table, text))
    return migrations


def bulk_table(rows: int) -> list[Migration]:
    return [
        Migration(
            1,
            "bulk",
            "CREATE TABLE bulk (id bigint primary key, v text);\n"
            f"INSERT INTO bulk SELECT g, md5(g::text) FROM generate_series(1, {rows}) g;\n",
        )
    ]
